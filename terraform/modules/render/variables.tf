variable "nodes" {
  description = "Queue nodes: a stable Raft id and the static private address of each. An odd count (a majority survives one fewer failure with an even count)."
  type = list(object({
    id      = number
    address = string
  }))

  validation {
    condition     = length(var.nodes) >= 1 && length(var.nodes) % 2 == 1
    error_message = "nodes: the node count must be odd (1, 3, 5, ...): an even count tolerates no more failures than one node fewer."
  }
  validation {
    condition     = alltrue([for n in var.nodes : n.id >= 1 && floor(n.id) == n.id])
    error_message = "nodes: every id must be a positive integer."
  }
  validation {
    condition     = length(distinct([for n in var.nodes : n.id])) == length(var.nodes)
    error_message = "nodes: ids must be unique."
  }
  validation {
    condition     = length(distinct([for n in var.nodes : n.address])) == length(var.nodes)
    error_message = "nodes: addresses must be unique (one node per host)."
  }
  validation {
    condition     = alltrue([for n in var.nodes : can(regex("^[A-Za-z0-9.-]+$", n.address))])
    error_message = "nodes: an address is an IPv4 address or a host name (letters, digits, '.', '-')."
  }
}

variable "worker_count" {
  description = "Hosts running `raftq worker`."
  type        = number
  default     = 2

  validation {
    condition     = var.worker_count >= 0 && floor(var.worker_count) == var.worker_count
    error_message = "worker_count: a whole number >= 0."
  }
}

variable "load_generators" {
  description = "Locust hosts, by static address. The first one also runs the Locust master (the on-demand raftq-loadtest unit); every one runs Locust workers."
  type        = list(string)
  default     = []
}

variable "client_port" {
  description = "Client port of every node (submit, lease, ...)."
  type        = number
  default     = 7700
}

variable "raft_port" {
  description = "Raft port of every node (node to node only)."
  type        = number
  default     = 7800
}

variable "locust_master_port" {
  description = "Port the Locust master listens on for its workers."
  type        = number
  default     = 5557
}

variable "secret_source" {
  description = "\"inline\": the secret and tokens are written into the 0600 files by user_data itself (tests, the local environment). \"ssm\": user_data holds only the SSM parameter names; a boot script reads the values with the instance role and fills the 0600 files."
  type        = string
  default     = "inline"

  validation {
    condition     = contains(["inline", "ssm"], var.secret_source)
    error_message = "secret_source: \"inline\" or \"ssm\"."
  }
}

variable "secret" {
  description = "Cluster secret (the Raft password is derived from it). Used when secret_source = \"inline\"."
  type        = string
  default     = null
  sensitive   = true

  validation {
    # A plain alphabet keeps the value safe in TOML, an env file and sed alike.
    condition     = var.secret == null || can(regex("^[A-Za-z0-9_.+/=-]{16,}$", var.secret))
    error_message = "secret: at least 16 characters of A-Z a-z 0-9 _ . + / = -."
  }
}

variable "tokens" {
  description = "The three client credentials, one per raftq role (used when secret_source = \"inline\"): producer (submit and read: the load generators), worker (lease and report: the worker hosts), admin (everything: only in the nodes' TOML, for operators). Each host gets only the one it needs. raftq refuses a token under 128 random bits: python -c 'import secrets; print(secrets.token_urlsafe(24))'."
  type = object({
    producer = string
    worker   = string
    admin    = string
  })
  default   = null
  sensitive = true

  validation {
    condition     = var.tokens == null ? true : alltrue([for t in values(var.tokens) : can(regex("^[A-Za-z0-9_.+/=-]{16,}$", t)) && length(t) <= 1024])
    error_message = "tokens: each 16 to 1024 characters of A-Z a-z 0-9 _ . + / = -."
  }
  validation {
    # The same token twice would resolve to one credential's roles on the nodes.
    condition     = var.tokens == null ? true : length(distinct(values(var.tokens))) == 3
    error_message = "tokens: producer, worker and admin must be three different tokens."
  }
}

variable "ssm_parameters" {
  description = "SSM parameter names of the secret and the three tokens, and the region to read them in (secret_source = \"ssm\"). Each host reads only the parameters its own files need (output hosts[*].ssm_parameters)."
  type = object({
    secret         = string
    producer_token = string
    worker_token   = string
    admin_token    = string
    region         = string
  })
  default = null
}

variable "durability" {
  description = "\"fsync\" (acknowledged = on disk on a majority) or \"none\"."
  type        = string
  default     = "fsync"

  validation {
    condition     = contains(["fsync", "none"], var.durability)
    error_message = "durability: \"fsync\" or \"none\"."
  }
}

variable "config_dir" {
  description = "Where the cluster TOML, env files and the locustfile are written."
  type        = string
  default     = "/etc/raftq"
}

variable "data_dir" {
  description = "Node state (journal, dumps): one node-<id> directory below it."
  type        = string
  default     = "/var/lib/raftq"
}

variable "venv_dir" {
  description = "The virtualenv raftq is installed in (its bin/ has raftq and locust)."
  type        = string
  default     = "/opt/raftq/venv"
}

variable "install_commands" {
  description = "runcmd lines that install raftq into venv_dir (e.g. fetch the wheel the deployment shipped, pip install it). Run before any unit starts. Empty when venv_dir is provided by the host."
  type        = list(string)
  default     = []
}

variable "packages" {
  description = "OS packages cloud-init installs first (omitted from user_data when empty: cloud-init rejects `packages: []`)."
  type        = list(string)
  default     = []
}

variable "service_user" {
  description = "The dedicated system user every unit runs as."
  type        = string
  default     = "raftq"
}

variable "nofile_limit" {
  description = "LimitNOFILE of every unit: one fd per client connection (1000+ Locust users) plus journals."
  type        = number
  default     = 65536
}

variable "worker_threads" {
  description = "Jobs one worker host runs at once."
  type        = number
  default     = 4
}

variable "worker_queues" {
  description = "Queues the workers take jobs from."
  type        = string
  default     = "default"
}

variable "locustfile" {
  description = "Content of the locustfile every load generator runs (the repo's loadtest/locustfile.py)."
  type        = string
  default     = ""
}

variable "locust_processes_per_host" {
  description = "Locust worker processes on each load generator (one per core is Locust's advice)."
  type        = number
  default     = 1
}

variable "load_test" {
  description = "Defaults of the on-demand raftq-loadtest unit (override per run in its env file): users, spawn rate, run time, and the SLO gate of loadtest/locustfile.py."
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
