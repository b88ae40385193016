# runbooks.incident — developer entry points. Run as root on Debian 12 / Ubuntu (the sandbox installs packages
# and starts dockerd). The two commands a newcomer needs:
#   make demo   build the sandbox, run a real incident playbook against it, print what happened
#   make test   the whole suite, exactly what CI runs (.ci/run)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)
export RUNBOOKS_SANDBOX_DIR := $(CURDIR)/.sandbox
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 0
SANDBOX := $(BIN)/python tests/sandbox/sandbox.py
# Each phase records its wall time (.build/timings/current.jsonl); `make test` ends with the table (tests/timings.py).
# The venv's python: a pyenv shim would put its own bin first on the PATH of the command it times.
TIMED := $(BIN)/python tests/timings.py run
COLLECTION_LINK := .build/collections/ansible_collections/runbooks/incident
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
# Molecule scenarios, longest first: with MOLECULE_JOBS lanes, the short ones fill the gaps at the end.
SCENARIOS ?= incidents offsite host_died secret_rotation certificates db_restore whatsapp_mcp audit_integrity
# Scenarios at a time. Each has hosts and a network of its own (molecule/instances.py), so they run side by side. A
# scenario keeps about one core of two busy (Ansible waits on its hosts half the time): two at once finish together in
# about 65% of the time they take one after the other (docs/testing.md).
MOLECULE_JOBS ?= 2
DEMO_INCIDENT ?= DEMO-$(shell date -u +%Y%m%dT%H%M%S)

.PHONY: help
help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

$(BIN)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) tests/timings.py run venv -- $(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $@

.PHONY: venv
venv: $(BIN)/.installed ## the pinned Python toolchain in .venv

.PHONY: collection
collection: ## link this checkout as runbooks.incident for ansible (.build/collections)
	mkdir -p $(dir $(COLLECTION_LINK))
	ln -sfn $(CURDIR) $(COLLECTION_LINK)

.PHONY: deps
deps: venv ## host packages (docker.io, postgresql, certbot, pebble, age, ...) and a running dockerd
	$(TIMED) "apt packages, dockerd" -- $(SANDBOX) deps

.PHONY: sandbox
sandbox: deps collection ## build the sandbox images and the converged app host (cached by content hash)
	$(TIMED) "sandbox images" -- $(SANDBOX) build
	$(TIMED) "converged app host" -- $(SANDBOX) converge

.PHONY: demo
# The host-died incident (docs/runbooks/rebootstrap.md) from scratch: `app` serves seeded data with its backups shipped
# off-host and its DNS name on it; it dies; rebootstrap.yml brings the service back on the bare host `spare`.
demo: sandbox ## the host-died incident: app serves data, backs up off-host, dies; rebootstrap.yml recovers it on spare
	$(SANDBOX) destroy spare
	$(SANDBOX) up
	ansible-playbook -i inventories/sandbox tests/sandbox/demo_before.yml
	$(SANDBOX) destroy app
	ansible-playbook -i inventories/sandbox playbooks/rebootstrap.yml -e target=spare -e incident_id=$(DEMO_INCIDENT)
	ansible-playbook -i inventories/sandbox tests/sandbox/report.yml -e target=spare -e incident_id=$(DEMO_INCIDENT)

.PHONY: demo-down
demo-down: venv ## remove the sandbox hosts
	$(SANDBOX) down

.PHONY: lint
lint: venv collection ## ansible-lint (production profile) and yamllint
	$(TIMED) lint -- ansible-lint --profile production

.PHONY: sanity
sanity: venv ## ansible-test sanity on a copy of the collection in an ansible_collections tree
	$(TIMED) sanity -- tests/ansible_test.sh sanity

.PHONY: unit
unit: venv collection ## pytest on both cores: module logic and modules against real PostgreSQL, sops+age, files
	$(TIMED) unit -- pytest -q -n 2 tests/unit

.PHONY: test-shared-data
test-shared-data: venv collection ## restores of third-party dumps from ../shared/data (beside a development tree; not in a clone)
	$(TIMED) "unit, shared data" -- pytest -q -m shared_data tests/unit

# Each scenario's output shows whole when it ends (--output-sync); one that fails does not stop the others
# (--keep-going): a run reports every failing scenario.
.PHONY: molecule
molecule: sandbox ## molecule scenarios on sandbox host containers (SCENARIOS="...", MOLECULE_JOBS=2)
	$(MAKE) --no-print-directory -j$(MOLECULE_JOBS) --keep-going --output-sync=target $(addprefix molecule-,$(SCENARIOS))

.PHONY: $(addprefix molecule-,$(SCENARIOS))
$(addprefix molecule-,$(SCENARIOS)): molecule-%:
	$(TIMED) "molecule $*" -- molecule test -s $*

.PHONY: test-fast
test-fast: lint unit ## the quick subset for development: lint and pytest

.PHONY: checks
checks: ## lint, sanity and unit, one after the other, each run even when one before it failed
	$(MAKE) --no-print-directory -j1 --keep-going lint sanity unit

.PHONY: test
# Two lanes: the checks need both cores in bursts; the image builds wait on I/O and the scenarios leave part of the
# cores idle (Ansible waits on its hosts), so the sandbox and then the scenarios (MOLECULE_JOBS at a time) run beside
# them. A failing lane does not stop the other: make lets it end, then fails.
test: ## the whole suite (what CI runs): the checks beside the sandbox and molecule; ends with the timings
	@$(PYTHON) tests/timings.py start
	@trap '$(PYTHON) tests/timings.py report' EXIT; \
	  $(MAKE) --no-print-directory deps && \
	  $(MAKE) --no-print-directory -j2 --keep-going --output-sync=target checks molecule

.PHONY: docs
docs: venv ## each role's README.md from its meta/argument_specs.yml (tests/role_docs.py; a unit test checks for drift)
	$(BIN)/python tests/role_docs.py

.PHONY: changelog
changelog: venv ## lint changelogs/fragments and render CHANGELOG.rst from them (antsibull-changelog; a unit test checks it)
	$(BIN)/python tests/changelog.py

.PHONY: build
build: venv ## the collection tarball (ansible-galaxy collection build)
	mkdir -p .build/dist
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist .

.PHONY: ee
ee: build ## the execution environment's build context, offline (.build/ee/context; docs/awx.md builds the image)
	mkdir -p .build/ee
	cp .build/dist/runbooks-incident-$(VERSION).tar.gz .build/ee/runbooks-incident.tar.gz
	$(BIN)/ansible-builder create --file execution-environment.yml --context .build/ee/context --output-filename Containerfile

.PHONY: clean
clean: ## remove sandbox hosts and generated files (keeps .venv and cached images)
	-$(SANDBOX) down
	rm -rf .build tests/output
