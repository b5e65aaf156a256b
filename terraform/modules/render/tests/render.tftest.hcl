# terraform test: the render module alone (no provider).

variables {
  nodes = [
    { id = 1, address = "10.0.1.11" },
    { id = 2, address = "10.0.2.11" },
    { id = 3, address = "10.0.3.11" },
  ]
  worker_count    = 2
  load_generators = ["10.0.1.31", "10.0.2.31"]
  secret          = "test-secret-0123456789abcdef"
  token           = "test-token-Hb4nW8cJ2pXr6Ty1"
  locustfile      = "# locustfile"
}

run "one_document_per_host" {
  command = plan

  assert {
    condition     = toset(keys(output.hosts)) == toset(["node-1", "node-2", "node-3", "worker-1", "worker-2", "loadgen-1", "loadgen-2"])
    error_message = "expected 3 nodes, 2 workers and 2 load generators"
  }
  assert {
    condition     = alltrue([for h in output.hosts : startswith(h.user_data, "#cloud-config\n")])
    error_message = "every user_data is a cloud-config document"
  }
  assert {
    condition     = output.hosts["loadgen-1"].role == "loadgen-master" && output.hosts["loadgen-2"].role == "loadgen"
    error_message = "the first load generator runs the Locust master"
  }
}

run "toml_has_static_peers" {
  command = plan

  assert {
    condition     = length(regexall("\\[\\[nodes\\]\\]", output.cluster_toml)) == 3
    error_message = "one [[nodes]] table per node"
  }
  assert {
    condition     = strcontains(output.cluster_toml, "raft = \"10.0.2.11:7800\"") && strcontains(output.cluster_toml, "client = \"10.0.3.11:7700\"")
    error_message = "peers are addressed by their static addresses and the configured ports"
  }
}

run "units_are_hardened_and_secrets_0600" {
  command = plan

  assert {
    condition = alltrue([for f in local.hosts["node-1"].files : f.permissions == "0600" && f.owner == "raftq:raftq" && f.defer
    if strcontains(f.content, var.secret)])
    error_message = "a file holding the secret is 0600, owned by the service user, written after the user exists"
  }
  assert {
    condition = alltrue(flatten([for h in local.hosts : [for f in h.files : f.permissions == "0600"
    if strcontains(f.content, var.token)]]))
    error_message = "every file holding the token is 0600"
  }
  assert {
    condition = alltrue(flatten([for h in local.hosts : [for f in h.files : alltrue([
      for setting in ["User=raftq", "NoNewPrivileges=yes", "ProtectSystem=strict", "LimitNOFILE=65536"] : strcontains(f.content, setting)
    ]) if endswith(f.path, ".service")]]))
    error_message = "every unit runs as the dedicated user with NoNewPrivileges, ProtectSystem and LimitNOFILE"
  }
  assert {
    condition = alltrue(flatten([for h in local.hosts : [for f in h.files : length(regexall("(?m)^Restart=(on-failure|always|no)$", f.content)) == 1
    if endswith(f.path, ".service")]]))
    error_message = "every unit states its restart policy"
  }
  assert {
    condition     = !strcontains(output.hosts["worker-1"].user_data, "packages")
    error_message = "no packages key when there are no packages (cloud-init rejects an empty list)"
  }
}

run "ssm_mode_keeps_secrets_out_of_user_data" {
  command = plan

  variables {
    secret        = null
    token         = null
    secret_source = "ssm"
    ssm_parameters = {
      secret = "/raftq/test/secret"
      token  = "/raftq/test/token"
      region = "eu-west-1"
    }
  }

  assert {
    condition     = alltrue([for h in output.hosts : !strcontains(h.user_data, "test-secret") && !strcontains(h.user_data, "test-token")])
    error_message = "no secret value in any user_data"
  }
  assert {
    condition     = strcontains(output.hosts["node-2"].user_data, "/usr/local/sbin/raftq-fill-secrets /etc/raftq/cluster.toml")
    error_message = "nodes fill their TOML from SSM at boot"
  }
}

run "even_node_count_is_refused" {
  command = plan

  variables {
    nodes = [
      { id = 1, address = "10.0.1.11" },
      { id = 2, address = "10.0.2.11" },
    ]
  }
  expect_failures = [var.nodes]
}

run "duplicate_node_ids_are_refused" {
  command = plan

  variables {
    nodes = [
      { id = 1, address = "10.0.1.11" },
      { id = 1, address = "10.0.2.11" },
      { id = 3, address = "10.0.3.11" },
    ]
  }
  expect_failures = [var.nodes]
}

run "weak_secret_is_refused" {
  command = plan

  variables {
    secret = "short"
  }
  expect_failures = [var.secret]
}

run "inline_mode_needs_the_secrets" {
  command = plan

  variables {
    token = null
  }
  expect_failures = [output.hosts]
}
