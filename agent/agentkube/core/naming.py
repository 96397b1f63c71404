"""The one derivation of Kubernetes/Proxmox names from a Fulcrum service's identity.

Used by the agent (vars file), by `agentkube render`, and by the playbooks through the
`agentkube_tenant_name` filters (plugins/filter), so every layer agrees on a name.

A tenant's name is a DNS-1035 label (Kamaji's admission refuses anything else for a TCP:
clastix/kamaji internal/webhook/handlers/tcp_name.go). It is derived once, at create, from the service name and
id, and recorded in agentInstanceData as `tenantName`; later jobs keep the recorded name, so renaming a service
keeps its tenant. A recorded name is accepted only when it carries the service id's suffix.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from agentkube.core.tenant_spec import DNS1123_LABEL

DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")

SLUG_MAX = 30  # leaves room for "-<suffix>" and "-<pool(20)>-<index(2)>" inside 63 characters
SUFFIX_LEN = 6
DIGIT_PREFIX = "t-"  # a slug starting with a digit gets it, so the tenant name is a DNS-1035 label
SERVICE_NAME_MAX = 255
TENANT_NAME_MAX = len(DIGIT_PREFIX) + SLUG_MAX + 1 + SUFFIX_LEN
RECORDED_KEY = "tenantName"  # where agentInstanceData records the tenant's name


class ServiceNameError(ValueError):
    """A service name that cannot become a tenant name."""


def service_suffix(service_id: str) -> str:
    """A short, stable suffix derived from the service id (hex of its SHA-256)."""
    if not service_id:
        raise ValueError("service id must not be empty")
    return hashlib.sha256(service_id.encode()).hexdigest()[:SUFFIX_LEN]


def slugify(name: str) -> str:
    """Lowercase, non [a-z0-9] runs become '-', trimmed to SLUG_MAX, never empty ('tenant' when nothing is
    left, e.g. for a name in another script)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:SLUG_MAX].rstrip("-") or "tenant"


def check_service_name(service_name: Any) -> str:
    """The service name when it can become a tenant name; ServiceNameError saying why otherwise."""
    if not isinstance(service_name, str) or not service_name.strip():
        raise ServiceNameError("must be a non-empty string")
    if len(service_name) > SERVICE_NAME_MAX:
        raise ServiceNameError(f"must be at most {SERVICE_NAME_MAX} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in service_name):
        raise ServiceNameError("must not contain control, format (bidi) or unassigned characters")
    return service_name


def tenant_name(service_name: str, service_id: str) -> str:
    """DNS-1035 label for the TCP (and the prefix of its workers' names): '<slug>-<suffix>'."""
    check_service_name(service_name)
    slug = slugify(service_name)
    if slug[0].isdigit():
        slug = DIGIT_PREFIX + slug
    name = f"{slug}-{service_suffix(service_id)}"
    assert DNS1035_LABEL.fullmatch(name), name
    return name


def tenant_name_belongs(name: Any, service_id: str) -> bool:
    """Whether `name` may be this service's tenant name: a DNS-1035 label, short enough for worker names, ending
    with the service id's suffix."""
    return (isinstance(name, str) and len(name) <= TENANT_NAME_MAX and DNS1035_LABEL.fullmatch(name) is not None
            and bool(service_id) and name.endswith(f"-{service_suffix(service_id)}"))


def tenant_name_for(service_name: str, service_id: str, previous: dict[str, Any] | None = None) -> str:
    """The tenant's name for a job: the one recorded in agentInstanceData when it belongs to this service (a
    renamed service keeps its tenant), else the one derived from the service's current name."""
    recorded = (previous or {}).get(RECORDED_KEY)
    if tenant_name_belongs(recorded, service_id):
        return str(recorded)
    return tenant_name(service_name, service_id)


def node_name(tenant: str, pool: str, index: int) -> str:
    """Worker VM / Kubernetes Node name: '<tenant>-<pool>-<index>'."""
    name = f"{tenant}-{pool}-{index}"
    if len(name) > 63 or not DNS1123_LABEL.fullmatch(name):
        raise ValueError(f"node name {name!r} is not a DNS-1123 label")
    return name


def agent_instance_id(namespace: str, tenant: str) -> str:
    return f"{namespace}/{tenant}"
