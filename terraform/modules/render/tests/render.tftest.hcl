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
  tokens = {
    producer = "test-producer-Hb4nW8cJ2pXr6Ty1"
    worker   = "test-worker-Kq5mZ1vB7nLs3Wd8"
    admin    = "test-admin-Pf2xR9hT4cMj6Ya0"
  }
  locustfile = "# locustfile"
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
    if anytrue([for t in values(var.tokens) : strcontains(f.content, t)])]]))
    error_message = "every file holding a token is 0600"
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

run "each_host_holds_only_its_own_credential" {
  command = plan

  assert {
    condition     = alltrue([for t in values(var.tokens) : strcontains(output.cluster_toml, t)]) && length(regexall("\\[\\[credentials\\]\\]", output.cluster_toml)) == 3
    error_message = "the nodes' TOML has one credential per role"
  }
  assert {
    condition     = strcontains(output.hosts["worker-1"].user_data, var.tokens.worker) && !strcontains(output.hosts["worker-1"].user_data, var.tokens.admin) && !strcontains(output.hosts["worker-1"].user_data, var.tokens.producer)
    error_message = "a worker host holds the worker token and no other"
  }
  assert {
    condition     = strcontains(output.hosts["loadgen-1"].user_data, var.tokens.producer) && !strcontains(output.hosts["loadgen-1"].user_data, var.tokens.admin) && !strcontains(output.hosts["loadgen-1"].user_data, var.tokens.worker)
    error_message = "the Locust master holds the producer token and no other"
  }
  assert {
    condition     = !anytrue([for t in values(var.tokens) : strcontains(output.hosts["loadgen-2"].user_data, t)])
    error_message = "a Locust worker host holds no token (the master hands out the options)"
  }
}

run "ssm_mode_keeps_secrets_out_of_user_data" {
  command = plan

  variables {
    secret        = null
    tokens        = null
    secret_source = "ssm"
    ssm_parameters = {
      secret         = "/raftq/test/secret"
      producer_token = "/raftq/test/producer-token"
      worker_token   = "/raftq/test/worker-token"
      admin_token    = "/raftq/test/admin-token"
      region         = "eu-west-1"
    }
  }

  assert {
    condition     = alltrue([for h in output.hosts : !strcontains(h.user_data, "test-secret") && !strcontains(h.user_data, "test-producer") && !strcontains(h.user_data, "test-worker") && !strcontains(h.user_data, "test-admin")])
    error_message = "no secret value in any user_data"
  }
  assert {
    condition     = length(output.hosts["node-1"].ssm_parameters) == 4 && output.hosts["worker-2"].ssm_parameters == ["/raftq/test/worker-token"] && output.hosts["loadgen-1"].ssm_parameters == ["/raftq/test/producer-token"] && length(output.hosts["loadgen-2"].ssm_parameters) == 0
    error_message = "each host reads only the parameters of its own files"
  }
  assert {
    condition     = !strcontains(output.hosts["worker-1"].user_data, "admin-token") && !strcontains(output.hosts["loadgen-2"].user_data, "raftq-fill-secrets")
    error_message = "a worker's boot script never names the admin token; a host with no secret has no boot script"
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
    tokens = null
  }
  expect_failures = [output.hosts]
}

run "one_token_for_two_roles_is_refused" {
  command = plan

  variables {
    tokens = {
      producer = "test-same-Hb4nW8cJ2pXr6Ty1"
      worker   = "test-same-Hb4nW8cJ2pXr6Ty1"
      admin    = "test-admin-Pf2xR9hT4cMj6Ya0"
    }
  }
  expect_failures = [var.tokens]
}
