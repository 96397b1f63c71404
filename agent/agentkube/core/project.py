"""Where the Ansible project (ansible.cfg, playbooks, roles, templates, modules) lives: inside the installed
distribution, as `agentkube/project/`. In a checkout those entries are symlinks to the repository's top-level
folders (the collection layout), which the wheel build copies in; code never looks for a repository root."""

from __future__ import annotations

from pathlib import Path

import agentkube


def project_dir() -> Path:
    return Path(agentkube.__file__).resolve().parent / "project"
