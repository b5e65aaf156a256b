output "node_client_addresses" {
  description = "Client endpoints of the cluster (inside the VPC): RAFTQ_CLUSTER for clients and workers."
  value       = module.render.node_client_addresses
}

output "node_instance_ids" {
  description = "Node name => instance id (for SSM sessions and the rolling replacement)."
  value       = { for k, v in aws_instance.node : k => v.id }
}

output "worker_instance_ids" {
  value = aws_instance.worker[*].id
}

output "load_generator_instance_ids" {
  value = { for k, v in aws_instance.loadgen : k => v.id }
}

output "wheel_s3_uri" {
  description = "The raftq wheel every host installed."
  value       = "s3://${aws_s3_bucket.artifacts.id}/${aws_s3_object.wheel.key}"
}

output "load_test_command" {
  description = "Starts a load test on the Locust master through SSM and waits for its SLO gate (see README)."
  value = var.load_generator_count == 0 ? null : join(" ", [
    "aws ssm send-command --region ${var.region} --instance-ids ${aws_instance.loadgen["loadgen-1"].id}",
    "--document-name AWS-RunShellScript --comment raftq-loadtest",
    "--parameters 'commands=[\"systemctl start --wait raftq-loadtest.service; rc=$?; tail -n 20 /var/lib/raftq-locust/run_stats.csv; exit $rc\"]'",
    "--query Command.CommandId --output text",
  ])
}

output "session_command" {
  description = "A shell on a node without SSH (SSM Session Manager plugin required)."
  value       = "aws ssm start-session --region ${var.region} --target ${aws_instance.node["node-1"].id}"
}
