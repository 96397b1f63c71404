"""Reading a live TenantControlPlane's status (Kamaji has no top-level status.conditions).

Readiness is `status.kubernetesResources.version.status` (Unknown, Provisioning, CertificateAuthorityRotating,
Upgrading, Migrating, Ready, NotReady, Sleeping, WriteLimited). Why it is not Ready shows in the conditions of
the control plane's Deployment (`status.kubernetesResources.deployment.conditions`).
"""

from __future__ import annotations

from typing import Any

READY = "Ready"
SLEEPING = "Sleeping"
NO_STATUS = "(no status yet)"
NO_REASON = "no reason reported"


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def version_status(tcp: Any) -> str:
    """`status.kubernetesResources.version.status`, or NO_STATUS when Kamaji has not written it yet."""
    return _get(tcp, "status", "kubernetesResources", "version", "status") or NO_STATUS


def live_version(tcp: Any) -> str:
    """The version the TCP asks for (`spec.kubernetes.version`), '' when there is no TCP."""
    return _get(tcp, "spec", "kubernetes", "version") or ""


def live_replicas(tcp: Any) -> int | None:
    value = _get(tcp, "spec", "controlPlane", "deployment", "replicas")
    return int(value) if value is not None else None


def not_ready_reason(tcp: Any) -> str:
    """'<reason>: <message>' of the first Deployment condition that is not True, else NO_REASON."""
    conditions = _get(tcp, "status", "kubernetesResources", "deployment", "conditions") or []
    for cond in conditions:
        if isinstance(cond, dict) and cond.get("status") != "True":
            parts = [str(p) for p in (cond.get("reason"), cond.get("message")) if p]
            if parts:
                return ": ".join(parts)
    return NO_REASON


def describe(tcp: Any) -> str:
    """One line for an error message: 'last status <status> (reason: <reason>)'."""
    if not tcp:
        return "the TenantControlPlane was not found"
    return f"last status {version_status(tcp)} (reason: {not_ready_reason(tcp)})"


def reached(tcp: Any, wanted: str) -> bool:
    """True when Kamaji reports `wanted` for the TCP's current spec: the status matches, the controller has
    observed the latest generation, and, for Ready, records the version the spec asks for.

    Kamaji (clastix/kamaji controllers/tenantcontrolplane_controller.go) writes status.observedGeneration only
    at the end of a whole reconcile pass, after the status itself; until then a status is the previous
    generation's (e.g. a stale Ready right after a certSAN change). A missing observedGeneration is accepted: Kamaji
    releases before observedGeneration never wrote it. computeStatus (internal/resources/k8s_deployment_resource.go)
    records spec.kubernetes.version in status...version.version whenever it reports Ready or Sleeping, so a Ready
    without that version is not the current spec's."""
    if not tcp or version_status(tcp) != wanted:
        return False
    generation = _get(tcp, "metadata", "generation")
    observed = _get(tcp, "status", "observedGeneration")
    if generation is not None and observed is not None and int(observed) < int(generation):
        return False
    if wanted == READY:
        recorded = _get(tcp, "status", "kubernetesResources", "version", "version")
        if recorded != live_version(tcp):
            return False
    return True
