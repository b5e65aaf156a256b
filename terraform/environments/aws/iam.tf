# One instance role: SSM Session Manager (no SSH), the deployment's wheel,
# and the two secret parameters. Nothing else.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  secret_parameter = coalesce(var.secret_parameter, "/${var.name}/secret")
  token_parameter  = coalesce(var.token_parameter, "/${var.name}/token")
  parameter_arns = [
    for p in [local.secret_parameter, local.token_parameter] :
    "arn:${data.aws_partition.current.partition}:ssm:${var.region}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(p, "/")}"
  ]
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
  name               = "${var.name}-host"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.host.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_iam_policy_document" "host" {
  statement {
    sid       = "ReadTheShippedWheel"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/${aws_s3_object.wheel.key}"]
  }
  statement {
    sid       = "ReadTheClusterSecrets"
    actions   = ["ssm:GetParameter"]
    resources = local.parameter_arns
  }
  dynamic "statement" {
    for_each = var.parameters_kms_key_arn == null ? [] : [var.parameters_kms_key_arn]
    content {
      sid       = "DecryptTheClusterSecrets"
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
  name   = "${var.name}-host"
  role   = aws_iam_role.host.id
  policy = data.aws_iam_policy_document.host.json
}

resource "aws_iam_instance_profile" "host" {
  name = "${var.name}-host"
  role = aws_iam_role.host.name
}
