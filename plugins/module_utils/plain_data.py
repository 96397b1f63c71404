"""Ansible's tagged values (its str/int/dict/list subclasses carrying origin and trust) as plain Python data, for
filters that hand them to code outside Ansible."""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    """Tagged str/int/dict/list -> plain str/int/dict/list, recursively (bools are never subclassed)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value
