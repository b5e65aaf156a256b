# The README's two commands are `make run` and `make test`; the rest are extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: run test unit bench bench-scale loadtest clean chaos abuse

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

# Start the embedded default: a local 3-node cluster with workers, in the foreground.
# raftq is installed in .venv, which a new shell has not activated: say how first.
run: $(VENV)/.installed
	@echo "raftq is installed in $(abspath $(VENV)): in another shell, run '. $(abspath $(VENV))/bin/activate' to put raftq on PATH (or call $(abspath $(VENV))/bin/raftq)"
	$(VENV)/bin/raftq dev

# Unit, protocol and integration tests (real node processes on loopback).
test: $(VENV)/.installed
	$(PY) -m pytest -q tests

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit tests/protocol

# Fault-injection matrix on network namespaces (root; see docs/fault-testing.md):
# the checker's own tests (injected bugs must be caught), then fault x workload
# runs and the table. CI: make chaos CHAOS_RUNS=1 CHAOS_WORKLOADS=short CHAOS_DURATION=12
CHAOS_FAULTS    ?= all
CHAOS_WORKLOADS ?= short,long
CHAOS_RUNS      ?= 5
CHAOS_DURATION  ?= 15
CHAOS_SEED      ?= 1
chaos: $(VENV)/.installed
	@if [ "$$(id -u)" != 0 ]; then echo "chaos: skipped: the fault suite needs root (namespaces, iptables, tmpfs)"; exit 0; fi; \
	set -e; \
	command -v iptables >/dev/null && command -v faketime >/dev/null && command -v ip >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables faketime); \
	RAFTQ_FAULT=1 $(PY) -m pytest -q tests/fault; \
	$(PY) -m tests.fault.runner --faults $(CHAOS_FAULTS) --workloads $(CHAOS_WORKLOADS) \
		--runs $(CHAOS_RUNS) --duration $(CHAOS_DURATION) --seed $(CHAOS_SEED)

# Abuse suite (see docs/abuse-testing.md): issue 10's attacks against fresh real
# 3-node clusters on loopback, one table row per attack; exits 1 on any violation.
# ABUSE=short (CI, ~5 min) or long; ABUSE_ONLY=name,... runs a subset.
ABUSE      ?= short
ABUSE_ONLY ?=
abuse: $(VENV)/.installed
	$(PY) -m tests.abuse.runner --$(ABUSE) $(if $(ABUSE_ONLY),--only $(ABUSE_ONLY))

# raftq vs Celery and RQ on this machine (installs Debian redis-server and the
# `bench` extra). ROUNDS, JOBS, PRODUCERS, SYSTEMS override the defaults.
bench: $(VENV)/.installed
	$(PIP) install -q -e '.[bench]'
	$(PY) -m loadtest.bench

# The state machine's cost per op with 10k vs 1M jobs held (O(log n) check).
bench-scale: $(VENV)/.installed
	$(PY) -m loadtest.scale

# Locust, headless, against a fresh local cluster: USERS (1000), SPAWN_RATE (200),
# RUN_TIME (60 s), KILL_LEADER_AT (seconds; unset = no kill), CSV (output prefix),
# SLO_P95_MS (1000), SLO_FAIL_RATIO (0.01), SLO_MIN_RPS (100).
loadtest: $(VENV)/.installed
	$(PIP) install -q -e '.[load]'
	$(PY) -m loadtest.run_locust

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Terraform deployment (terraform/; README "Deploy with Terraform"). Need terraform.
# terraform-check: offline: fmt, the render module's terraform test, cloud-init
#   schema on every rendered document, environments/aws validate + terraform test
#   against the published hashicorp/aws schema (schema-only plugin installed in
#   terraform/.tools), checkov. ~3 min.
# terraform-local: the local environment end to end (root): apply, Locust with a
#   leader kill, rolling replacement under load, destroy, nothing left. ~6 min.
# terraform-wheel: dist/raftq-*.whl, the wheel environments/aws ships.
# terraform-aws-smoke: a real AWS account (AWS_REGION, credentials): apply, load test, destroy.
TF_TOOLS := terraform/.tools
.PHONY: terraform-check terraform-local terraform-wheel terraform-aws-smoke
terraform-check: $(VENV)/.installed
	@command -v terraform >/dev/null || { echo "terraform-check: terraform is not installed"; exit 1; }
	@command -v cloud-init >/dev/null && /usr/bin/python3 -c 'import yaml' 2>/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cloud-init python3-yaml)
	PYTHON=$(PYTHON) sh terraform/tools/aws_schema/install.sh $(TF_TOOLS)
	test -x $(TF_TOOLS)/checkov-venv/bin/checkov || \
		(env -u PYTHONPATH $(PYTHON) -m venv $(TF_TOOLS)/checkov-venv && \
		 env -u PYTHONPATH $(TF_TOOLS)/checkov-venv/bin/pip install -q checkov)
	RAFTQ_TERRAFORM_REQUIRED=1 $(PY) -m pytest -q tests/terraform

terraform-local: $(VENV)/.installed
	@command -v terraform >/dev/null || { echo "terraform-local: terraform is not installed"; exit 1; }
	$(PY) -m tests.terraform.local_e2e

terraform-wheel:
	rm -rf dist && $(PYTHON) -m pip wheel -q --no-deps -w dist . && rm -rf build

terraform-aws-smoke:
	terraform/environments/aws/smoke.sh
