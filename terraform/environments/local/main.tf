# raftq on this machine: every host a network namespace with a fresh root,
# booted from the same user_data the render module gives the cloud hosts.
# See hostsim/host.py for what a host is, and the README for the commands.

locals {
  repo     = abspath("${path.module}/../../..")
  run_dir  = abspath("${path.module}/.run/${var.prefix}")
  hostsim  = "PYTHONPATH=${abspath(path.module)} /usr/bin/python3 -m hostsim.host --prefix ${var.prefix} --subnet ${var.subnet} --run-dir ${local.run_dir}"
  node_ids = range(1, var.node_count + 1)
  # .11.. nodes, .21.. workers, .31.. load generators
  node_addresses    = [for i in local.node_ids : cidrhost(var.subnet, 10 + i)]
  worker_addresses  = { for i in range(var.worker_count) : "worker-${i + 1}" => cidrhost(var.subnet, 21 + i) }
  loadgen_addresses = [for i in range(var.load_generator_count) : cidrhost(var.subnet, 31 + i)]
}

# The wheel built from this checkout, installed into the venv every host runs
# raftq and Locust from (a cloud host gets the same wheel from S3).
resource "terraform_data" "venv" {
  input = { hostsim = local.hostsim }

  provisioner "local-exec" {
    command = "${self.input.hostsim} build-venv"
  }
  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.hostsim} remove-run-dir"
  }
}

# The "VPC": a bridge in its own namespace, and a blackhole route for the subnet.
resource "terraform_data" "network" {
  input = { hostsim = local.hostsim }

  provisioner "local-exec" {
    command = "${self.input.hostsim} net-up"
  }
  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.hostsim} net-down"
  }
}

module "render" {
  source = "../../modules/render"

  nodes           = [for i in local.node_ids : { id = i, address = local.node_addresses[i - 1] }]
  worker_count    = var.worker_count
  load_generators = local.loadgen_addresses
  secret          = var.secret
  tokens          = var.tokens
  venv_dir        = "${local.run_dir}/venv"
  # The venv is the machine image's here; check it instead of installing.
  install_commands = ["test -x ${local.run_dir}/venv/bin/raftq"]
  locustfile       = file("${local.repo}/loadtest/locustfile.py")
  load_test        = var.load_test
}

locals {
  hosts = nonsensitive(toset(keys(module.render.hosts)))
  host_address = merge(
    { for i in local.node_ids : "node-${i}" => local.node_addresses[i - 1] },
    local.worker_addresses,
    { for i, a in local.loadgen_addresses : "loadgen-${i + 1}" => a },
  )
}

resource "terraform_data" "host" {
  for_each = local.hosts

  # A new user_data is a new host, as with a cloud VM.
  triggers_replace = sha256(module.render.hosts[each.key].user_data)
  input = {
    hostsim = local.hostsim
    name    = each.key
  }

  provisioner "local-exec" {
    command = "${self.input.hostsim} up --name ${each.key} --address ${local.host_address[each.key]}/24"
    environment = {
      HOSTSIM_USER_DATA = module.render.hosts[each.key].user_data
    }
  }
  provisioner "local-exec" {
    when    = destroy
    command = "${self.input.hostsim} down --name ${self.input.name}"
  }

  depends_on = [terraform_data.network, terraform_data.venv]
}
