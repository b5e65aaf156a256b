# raftq on EC2: node_count queue nodes on static private addresses spread
# over the zones, workers, and Locust hosts (master + workers). Every
# instance boots the user_data the render module writes for it -- the same
# documents the local environment boots in CI.

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  ami = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.al2023[0].value)

  # Node i lives in zone i mod az_count at .10+i of that zone's subnet;
  # load generator i at .30+i. Static: the cluster TOML names them.
  node_ids = range(1, var.node_count + 1)
  node_placement = {
    for i in local.node_ids : "node-${i}" => {
      subnet  = (i - 1) % length(local.azs)
      address = cidrhost(local.private_subnets[(i - 1) % length(local.azs)], 10 + i)
    }
  }
  loadgen_placement = {
    for i in range(var.load_generator_count) : "loadgen-${i + 1}" => {
      subnet  = i % length(local.azs)
      address = cidrhost(local.private_subnets[i % length(local.azs)], 30 + i)
    }
  }

  wheel_file = "/opt/raftq/${basename(var.wheel_path)}"
}

module "render" {
  source = "../../modules/render"

  nodes           = [for i in local.node_ids : { id = i, address = local.node_placement["node-${i}"].address }]
  worker_count    = var.worker_count
  load_generators = [for i in range(var.load_generator_count) : local.loadgen_placement["loadgen-${i + 1}"].address]
  durability      = var.durability
  secret_source   = "ssm"
  ssm_parameters = {
    secret         = local.secret_parameter
    producer_token = local.token_parameters.producer
    worker_token   = local.token_parameters.worker
    admin_token    = local.token_parameters.admin
    region         = var.region
  }
  # Amazon Linux 2023: Python 3.11 (raftq needs tomllib); the AWS CLI is in the image.
  packages = ["python3.11"]
  install_commands = [
    "mkdir -p /opt/raftq",
    "aws s3 cp --region ${var.region} s3://${aws_s3_bucket.artifacts.id}/${aws_s3_object.wheel.key} ${local.wheel_file}",
    "python3.11 -m venv /opt/raftq/venv",
    "/opt/raftq/venv/bin/pip install --quiet '${local.wheel_file}[load]'",
  ]
  locustfile = file("${path.module}/../../../loadtest/locustfile.py")
  load_test  = var.load_test
}

locals {
  hosts = module.render.hosts
}

resource "aws_instance" "node" {
  for_each = local.node_placement

  ami                         = local.ami
  instance_type               = var.node_instance_type
  subnet_id                   = aws_subnet.private[each.value.subnet].id
  private_ip                  = each.value.address
  vpc_security_group_ids      = [aws_security_group.node.id]
  iam_instance_profile        = aws_iam_instance_profile.host["node"].name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = true
  # Gzipped: cloud-init reads it as is, and it stays far below EC2's 16 KiB.
  user_data_base64            = base64gzip(local.hosts[each.key].user_data)
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = var.root_volume_gb
  }

  tags = { Name = "${var.name}-${each.key}", Role = "node" }

  lifecycle {
    # A new AMI replaces nodes one at a time (terraform apply -replace), never all at once.
    ignore_changes = [ami]
  }
}

resource "aws_instance" "worker" {
  count = var.worker_count

  ami                         = local.ami
  instance_type               = var.worker_instance_type
  subnet_id                   = aws_subnet.private[count.index % length(local.azs)].id
  vpc_security_group_ids      = [aws_security_group.worker.id]
  iam_instance_profile        = aws_iam_instance_profile.host["worker"].name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = true
  user_data_base64            = base64gzip(local.hosts["worker-${count.index + 1}"].user_data)
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = var.root_volume_gb
  }

  tags = { Name = "${var.name}-worker-${count.index + 1}", Role = "worker" }

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_instance" "loadgen" {
  for_each = local.loadgen_placement

  ami                         = local.ami
  instance_type               = var.load_generator_instance_type
  subnet_id                   = aws_subnet.private[each.value.subnet].id
  private_ip                  = each.value.address
  vpc_security_group_ids      = [aws_security_group.loadgen.id]
  iam_instance_profile        = aws_iam_instance_profile.host["loadgen"].name
  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = true
  user_data_base64            = base64gzip(local.hosts[each.key].user_data)
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = var.root_volume_gb
  }

  tags = { Name = "${var.name}-${each.key}", Role = local.hosts[each.key].role }

  lifecycle {
    ignore_changes = [ami]
  }
}
