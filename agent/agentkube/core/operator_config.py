"""Fulcrum's agent configuration as operator variables for the playbooks.

A Fulcrum admin sets the configuration; the agent passes it to ansible-playbook as extra vars, which beat every
other variable. So only the keys the agent type's configurationSchema declares are accepted (the schema the
product ships: agentkube/data/fulcrum/agent-type.json), each must be a public variable of a role (a key of one
of its defaults/main.yml, never a fact a role sets for itself) and never an `ansible_*` or other reserved name.
Values are checked against the declared type. Everything is data (agentkube.core.untrusted_yaml writes it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,),
}
RESERVED = re.compile(r"(ansible|agentkube|_).*|(hostvars|groups|group_names|inventory_hostname|omit|"
                      r"environment|playbook_dir|role_path|vars)")


class ConfigurationError(ValueError):
    """The agent configuration holds something the agent will not pass on; the message names each key."""


def declared_keys(configuration_schema: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    props = (configuration_schema or {}).get("properties") or {}
    return {str(k): v for k, v in props.items() if isinstance(v, dict)}


def operator_vars(configuration: Any, configuration_schema: dict[str, Any] | None,
                  role_variables: Iterable[str]) -> dict[str, Any]:
    """The configuration's variables, checked; ConfigurationError naming every refused key otherwise."""
    if configuration in (None, {}):
        return {}
    if not isinstance(configuration, dict):
        raise ConfigurationError(f"configuration: must be a mapping, not {type(configuration).__name__}")
    declared = declared_keys(configuration_schema)
    public = set(role_variables)
    problems: list[str] = []
    for key, value in configuration.items():
        where = f"configuration.{key}"
        if not isinstance(key, str) or RESERVED.fullmatch(key):
            problems.append(f"{where}: a reserved name, never accepted")
        elif key not in declared:
            problems.append(f"{where}: not declared in the agent type's configurationSchema")
        elif key not in public:
            problems.append(f"{where}: not a public variable of any role (defaults/main.yml)")
        else:
            wanted = _JSON_TYPES.get(str(declared[key].get("type", "")))
            if wanted and value is not None and (not isinstance(value, wanted)
                                                 or (bool not in wanted and isinstance(value, bool))):
                problems.append(f"{where}: must be of type {declared[key]['type']}")
    if problems:
        raise ConfigurationError("; ".join(problems))
    return dict(configuration)
