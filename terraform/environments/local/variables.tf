variable "prefix" {
  description = "Names of this run's network namespaces (<prefix>-sw, <prefix>-node-1, ...) and of its run directory. One run per prefix at a time."
  type        = string
  default     = "rqtf"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,7}$", var.prefix))
    error_message = "prefix: 1-8 lower-case letters and digits, starting with a letter."
  }
}

variable "subnet" {
  description = "The hosts' private /24. It never leaves the machine: the root namespace gets a blackhole route for it."
  type        = string
  default     = "10.213.13.0/24"

  validation {
    condition     = can(cidrhost(var.subnet, 0)) && endswith(var.subnet, "/24")
    error_message = "subnet: an IPv4 /24 such as 10.213.13.0/24."
  }
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
  description = "Worker hosts."
  type        = number
  default     = 2
}

variable "load_generator_count" {
  description = "Locust hosts (the first runs the master)."
  type        = number
  default     = 1
}

variable "tokens" {
  description = "The producer, worker and admin tokens (the tests set their own; the defaults are for trying it out)."
  type = object({
    producer = string
    worker   = string
    admin    = string
  })
  default = {
    producer = "local-producer-Mz3kV8qT1wNc5Rf7"
    worker   = "local-worker-Hd6pL2sX9gBv4Qe1"
    admin    = "local-admin-Tc8yN5jW3kRz7Mu0"
  }
  sensitive = true
}

variable "secret" {
  description = "Cluster secret."
  type        = string
  default     = "local-secret-0123456789abcdef"
  sensitive   = true
}

variable "load_test" {
  description = "Defaults of the load generator's raftq-loadtest unit."
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
    run_time_s     = 40
    slo_p95_ms     = 1000
    slo_fail_ratio = 0.01
    slo_min_rps    = 100
  }
}
