# Three nodes, two workers, two load generators on fixed private addresses,
# secrets inline: what tests/terraform renders and checks (cloud-init schema,
# the TOML through raftq's own config loader).
terraform {
  required_version = ">= 1.6.0"
}

variable "secret_source" {
  type    = string
  default = "inline"
}

module "render" {
  source = "../.."

  nodes = [
    { id = 1, address = "10.0.1.11" },
    { id = 2, address = "10.0.2.11" },
    { id = 3, address = "10.0.3.11" },
  ]
  worker_count    = 2
  load_generators = ["10.0.1.31", "10.0.2.31"]
  secret_source   = var.secret_source
  secret          = var.secret_source == "inline" ? "example-secret-0123456789abcdef" : null
  tokens = var.secret_source == "inline" ? {
    producer = "example-producer-Qx7rT2mV9kLp4Zs8"
    worker   = "example-worker-Vn3cH8yK1dRt6Fg2"
    admin    = "example-admin-Lw9sE4bN7pXj2Uq5"
  } : null
  ssm_parameters = var.secret_source == "inline" ? null : {
    secret         = "/raftq/example/secret"
    producer_token = "/raftq/example/producer-token"
    worker_token   = "/raftq/example/worker-token"
    admin_token    = "/raftq/example/admin-token"
    region         = "eu-west-1"
  }
  install_commands = ["echo install raftq here"]
  locustfile       = file("${path.module}/../../../../../loadtest/locustfile.py")
}

output "hosts" {
  value     = module.render.hosts
  sensitive = true
}
