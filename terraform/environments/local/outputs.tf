output "node_client_addresses" {
  description = "Client addresses of the nodes (reachable from inside the hosts only)."
  value       = module.render.node_client_addresses
}

output "hosts" {
  description = "Host name => address."
  value       = local.host_address
}

output "run_dir" {
  description = "This run's directory (venv, per-host console logs)."
  value       = local.run_dir
}

output "hostctl" {
  description = "Prefix of a command that acts inside a host: append `exec --name HOST -- CMD` or `systemctl --name HOST -- ARGS`."
  value       = local.hostsim
}

output "load_test_command" {
  description = "Runs the load test on the first load generator (exit code = the SLO gate)."
  value       = "${local.hostsim} systemctl --name loadgen-1 -- start --wait raftq-loadtest.service"
}
