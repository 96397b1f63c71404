"""The supported Kubernetes minor versions, defined once: `kamaji_tcp_min_version` and `kamaji_tcp_max_version` in
roles/kamaji_tcp/defaults/main.yml. Operators move the window there (inventory group_vars, or the keys of the
Fulcrum agent configuration); the playbooks enforce it with the value Ansible resolves. Python reads the role's
defaults for its own default (the `agentkube validate`/`render` commands, the filters when a play outside the role
passes no value), so no second copy of the numbers exists."""

from __future__ import annotations

import functools
import re

import yaml

from agentkube.core.project import project_dir

ROLE_DEFAULTS = "roles/kamaji_tcp/defaults/main.yml"
MIN_VAR, MAX_VAR = "kamaji_tcp_min_version", "kamaji_tcp_max_version"
MINOR_RE = re.compile(r"v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)")  # fullmatch

Minor = tuple[int, int]


def parse_minor(value: str) -> Minor:
    """'v1.33' or '1.33' -> (1, 33)."""
    m = MINOR_RE.fullmatch(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a minor version of the form vMAJOR.MINOR (e.g. v1.33)")
    return int(m["major"]), int(m["minor"])


def minor_str(minor: Minor) -> str:
    return f"v{minor[0]}.{minor[1]}"


@functools.cache
def default_window() -> tuple[Minor, Minor]:
    """(min, max) from the kamaji_tcp role's defaults."""
    path = project_dir() / ROLE_DEFAULTS
    defaults = yaml.safe_load(path.read_text()) or {}
    try:
        return parse_minor(defaults[MIN_VAR]), parse_minor(defaults[MAX_VAR])
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"{path}: {MIN_VAR}/{MAX_VAR} must be set as vMAJOR.MINOR ({e})") from None
