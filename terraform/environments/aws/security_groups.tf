# One security group per role, one rule per port and peer. No SSH from
# anywhere: operators use SSM Session Manager. Egress is as narrow as the
# hosts' needs: the cluster's ports inside the VPC, and HTTPS out (SSM, S3,
# PyPI for the wheel's dependencies).

locals {
  ports = {
    client = 7700
    raft   = 7800
    locust = 5557
  }
}

resource "aws_security_group" "node" {
  name        = "${var.name}-node"
  description = "raftq nodes: Raft between nodes, client port from workers and load generators"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-node" }
}

resource "aws_security_group" "worker" {
  name        = "${var.name}-worker"
  description = "raftq workers: no inbound traffic"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-worker" }
}

resource "aws_security_group" "loadgen" {
  name        = "${var.name}-loadgen"
  description = "Locust hosts: the master port between load generators only"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-loadgen" }
}

locals {
  ingress = {
    raft_from_nodes      = { sg = "node", port = local.ports.raft, from = "node", what = "Raft between nodes" }
    client_from_nodes    = { sg = "node", port = local.ports.client, from = "node", what = "client port between nodes (a booting node asks its peers for a leader)" }
    client_from_workers  = { sg = "node", port = local.ports.client, from = "worker", what = "client port from workers" }
    client_from_loadgens = { sg = "node", port = local.ports.client, from = "loadgen", what = "client port from load generators" }
    locust_from_loadgens = { sg = "loadgen", port = local.ports.locust, from = "loadgen", what = "Locust master port between load generators" }
  }
  egress = {
    node_raft      = { sg = "node", port = local.ports.raft, to = "node" }
    node_client    = { sg = "node", port = local.ports.client, to = "node" }
    worker_client  = { sg = "worker", port = local.ports.client, to = "node" }
    loadgen_client = { sg = "loadgen", port = local.ports.client, to = "node" }
    loadgen_locust = { sg = "loadgen", port = local.ports.locust, to = "loadgen" }
    node_https     = { sg = "node", port = 443, to = null }
    worker_https   = { sg = "worker", port = 443, to = null }
    loadgen_https  = { sg = "loadgen", port = 443, to = null }
  }
  security_groups = {
    node    = aws_security_group.node.id
    worker  = aws_security_group.worker.id
    loadgen = aws_security_group.loadgen.id
  }
}

resource "aws_vpc_security_group_ingress_rule" "this" {
  for_each = local.ingress

  security_group_id            = local.security_groups[each.value.sg]
  referenced_security_group_id = local.security_groups[each.value.from]
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = each.value.what
  tags                         = { Name = "${var.name}-${each.key}" }
}

resource "aws_vpc_security_group_egress_rule" "this" {
  for_each = local.egress

  security_group_id            = local.security_groups[each.value.sg]
  referenced_security_group_id = each.value.to == null ? null : local.security_groups[each.value.to]
  # HTTPS goes out through the NAT gateway / S3 endpoint (SSM, S3, PyPI).
  cidr_ipv4   = each.value.to == null ? "0.0.0.0/0" : null
  ip_protocol = "tcp"
  from_port   = each.value.port
  to_port     = each.value.port
  description = each.value.to == null ? "HTTPS out: SSM, S3, PyPI" : "port ${each.value.port} to ${each.value.to}s"
  tags        = { Name = "${var.name}-${each.key}" }
}
