# The two commands of the README: `make demo` and `make test`. Each builds its own virtualenv
# (.venv, with a Python >= 3.12 found by scripts/find-python.sh) and installs what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint unit integration contract molecule bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@set -e; if [ ! -x $(PY) ]; then py=$$(scripts/find-python.sh); echo "using $$py"; $$py -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

demo: venv
	$(VENV)/bin/agentkube demo

lint: venv
	$(VENV)/bin/ruff check agent tests bench library module_utils playbooks/filter_plugins
	$(VENV)/bin/lint-imports --config pyproject.toml
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --profile production playbooks roles

test: lint
	scripts/system-packages.sh
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -ra

bench: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m bench

clean:
	rm -rf $(VENV)
