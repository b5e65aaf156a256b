output "hosts" {
  description = "Every host: its role (node, worker, loadgen-master, loadgen), its static address (null for workers), its cloud-init user_data and (ssm mode) the SSM parameters it reads at boot, for a least-privilege instance role."
  sensitive   = true

  precondition {
    condition     = var.secret_source == "ssm" ? var.ssm_parameters != null : (var.secret != null && var.tokens != null)
    error_message = "secret_source = \"inline\" needs secret and tokens; \"ssm\" needs ssm_parameters."
  }

  value = {
    for name, h in local.hosts : name => {
      role           = h.role
      address        = h.address
      user_data      = "#cloud-config\n${yamlencode(local.documents[name])}"
      ssm_parameters = [for p in local.host_parameters[name] : p.name]
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
