"""Where the Ansible project (ansible.cfg, playbooks, roles, templates, plugins) lives: the agentkube.kamaji
collection, installed beside the agent as `ansible_collections/agentkube/kamaji/` (where ansible-core finds
collections on sys.path, as it finds the `ansible` package's). In a checkout its entries are symlinks to the
repository's top-level folders (the collection layout), which the wheel build copies in; code never looks for a
repository root."""

from __future__ import annotations

from pathlib import Path

import agentkube

COLLECTION = "agentkube.kamaji"


def project_dir() -> Path:
    return Path(agentkube.__file__).resolve().parent.parent / "ansible_collections" / "agentkube" / "kamaji"
