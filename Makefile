# The two commands of the README: `make demo` and `make test`. Each builds its own virtualenv
# (.venv, with a Python >= 3.12 found by scripts/find-python.sh) and installs what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint bench venv rootfs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@set -e; if [ ! -x $(PY) ]; then py=$$(scripts/find-python.sh); echo "using $$py"; $$py -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

# The Debian 12 root filesystem the lab's emulated workers (and kubeadm_node's molecule scenario) run in.
# Needs root and debootstrap; without them the demo still runs, its workers are not joined, and it says so (and
# the tests that boot workers skip, saying why). `make test` builds it first so that they run.
ROOTFS ?= $(CURDIR)/.cache/rootfs/debian12
export AGENTKUBE_ROOTFS_CACHE ?= $(ROOTFS)
rootfs:
	@scripts/system-packages.sh
	@if [ "$$(id -u)" = 0 ] && command -v debootstrap >/dev/null; then \
	  roles/kubeadm_node/molecule/default/build_rootfs.sh $(ROOTFS) >/dev/null \
	    || echo "rootfs: build failed; the demo's workers will not be joined"; \
	else echo "rootfs: needs root and debootstrap; the demo's workers will not be joined"; fi

demo: venv rootfs
	$(VENV)/bin/agentkube demo

lint: venv
	$(VENV)/bin/ruff check agent tests bench plugins
	$(VENV)/bin/lint-imports --config pyproject.toml
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --profile production playbooks roles

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them (--dist loadfile: a
# module's lab fixture serves all its tests); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: lint rootfs
	@scripts/system-packages.sh
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

bench: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m bench

clean:
	rm -rf $(VENV)
