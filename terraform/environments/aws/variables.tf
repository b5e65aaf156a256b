variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Deployment name: prefix of every resource name and of the SSM parameter paths."
  type        = string
  default     = "raftq"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2-31 lower-case letters, digits and '-', starting with a letter."
  }
}

variable "vpc_cidr" {
  description = "The VPC's range; one private /24 per availability zone is carved from it, plus one public /28 for the NAT gateway."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Availability zones used (nodes are spread over them: 3 zones lose one node per zone outage)."
  type        = number
  default     = 3
}

variable "node_count" {
  description = "Queue nodes (odd)."
  type        = number
  default     = 3

  validation {
    condition     = var.node_count >= 1 && var.node_count % 2 == 1
    error_message = "node_count: odd (1, 3, 5, ...): an even count tolerates no more failures than one node fewer."
  }
}

variable "worker_count" {
  description = "Worker instances."
  type        = number
  default     = 2
}

variable "load_generator_count" {
  description = "Locust instances; the first also runs the Locust master. 0 for a deployment without load generators."
  type        = number
  default     = 2
}

variable "node_instance_type" {
  description = "Nodes: fsync-bound and single-threaded apply; a general-purpose 2-vCPU size is plenty."
  type        = string
  default     = "m7i.large"
}

variable "worker_instance_type" {
  type    = string
  default = "c7i.large"
}

variable "load_generator_instance_type" {
  type    = string
  default = "c7i.large"
}

variable "root_volume_gb" {
  description = "Encrypted gp3 root volume of every instance (node journals live on it)."
  type        = number
  default     = 30
}

variable "ami_id" {
  description = "AMI of every instance; null = the latest Amazon Linux 2023 (x86_64) from its public SSM parameter. Changing it later replaces no instance by itself (see the rolling replacement in the README)."
  type        = string
  default     = null
}

variable "wheel_path" {
  description = "The raftq wheel this deployment ships (make terraform-wheel builds dist/raftq-*.whl); uploaded to the deployment's bucket and installed by every host."
  type        = string
}

variable "secret_parameter" {
  description = "SSM SecureString parameter holding the cluster secret (created before apply: see README). null = /<name>/secret."
  type        = string
  default     = null
}

variable "producer_token_parameter" {
  description = "SSM SecureString parameter holding the producer token (submit and read; read by the load generators). null = /<name>/producer-token."
  type        = string
  default     = null
}

variable "worker_token_parameter" {
  description = "SSM SecureString parameter holding the worker token (lease and report; read by the worker hosts). null = /<name>/worker-token."
  type        = string
  default     = null
}

variable "admin_token_parameter" {
  description = "SSM SecureString parameter holding the admin token (every op; read by the nodes only, for the cluster TOML). null = /<name>/admin-token."
  type        = string
  default     = null
}

variable "parameters_kms_key_arn" {
  description = "KMS key of the SecureString parameters if not the AWS managed aws/ssm key (the instance role is then allowed to decrypt with it)."
  type        = string
  default     = null
}

variable "durability" {
  type    = string
  default = "fsync"
}

variable "load_test" {
  description = "Defaults of the raftq-loadtest unit on the first load generator."
  type = object({
    users          = number
    spawn_rate     = number
    run_time_s     = number
    slo_p95_ms     = number
    slo_fail_ratio = number
    slo_min_rps    = number
  })
  default = {
    users          = 1000
    spawn_rate     = 200
    run_time_s     = 60
    slo_p95_ms     = 1000
    slo_fail_ratio = 0.01
    slo_min_rps    = 100
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
