terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0, < 7.0"
    }
  }

  # Remote state: keep it in S3 with locking, never in the repository. The
  # state holds no secret values (they live in SSM Parameter Store), but it
  # does hold the deployment's ids and addresses.
  #
  # backend "s3" {
  #   bucket       = "my-terraform-state"          # versioned, encrypted, access-logged
  #   key          = "raftq/prod/terraform.tfstate"
  #   region       = "eu-west-1"
  #   encrypt      = true
  #   use_lockfile = true                          # S3-native locking (Terraform >= 1.10)
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, { Project = "raftq", Deployment = var.name })
  }
}
