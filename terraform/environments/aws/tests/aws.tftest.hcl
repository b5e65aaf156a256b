# terraform test with mock_provider "aws": the whole environment is planned
# and applied against mocked AWS (schema from the schema-only provider, see
# terraform/tools/aws_schema). Asserts the security settings and that every
# instance boots its own rendered user_data.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = {
      names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    }
  }
  mock_data "aws_ssm_parameter" {
    defaults = {
      value = "ami-0123456789abcdef0"
    }
  }
  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
    }
  }
  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
  mock_resource "aws_s3_bucket" {
    defaults = {
      id  = "raftq-artifacts-test"
      arn = "arn:aws:s3:::raftq-artifacts-test"
    }
  }
  mock_resource "aws_kms_key" {
    defaults = {
      arn = "arn:aws:kms:eu-west-1:123456789012:key/test"
    }
  }
}

variables {
  wheel_path = "tests/fixtures/raftq-0.0.0-py3-none-any.whl"
}

# One apply of the whole environment (each run re-reads the ~1700-resource
# schema), then the assertions, grouped by what they protect.
run "deployment" {
  command = apply

  assert {
    condition     = length(aws_instance.node) == 3 && length(aws_instance.worker) == 2 && length(aws_instance.loadgen) == 2
    error_message = "3 nodes, 2 workers, 2 load generators by default"
  }
  assert {
    condition     = [for k in ["node-1", "node-2", "node-3"] : aws_instance.node[k].private_ip] == ["10.40.1.11", "10.40.2.12", "10.40.3.13"]
    error_message = "nodes sit on static addresses, one per zone"
  }
  assert {
    condition     = output.node_client_addresses == ["10.40.1.11:7700", "10.40.2.12:7700", "10.40.3.13:7700"]
    error_message = "the client endpoints are the nodes' static addresses"
  }
  assert {
    condition     = alltrue([for s in aws_subnet.private : s.map_public_ip_on_launch == false])
    error_message = "private subnets give no public address"
  }

  assert {
    condition = alltrue([for i in concat(values(aws_instance.node), aws_instance.worker, values(aws_instance.loadgen)) :
    i.metadata_options[0].http_tokens == "required" && i.metadata_options[0].http_put_response_hop_limit == 1])
    error_message = "IMDSv2 is required on every instance"
  }
  assert {
    condition = alltrue([for i in concat(values(aws_instance.node), aws_instance.worker, values(aws_instance.loadgen)) :
    i.root_block_device[0].encrypted == true])
    error_message = "every volume is encrypted"
  }
  assert {
    condition = alltrue([for i in concat(values(aws_instance.node), aws_instance.worker, values(aws_instance.loadgen)) :
    i.associate_public_ip_address == false && i.key_name == null])
    error_message = "no public address and no SSH key on any instance"
  }
  assert {
    condition     = alltrue([for a in aws_iam_role_policy_attachment.ssm_core : a.policy_arn == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"])
    error_message = "instances are reached through SSM"
  }
  assert {
    condition = (
      # jsonencode: == compares types too, and a list is not a tuple
      jsonencode([for s in data.aws_iam_policy_document.host["worker"].statement : s.resources if s.sid == "ReadItsOwnSecrets"]) == jsonencode([["arn:aws:ssm:eu-west-1:123456789012:parameter/raftq/worker-token"]])
      && jsonencode([for s in data.aws_iam_policy_document.host["loadgen"].statement : s.resources if s.sid == "ReadItsOwnSecrets"]) == jsonencode([["arn:aws:ssm:eu-west-1:123456789012:parameter/raftq/producer-token"]])
      && length(one([for s in data.aws_iam_policy_document.host["node"].statement : s.resources if s.sid == "ReadItsOwnSecrets"])) == 4
    )
    error_message = "each kind of host may read only its own secrets: workers the worker token, load generators the producer token"
  }
  assert {
    condition = (
      alltrue([for k, i in aws_instance.node : i.iam_instance_profile == aws_iam_instance_profile.host["node"].name])
      && alltrue([for i in aws_instance.worker : i.iam_instance_profile == aws_iam_instance_profile.host["worker"].name])
      && alltrue([for k, i in aws_instance.loadgen : i.iam_instance_profile == aws_iam_instance_profile.host["loadgen"].name])
      && length(distinct([for p in aws_iam_instance_profile.host : p.role])) == 3
    )
    error_message = "every kind of host runs with its own instance role"
  }

  assert {
    condition     = length([for r in aws_vpc_security_group_ingress_rule.this : r if r.from_port == 22 || r.to_port == 22 || r.cidr_ipv4 != null || r.cidr_ipv6 != null]) == 0
    error_message = "no SSH and no ingress from an address range: every ingress rule names a security group"
  }
  assert {
    condition = ([for r in aws_vpc_security_group_ingress_rule.this : r.referenced_security_group_id if r.from_port == 7800]
    == [aws_security_group.node.id]) && aws_vpc_security_group_ingress_rule.this["raft_from_nodes"].security_group_id == aws_security_group.node.id
    error_message = "the Raft port is open between nodes only"
  }
  assert {
    condition = toset([for r in aws_vpc_security_group_ingress_rule.this : r.referenced_security_group_id if r.from_port == 7700]) == toset([
    aws_security_group.node.id, aws_security_group.worker.id, aws_security_group.loadgen.id])
    error_message = "the client port is open to nodes, workers and load generators, nobody else"
  }
  assert {
    condition = [for r in aws_vpc_security_group_ingress_rule.this : [r.security_group_id, r.referenced_security_group_id] if r.from_port == 5557] == [
    [aws_security_group.loadgen.id, aws_security_group.loadgen.id]]
    error_message = "the Locust master port is open between load generators only"
  }
  assert {
    condition     = alltrue([for r in aws_vpc_security_group_ingress_rule.this : r.from_port == r.to_port && r.ip_protocol == "tcp"])
    error_message = "one TCP port per rule"
  }

  assert {
    condition = alltrue(concat(
      [for k, i in aws_instance.node : i.user_data_base64 == base64gzip(module.render.hosts[k].user_data)],
      [for n, i in aws_instance.worker : i.user_data_base64 == base64gzip(module.render.hosts["worker-${n + 1}"].user_data)],
      [for k, i in aws_instance.loadgen : i.user_data_base64 == base64gzip(module.render.hosts[k].user_data)],
    ))
    error_message = "every instance boots the render module's document for its host"
  }
  assert {
    condition     = length(distinct([for i in aws_instance.node : i.user_data_base64])) == 3
    error_message = "each node boots its own document (its own node id)"
  }
  assert {
    condition     = alltrue([for h in module.render.hosts : !strcontains(h.user_data, "secret =\"") && strcontains(h.user_data, "#cloud-config")])
    error_message = "user_data carries no secret value (it is read from SSM at boot)"
  }
  assert {
    condition     = strcontains(module.render.hosts["node-1"].user_data, "aws s3 cp --region eu-west-1 s3://raftq-artifacts-test/wheels/raftq-0.0.0-py3-none-any.whl")
    error_message = "hosts install the wheel the deployment shipped"
  }
}

run "even_node_count_is_refused" {
  command = plan

  variables {
    node_count = 4
  }
  expect_failures = [var.node_count]
}
