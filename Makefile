# mcpops.deploy: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export MCPOPS_LAB_DIR ?= $(CURDIR)/.lab
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PY_COLORS := 0
export ANSIBLE_FORCE_COLOR := 0
MOLECULE_DISTRO ?= debian12
export MOLECULE_DISTRO

.PHONY: help setup demo demo-clean test lint unit collection molecule molecule-default molecule-cluster molecule-alternative molecule-servers molecule-one-host molecule-debian13 bench bench-converge bench-edge bench-scaleout clean

help:
	@echo "make demo     deploy the whole stack into one local Debian 12 container and call it over MCP"
	@echo "make test     lint, unit tests, collection build/install test, molecule scenarios default, cluster, alternative and servers"
	@echo "make setup    prepare this machine (venv, docker engine, base images); run by demo and test"
	@echo "make molecule-debian13   the default scenario on Debian 13"
	@echo "make molecule-alternative   the paths no other scenario takes (one Debian 13 host)"
	@echo "make molecule-servers   three MCP servers (reference, PyPI stdio, npm stdio) on one host behind one nginx"
	@echo "make bench    the server benchmark (bench/), printed as ratios"
	@echo "make bench-converge   converge speed of site.yml against a no-Ansible floor"
	@echo "make bench-edge       what nginx adds: proxy overhead, streaming delay, 1000 open streams (one-host lab)"
	@echo "make bench-scaleout   throughput through the cluster's lb with one app host, then two"

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

demo-clean:
	-docker rm -f mcpops-demo

lint: setup
	yamllint -s .
	ansible-lint
	ruff check .
	ruff format --check .
	python scripts/check_argspecs.py

unit: setup
	pytest -q server/tests tests/unit

collection: setup
	pytest -q tests/collection

# alternative and servers have one host and a network each: they run side by side.
molecule: molecule-default molecule-cluster molecule-one-host

molecule-default: setup
	molecule test -s default

# Five containers (lb, app1, app2, data, ops): TLS between hosts, firewalls from the groups, log
# shipping and monitoring.
molecule-cluster: setup
	molecule test -s cluster

# One Debian 13 host along the paths no other scenario takes: nginx with your certificate files,
# Redis on its unix socket only, instances serving TLS themselves, stateless, no firewall, and a
# package index with a CA of its own served from the controller during the test (about 5 min).
ALTERNATIVE_DISTRO ?= debian13
molecule-alternative: setup
	MOLECULE_DISTRO=$(ALTERNATIVE_DISTRO) molecule test -s alternative

# One Debian 12 host running three MCP servers behind one nginx (mcp_server_servers): the
# reference toolset, a stdio server from PyPI and one from npm, each bridged, sandboxed and routed
# at /<name>/mcp (about 8 min).
molecule-servers: setup
	molecule test -s servers

molecule-one-host: setup
	scripts/molecule-parallel alternative servers

molecule-debian13:
	$(MAKE) molecule-default MOLECULE_DISTRO=debian13

test: lint unit collection molecule
	@echo "make test: all gates passed"

bench: setup
	python bench/server_bench.py --rounds 6

bench-converge: setup
	python bench/converge.py --reruns 3

# The edge benchmarks on a one-host lab of their own (about 10 min); docs/performance.md.
bench-edge: setup
	bench/lab.sh up
	python bench/proxy_bench.py
	python bench/stream_bench.py
	docker exec $${MCPOPS_BENCH_LAB:-mcpops-bench-lab} systemctl restart 'mcpops-server@*'
	python bench/open_streams.py
	bench/lab.sh down

# Scale-out through the cluster scenario's load balancer (after `molecule converge -s cluster`).
bench-scaleout: setup
	python bench/scaleout.py --lb mcpops-lb

clean: demo-clean
	rm -rf .cache .lab
