# One cloud-init document per host of a raftq deployment. Every environment
# (aws, local) feeds its hosts exactly these documents, so what CI runs in the
# local environment is what a cloud VM boots with.

locals {
  inline = var.secret_source == "inline"
  # In ssm mode the files carry placeholders that raftq-fill-secrets replaces
  # at boot with the values read from SSM Parameter Store.
  # (A missing inline value renders as "-" and is refused by the precondition
  # of output.hosts, with a message that says what is missing.)
  placeholders = {
    secret   = "@@RAFTQ_SECRET@@"
    producer = "@@RAFTQ_PRODUCER_TOKEN@@"
    worker   = "@@RAFTQ_WORKER_TOKEN@@"
    admin    = "@@RAFTQ_ADMIN_TOKEN@@"
  }
  # Which var.ssm_parameters attribute names the parameter of each value.
  ssm_keys = { secret = "secret", producer = "producer_token", worker = "worker_token", admin = "admin_token" }
  secret   = local.inline ? coalesce(var.secret, "-") : local.placeholders.secret
  tokens = local.inline ? (var.tokens != null ? var.tokens : { producer = "-", worker = "-", admin = "-" }) : {
    producer = local.placeholders.producer
    worker   = local.placeholders.worker
    admin    = local.placeholders.admin
  }

  node_clients = [for n in var.nodes : "${n.address}:${var.client_port}"]
  worker_state = "/var/lib/raftq-worker"
  locust_state = "/var/lib/raftq-locust"
  unit_dir     = "/etc/systemd/system"

  hardening = templatefile("${path.module}/templates/hardening.tftpl", {
    user   = var.service_user
    nofile = var.nofile_limit
  })

  # The single cluster TOML: nodes, secret, credentials, storage. Extend the
  # template (not this module's callers) when the config gains keys.
  cluster_toml = templatefile("${path.module}/templates/cluster.toml.tftpl", {
    secret      = local.secret
    tokens      = local.tokens
    data_dir    = var.data_dir
    durability  = var.durability
    nodes       = var.nodes
    client_port = var.client_port
    raft_port   = var.raft_port
  })

  worker_env = join("\n", [
    "RAFTQ_CLUSTER=${join(",", local.node_clients)}",
    "RAFTQ_TOKEN=${local.tokens.worker}",
    "RAFTQ_QUEUES=${var.worker_queues}",
    "RAFTQ_THREADS=${var.worker_threads}",
    "RAFTQ_WORKDIR=${local.worker_state}/scratch",
    "RAFTQ_DATA_ROOT=${local.worker_state}/data",
    "",
  ])

  locust_master    = length(var.load_generators) > 0 ? var.load_generators[0] : null
  locust_instances = [for i in range(var.locust_processes_per_host) : "raftq-locust-worker@${i + 1}.service"]
  loadtest_conf = templatefile("${path.module}/templates/loadtest.conf.tftpl", {
    config_dir     = var.config_dir
    state_dir      = local.locust_state
    master_port    = var.locust_master_port
    expect_workers = length(var.load_generators) * var.locust_processes_per_host
    users          = var.load_test.users
    spawn_rate     = var.load_test.spawn_rate
    run_time_s     = var.load_test.run_time_s
    nodes          = join(",", local.node_clients)
    token          = local.tokens.producer
    slo_p95_ms     = var.load_test.slo_p95_ms
    slo_fail_ratio = var.load_test.slo_fail_ratio
    slo_min_rps    = var.load_test.slo_min_rps
  })

  # -- write_files entries ---------------------------------------------------

  # Secrets live only in files the service user alone may read. `defer` writes
  # them in cloud-init's final stage, after `users` has created that user.
  secret_file = {
    permissions = "0600"
    owner       = "${var.service_user}:${var.service_user}"
    defer       = true
  }

  # Every entry has the same keys, so the lists of them are one type.
  unit_file = { permissions = "0644", owner = "root:root", defer = false }

  # -- hosts -------------------------------------------------------------------

  node_hosts = {
    for n in var.nodes : "node-${n.id}" => {
      role    = "node"
      address = n.address
      files = [
        merge(local.secret_file, { path = "${var.config_dir}/cluster.toml", content = local.cluster_toml }),
        merge(local.unit_file, {
          path = "${local.unit_dir}/raftq-node.service"
          content = templatefile("${path.module}/templates/node.service.tftpl", {
            node_id    = n.id
            config_dir = var.config_dir
            data_dir   = var.data_dir
            venv_dir   = var.venv_dir
            hardening  = local.hardening
          })
        }),
        merge(local.unit_file, {
          path = "/usr/local/lib/raftq/node-flags.py"
          content = templatefile("${path.module}/templates/node-flags.py.tftpl", {
            node_id    = n.id
            config_dir = var.config_dir
            data_dir   = var.data_dir
          })
        }),
      ]
      secret_files = ["${var.config_dir}/cluster.toml"]
      secrets      = ["secret", "producer", "worker", "admin"]
      state_dirs   = [var.data_dir]
      start_cmds = [
        "${var.venv_dir}/bin/python /usr/local/lib/raftq/node-flags.py",
        "systemctl enable --now raftq-node.service",
      ]
    }
  }

  worker_hosts = {
    for i in range(var.worker_count) : "worker-${i + 1}" => {
      role    = "worker"
      address = null
      files = [
        merge(local.secret_file, { path = "${var.config_dir}/worker.env", content = local.worker_env }),
        merge(local.unit_file, {
          path = "${local.unit_dir}/raftq-worker.service"
          content = templatefile("${path.module}/templates/worker.service.tftpl", {
            config_dir = var.config_dir
            state_dir  = local.worker_state
            venv_dir   = var.venv_dir
            hardening  = local.hardening
          })
        }),
      ]
      secret_files = ["${var.config_dir}/worker.env"]
      secrets      = ["worker"]
      state_dirs   = [local.worker_state, "${local.worker_state}/scratch", "${local.worker_state}/data"]
      start_cmds   = ["systemctl enable --now raftq-worker.service"]
    }
  }

  loadgen_hosts = {
    for i, address in var.load_generators : "loadgen-${i + 1}" => {
      role    = i == 0 ? "loadgen-master" : "loadgen"
      address = address
      files = concat(
        [
          merge(local.unit_file, { path = "${var.config_dir}/locustfile.py", content = var.locustfile }),
          merge(local.unit_file, {
            path = "${local.unit_dir}/raftq-locust-worker@.service"
            content = templatefile("${path.module}/templates/locust-worker.service.tftpl", {
              config_dir  = var.config_dir
              state_dir   = local.locust_state
              venv_dir    = var.venv_dir
              master_host = local.locust_master
              master_port = var.locust_master_port
              hardening   = local.hardening
            })
          }),
        ],
        i != 0 ? [] : [
          merge(local.secret_file, { path = "${var.config_dir}/loadtest.conf", content = local.loadtest_conf }),
          merge(local.unit_file, {
            path = "${local.unit_dir}/raftq-loadtest.service"
            content = templatefile("${path.module}/templates/loadtest.service.tftpl", {
              config_dir = var.config_dir
              state_dir  = local.locust_state
              venv_dir   = var.venv_dir
              hardening  = local.hardening
            })
          }),
        ],
      )
      secret_files = i == 0 ? ["${var.config_dir}/loadtest.conf"] : []
      secrets      = i == 0 ? ["producer"] : []
      state_dirs   = [local.locust_state]
      start_cmds   = ["systemctl enable --now ${join(" ", local.locust_instances)}"]
    }
  }

  hosts = merge(local.node_hosts, local.worker_hosts, local.loadgen_hosts)

  # ssm mode: the SSM parameters each host reads at boot (only those of the
  # values its own files hold: a worker host never reads the admin token).
  host_parameters = {
    for name, h in local.hosts : name => local.inline || var.ssm_parameters == null ? [] : [
      for k in h.secrets : { placeholder = local.placeholders[k], name = var.ssm_parameters[local.ssm_keys[k]] }
    ]
  }

  documents = {
    for name, h in local.hosts : name => merge(
      {
        # Only the service user; no login user at all (access is via SSM).
        users = [{
          name           = var.service_user
          system         = true
          shell          = "/usr/sbin/nologin"
          lock_passwd    = true
          no_create_home = true
        }]
        write_files = concat(
          h.files,
          length(local.host_parameters[name]) == 0 ? [] : [merge(local.unit_file, {
            path        = "/usr/local/sbin/raftq-fill-secrets"
            permissions = "0755"
            content = templatefile("${path.module}/templates/fill-secrets.sh.tftpl", {
              region     = var.ssm_parameters.region
              parameters = local.host_parameters[name]
            })
          })],
        )
        runcmd = concat(
          var.install_commands,
          [for d in h.state_dirs : "install -d -o ${var.service_user} -g ${var.service_user} -m 0700 ${d}"],
          length(local.host_parameters[name]) == 0 ? [] : ["/usr/local/sbin/raftq-fill-secrets ${join(" ", h.secret_files)}"],
          ["systemctl daemon-reload"],
          h.start_cmds,
        )
      },
      # cloud-init rejects an empty `packages` list: leave the key out instead.
      length(var.packages) == 0 ? {} : { packages = var.packages },
    )
  }
}
