"""The one derivation of Kubernetes/Proxmox names from a Fulcrum service's identity.

Used by the agent (vars file), by `agentkube render`, and by the playbooks through the
`agentkube_tenant_name` filter (playbooks/filter_plugins), so every layer agrees on a name.
"""

from __future__ import annotations

import hashlib
import re

from agentkube.core.tenant_spec import DNS1123_LABEL

SLUG_MAX = 30  # leaves room for "-<suffix>" and "-<pool(20)>-<index(2)>" inside 63 characters
SUFFIX_LEN = 6


def service_suffix(service_id: str) -> str:
    """A short, stable suffix derived from the service id (hex of its SHA-256)."""
    if not service_id:
        raise ValueError("service id must not be empty")
    return hashlib.sha256(service_id.encode()).hexdigest()[:SUFFIX_LEN]


def slugify(name: str) -> str:
    """Lowercase, non [a-z0-9] runs become '-', trimmed to SLUG_MAX, never empty."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = slug[:SLUG_MAX].rstrip("-")
    return slug or "tenant"


def tenant_name(service_name: str, service_id: str) -> str:
    """DNS-1123 label for the TCP (and the prefix of its workers' names): '<slug>-<suffix>'."""
    name = f"{slugify(service_name)}-{service_suffix(service_id)}"
    assert DNS1123_LABEL.match(name), name
    return name


def node_name(tenant: str, pool: str, index: int) -> str:
    """Worker VM / Kubernetes Node name: '<tenant>-<pool>-<index>'."""
    name = f"{tenant}-{pool}-{index}"
    if len(name) > 63 or not DNS1123_LABEL.match(name):
        raise ValueError(f"node name {name!r} is not a DNS-1123 label")
    return name


def agent_instance_id(namespace: str, tenant: str) -> str:
    return f"{namespace}/{tenant}"
