"""What the Ansible project declares: the public variables of its roles (the keys of each defaults/main.yml).
The agent accepts operator configuration only for those (agentkube.core.operator_config)."""

from __future__ import annotations

from pathlib import Path

import yaml


def role_variables(project_dir: Path) -> frozenset[str]:
    names: set[str] = set()
    for defaults in sorted(Path(project_dir).glob("roles/*/defaults/main.y*ml")):
        doc = yaml.safe_load(defaults.read_text(encoding="utf-8")) or {}
        if isinstance(doc, dict):
            names.update(str(k) for k in doc)
    return frozenset(names)
