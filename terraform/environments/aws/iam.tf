# One instance role per kind of host (node, worker, load generator): SSM
# Session Manager (no SSH), the deployment's wheel, and only the secret
# parameters that kind's files hold (the render module says which): a worker
# host can read the worker token, never the admin token. Nothing else.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  secret_parameter = coalesce(var.secret_parameter, "/${var.name}/secret")
  token_parameters = {
    producer = coalesce(var.producer_token_parameter, "/${var.name}/producer-token")
    worker   = coalesce(var.worker_token_parameter, "/${var.name}/worker-token")
    admin    = coalesce(var.admin_token_parameter, "/${var.name}/admin-token")
  }
  # The parameter names are not secret; the render module's output is marked
  # sensitive as a whole because user_data may hold inline secrets.
  host_kinds = {
    node    = [for i in local.node_ids : "node-${i}"]
    worker  = [for i in range(var.worker_count) : "worker-${i + 1}"]
    loadgen = [for i in range(var.load_generator_count) : "loadgen-${i + 1}"]
  }
  kind_parameter_arns = {
    for kind, hosts in local.host_kinds : kind => [
      for p in distinct(flatten([for h in hosts : nonsensitive(module.render.hosts[h].ssm_parameters)])) :
      "arn:${data.aws_partition.current.partition}:ssm:${var.region}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(p, "/")}"
    ]
  }
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "host" {
  for_each = local.host_kinds

  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  for_each = local.host_kinds

  role       = aws_iam_role.host[each.key].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "host" {
  for_each = local.host_kinds

  statement {
    sid       = "ReadTheShippedWheel"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/${aws_s3_object.wheel.key}"]
  }
  dynamic "statement" {
    for_each = length(local.kind_parameter_arns[each.key]) == 0 ? [] : [local.kind_parameter_arns[each.key]]
    content {
      sid       = "ReadItsOwnSecrets"
      actions   = ["ssm:GetParameter"]
      resources = statement.value
    }
  }
  dynamic "statement" {
    for_each = var.parameters_kms_key_arn == null || length(local.kind_parameter_arns[each.key]) == 0 ? [] : [var.parameters_kms_key_arn]
    content {
      sid       = "DecryptItsOwnSecrets"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
  statement {
    sid       = "DecryptTheWheel"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.artifacts.arn]
  }
}

resource "aws_iam_role_policy" "host" {
  for_each = local.host_kinds

  name   = "${var.name}-${each.key}"
  role   = aws_iam_role.host[each.key].id
  policy = data.aws_iam_policy_document.host[each.key].json
}

resource "aws_iam_instance_profile" "host" {
  for_each = local.host_kinds

  name = "${var.name}-${each.key}"
  role = aws_iam_role.host[each.key].name
}
