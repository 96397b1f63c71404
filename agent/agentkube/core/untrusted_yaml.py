"""Untrusted data as an Ansible vars file: YAML whose root is tagged `!unsafe`, so no string in it is a template.

ansible-core trusts the values of a vars file given with `-e @file` as templates, so a job's service name
`{{ lookup('pipe', ...) }}` would run on the agent host. A string tagged `!unsafe` is never templated (ansible-core's
documented marker: docs "Advanced playbook syntax: Unsafe or raw strings"; with data tagging since 2.19 such a value
carries no TrustedAsTemplate tag). Keys are beneath the tag too: Ansible does not template variable
names, but a key is data as well.

This is the one writer of the files the agent passes to ansible-playbook (job vars and operator vars) and of what
`agentkube render job` prints. Pure: text in, text out.
"""

from __future__ import annotations

from typing import Any

import yaml

UNSAFE_TAG = "!unsafe"


class _UnsafeDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string, so none reads back as another type, and uses no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _quoted_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')


_UnsafeDumper.add_representer(str, _quoted_str)


def dump_untrusted(data: dict[str, Any], header: str = "") -> str:
    """YAML text of a mapping (JSON types only) whose root node is tagged `!unsafe`.

    The tag is on the root: ansible-core's constructor marks everything built beneath an `!unsafe` node as
    untrusted, while a quoted string keeps its type. (`!unsafe` on a scalar re-resolves it as if it were
    plain, so `!unsafe "yes"` would read back as a boolean: ansible/_internal/_yaml/_constructor.py,
    _resolve_and_construct_object.)
    """
    if not isinstance(data, dict):
        raise TypeError("a vars document is a mapping")
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.dump(data, Dumper=_UnsafeDumper, sort_keys=True, allow_unicode=False, width=1 << 20,
                     default_flow_style=False)
    return f"{comment}--- {UNSAFE_TAG}\n{body}"


class _UnsafeLoader(yaml.SafeLoader):
    """Reads what dump_untrusted wrote back into plain Python (tests, `agentkube render` round trips)."""


def _construct_unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise yaml.constructor.ConstructorError(None, None, "only a mapping may be tagged !unsafe here", node.start_mark)


_UnsafeLoader.add_constructor(UNSAFE_TAG, _construct_unsafe)


def load_untrusted(text: str) -> Any:
    return yaml.load(text, Loader=_UnsafeLoader)  # noqa: S506 - a SafeLoader with one extra scalar tag
