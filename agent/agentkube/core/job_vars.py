"""Maps a Fulcrum job onto the one variable contract the playbooks read (see DEVELOPERS.md).

Pure functions: validation of the job's input and the vars document. Vault references are left as they
are here; the agent resolves them just before the run.
"""

from __future__ import annotations

from typing import Any

from agentkube.core.jobs import Job
from agentkube.core.naming import tenant_name
from agentkube.core.tenant_spec import DEFAULT_MAX_MINOR, DEFAULT_MIN_MINOR, SpecError, validate_tenant_spec

SPEC_ACTIONS = ("create", "update")          # params carry the (new) full tenant spec
LIFECYCLE_ACTIONS = ("start", "stop", "delete")  # params are null; the spec is the service's properties
VAULT_PREFIX = "vault://"


class JobInputError(ValueError):
    """The job's input is invalid; the message names the field(s). Nothing has been touched."""


def tenant_spec_for(job: Job, window: tuple[tuple[int, int], tuple[int, int]] | None = None) -> dict[str, Any]:
    """The validated tenant spec (camelCase, defaults filled) for a job of a known action."""
    lo, hi = window or (DEFAULT_MIN_MINOR, DEFAULT_MAX_MINOR)
    if job.action in SPEC_ACTIONS:
        source, where = job.params, "params"
    else:
        # Lifecycle actions must work on what exists, even if the operator's window moved since: no window.
        source, where = job.service.properties, "service.properties"
        lo, hi = (0, 0), (999, 999)
    if source is None:
        raise JobInputError(f"{where}: the tenant spec is missing")
    try:
        spec = validate_tenant_spec(source, min_minor=lo, max_minor=hi)
    except SpecError as e:
        raise JobInputError("; ".join(f"{where}.{path}: {msg}" for path, msg in e.errors)) from None
    return spec.model_dump(mode="json")


def build_job_vars(job: Job, window: tuple[tuple[int, int], tuple[int, int]] | None = None,
                   validate_spec: bool = True) -> dict[str, Any]:
    """The vars document for a job. Custom actions (and every action when validate_spec is off) get their raw
    params (the service's properties when the job has none) under `agentkube_params`."""
    if not job.service.id:
        raise JobInputError("service.id: missing")
    doc: dict[str, Any] = {
        "agentkube_job": {"id": job.id, "action": job.action},
        "agentkube_service": {"id": job.service.id, "name": job.service.name, "groupId": job.service.group_id},
        "agentkube_tenant_name": tenant_name(job.service.name, job.service.id),
        "agentkube_previous": job.service.agent_instance_data or {},
    }
    if validate_spec and (job.action in SPEC_ACTIONS or job.action in LIFECYCLE_ACTIONS):
        doc["agentkube_tenant"] = tenant_spec_for(job, window)
    else:
        doc["agentkube_params"] = job.params if job.params is not None else job.service.properties
    return doc


def vault_refs(data: Any) -> set[str]:
    """Every `vault://<ref>` string inside data (refs without the prefix)."""
    if isinstance(data, str):
        return {data[len(VAULT_PREFIX):]} if data.startswith(VAULT_PREFIX) and len(data) > len(VAULT_PREFIX) else set()
    if isinstance(data, dict):
        return set().union(*(vault_refs(v) for v in data.values())) if data else set()
    if isinstance(data, list):
        return set().union(*(vault_refs(v) for v in data)) if data else set()
    return set()


def substitute_vault(data: Any, resolved: dict[str, str]) -> Any:
    """data with each `vault://<ref>` string replaced by its resolved value."""
    if isinstance(data, str) and data.startswith(VAULT_PREFIX):
        return resolved.get(data[len(VAULT_PREFIX):], data)
    if isinstance(data, dict):
        return {k: substitute_vault(v, resolved) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_vault(v, resolved) for v in data]
    return data
