# raftq is not on a package index: the deployment ships the wheel built from
# this repository (make terraform-wheel) in a private, encrypted bucket, and
# every host installs that exact file (its key names the version; a new
# wheel is a new key, so hosts never see a half-replaced object). The same
# bucket receives the VPC's flow logs under flow-logs/.

locals {
  flow_log_prefix = "flow-logs/"
}

resource "aws_kms_key" "artifacts" {
  description             = "${var.name}: the deployment's artifact bucket"
  enable_key_rotation     = true
  deletion_window_in_days = 7
}

data "aws_iam_policy_document" "artifacts_key" {
  #checkov:skip=CKV_AWS_111:a key policy's "*" resource is this key only; the statement is AWS's default account statement, which hands access control to IAM
  #checkov:skip=CKV_AWS_356:as above: in a key policy "*" means the key the policy is attached to
  #checkov:skip=CKV_AWS_109:as above: without the account statement the key could become unmanageable
  statement {
    sid       = "AccountAdministersTheKey"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "FlowLogDeliveryEncrypts"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["delivery.logs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kms_key_policy" "artifacts" {
  key_id = aws_kms_key.artifacts.id
  policy = data.aws_iam_policy_document.artifacts_key.json
}

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_18:access logs of a bucket holding one build artifact read by the deployment's own role add a second bucket and no audit value; CloudTrail data events cover it if required
  #checkov:skip=CKV_AWS_144:cross-region replication: the wheel is rebuilt from the repository at any time; it is not data
  #checkov:skip=CKV2_AWS_62:event notifications: nothing reacts to the upload
  bucket_prefix = "${var.name}-artifacts-"
  force_destroy = true # only build artifacts: destroy removes them with the deployment
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.artifacts.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    id     = "old-wheels"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  rule {
    id     = "flow-logs"
    status = "Enabled"
    filter {
      prefix = local.flow_log_prefix
    }
    expiration {
      days = 90
    }
  }
}

resource "aws_s3_object" "wheel" {
  bucket      = aws_s3_bucket.artifacts.id
  key         = "wheels/${basename(var.wheel_path)}"
  source      = var.wheel_path
  source_hash = filemd5(var.wheel_path)
  kms_key_id  = aws_kms_key.artifacts.arn

  depends_on = [aws_s3_bucket_server_side_encryption_configuration.artifacts]
}
