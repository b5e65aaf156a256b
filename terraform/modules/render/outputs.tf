output "hosts" {
  description = "Every host: its role (node, worker, loadgen-master, loadgen), its static address (null for workers) and its cloud-init user_data."
  sensitive   = true

  precondition {
    condition     = var.secret_source == "ssm" ? var.ssm_parameters != null : (var.secret != null && var.token != null)
    error_message = "secret_source = \"inline\" needs secret and token; \"ssm\" needs ssm_parameters."
  }

  value = {
    for name, h in local.hosts : name => {
      role      = h.role
      address   = h.address
      user_data = "#cloud-config\n${yamlencode(local.documents[name])}"
    }
  }
}

output "node_client_addresses" {
  description = "Client addresses of the nodes (any one is enough for a client)."
  value       = local.node_clients
}

output "cluster_toml" {
  description = "The cluster configuration every node loads."
  sensitive   = true
  value       = local.cluster_toml
}

output "load_test_command" {
  description = "What starts a load test on the first load generator."
  value       = "systemctl start --wait raftq-loadtest.service; tail -n 40 ${local.locust_state}/run_stats.csv"
}
