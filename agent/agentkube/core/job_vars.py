"""Maps a Fulcrum job onto the one variable contract the playbooks read (see DEVELOPERS.md).

Pure functions: validation of the job's input and the vars document. Everything in the document came from a
job, from Fulcrum or from an API answer: it is data, written by agentkube.core.untrusted_yaml so that Ansible
never templates it. Vault references are resolved by the agent just before the run, and only where they may
stand: in properties the service type marks `secret` (see `secret_paths`), never in names, ids or
agentInstanceData.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from agentkube.core.jobs import Job
from agentkube.core.naming import ServiceNameError, tenant_name_for
from agentkube.core.tenant_spec import (
    SpecError,
    TenantLimits,
    validate_tenant_spec,
)

SPEC_ACTIONS = ("create", "update")          # params carry the (new) full tenant spec
LIFECYCLE_ACTIONS = ("start", "stop", "delete")  # params are null; the spec is the service's properties
VAULT_PREFIX = "vault://"
# Core's ids are UUIDs (github.com/google/uuid, pkg/properties/uuid.go in fulcrumproject/core): the only ids the
# agent turns into paths and URL segments.
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A service id becomes a label value on the TCP and a tag on every VM: it must be a valid label value.
SAFE_ID_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")

Path_ = tuple[str, ...]  # a property path, e.g. ("credentials", "password")


class JobInputError(ValueError):
    """The job's input is invalid; the message names the field(s). Nothing has been touched."""


def is_core_id(value: Any) -> bool:
    return isinstance(value, str) and UUID_RE.fullmatch(value) is not None


# The version window is the playbooks' to enforce, with the value Ansible resolves for kamaji_tcp_min/max_version
# (role defaults < the Fulcrum agent configuration < inventory group_vars): the agent checks everything else.
_ANY_VERSION = ((0, 0), (999, 999))


def tenant_spec_for(job: Job, limits: TenantLimits | None = None) -> dict[str, Any]:
    """The validated tenant spec (camelCase, defaults filled) for a job of a known action."""
    if job.action in SPEC_ACTIONS:
        source, where = job.params, "params"
        if source is None:
            # an action re-issued through POST /services/{id}/{action} carries no params (Core's DoServiceAction
            # creates the job with nil params): a create retried after a failure works on the service's properties
            source, where = job.service.properties or None, "service.properties"
    else:
        # Lifecycle actions must work on what exists, even if the operator's limits moved since.
        source, where = job.service.properties, "service.properties"
        limits = _UNLIMITED
    if source is None:
        raise JobInputError(f"{where}: the tenant spec is missing")
    try:
        spec = validate_tenant_spec(source, min_minor=_ANY_VERSION[0], max_minor=_ANY_VERSION[1], limits=limits)
    except SpecError as e:
        raise JobInputError("; ".join(f"{where}.{path}: {msg}" for path, msg in e.errors)) from None
    return spec.model_dump(mode="json")


_UNLIMITED = TenantLimits(max_node_pools=10**6, max_workers=10**9, max_cert_sans=10**6, max_labels=10**6,
                          max_properties_bytes=10**9, control_plane_address_ranges=["0.0.0.0/0"])


def check_identity(job: Job) -> str:
    """The tenant's name, once the service's ids and name (which become labels, tags and that name) are checked.
    The job id is checked where it becomes a path or a URL: the Fulcrum client skips jobs whose id is not a UUID,
    the runner checks paths."""
    for field, value in (("service.id", job.service.id), ("service.groupId", job.service.group_id)):
        if (value or field == "service.id") and not SAFE_ID_RE.fullmatch(value):
            raise JobInputError(f"{field}: {value[:80]!r} is not an id (a Kubernetes label value: letters, digits, "
                                "'-', '_', '.', at most 63)")
    try:
        return tenant_name_for(job.service.name, job.service.id, job.service.agent_instance_data)
    except ServiceNameError as e:
        raise JobInputError(f"service.name: {e}") from None


def build_job_vars(job: Job, validate_spec: bool = True, limits: TenantLimits | None = None) -> dict[str, Any]:
    """The vars document for a job. Custom actions (and every action when validate_spec is off) get their raw
    params (the service's properties when the job has none) under `agentkube_params`."""
    tenant = check_identity(job)
    previous = job.service.agent_instance_data or {}
    doc: dict[str, Any] = {
        "agentkube_job": {"id": job.id, "action": job.action},
        "agentkube_service": {"id": job.service.id, "name": job.service.name, "groupId": job.service.group_id},
        "agentkube_tenant_name": tenant,
        "agentkube_previous": previous,
    }
    if validate_spec and (job.action in SPEC_ACTIONS or job.action in LIFECYCLE_ACTIONS):
        doc["agentkube_tenant"] = tenant_spec_for(job, limits)
    else:
        doc["agentkube_params"] = job.params if job.params is not None else job.service.properties
    return doc


# -- vault references ---------------------------------------------------------------------------------------
def secret_paths(property_schema: dict[str, Any] | None, _prefix: Path_ = ()) -> set[Path_]:
    """The paths of the properties a Fulcrum propertySchema/configurationSchema marks `secret` (Core's
    PropertyDefinition.secret), nested object properties included."""
    out: set[Path_] = set()
    for name, definition in ((property_schema or {}).get("properties") or {}).items():
        if not isinstance(definition, dict):
            continue
        path = (*_prefix, str(name))
        if definition.get("secret"):
            out.add(path)
        if definition.get("type") == "object":
            out |= secret_paths(definition, path)
    return out


def job_secret_paths(property_schema: dict[str, Any] | None) -> set[Path_]:
    """Where a vars document may hold vault references: the secret properties of the service type, under the
    job's raw params or its validated spec. Never the names, ids or agentkube_previous."""
    return {(top, *p) for p in secret_paths(property_schema) for top in ("agentkube_params", "agentkube_tenant")}


def _at(data: Any, path: Path_) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ref_at(data: Any, path: Path_) -> str | None:
    """The ref of the `vault://<ref>` value at path, None when there is none."""
    value = _at(data, path)
    if isinstance(value, str) and value.startswith(VAULT_PREFIX) and len(value) > len(VAULT_PREFIX):
        return value[len(VAULT_PREFIX):]
    return None


def vault_refs(data: Any, paths: Iterable[Path_]) -> set[str]:
    """The `vault://<ref>` values (refs without the prefix) standing at the given paths of data."""
    return {ref for path in paths if (ref := _ref_at(data, path)) is not None}


def substitute_vault(data: Any, paths: Iterable[Path_], resolved: dict[str, str]) -> Any:
    """A copy of data with the `vault://<ref>` value at each given path replaced by its resolved value; a
    reference anywhere else stays the literal string it is."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for path in paths:
        ref = _ref_at(out, path)
        if ref not in resolved:
            continue
        node = out
        for key in path[:-1]:
            node[key] = dict(node[key])
            node = node[key]
        node[path[-1]] = resolved[ref]
    return out


def resolve_vault(data: Any, paths: Iterable[Path_], resolve: Callable[[str], str]) -> Any:
    """data with each `vault://<ref>` standing at one of the paths replaced by resolve(ref), every reference
    resolved once; references anywhere else stay literal strings."""
    paths = list(paths)
    return substitute_vault(data, paths, {ref: resolve(ref) for ref in sorted(vault_refs(data, paths))})
