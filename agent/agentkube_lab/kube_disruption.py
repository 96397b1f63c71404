"""PodDisruptionBudgets as a cluster enforces them: the disruption controller's status (currentHealthy,
desiredHealthy, expectedPods, disruptionsAllowed, disruptedPods, the DisruptionAllowed condition) recomputed on
every change of a pod, a budget or a controller, and the eviction subresource (POST pods/<name>/eviction) that
refuses with 429 what a budget does not allow. Transcribed from kubernetes/kubernetes:
pkg/controller/disruption/disruption.go (the controller), pkg/registry/core/pod/storage/eviction.go (the
eviction REST handler), staging/src/k8s.io/component-helpers/apps/poddisruptionbudget/helpers.go (the
condition), pkg/apis/policy (types), pkg/api/v1/pod/util.go (IsPodReady). The real controller lags; this one
reconciles synchronously on the writer's thread."""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
from typing import Any

from agentkube_lab.kube_resources import ResourceType
from agentkube_lab.kube_selectors import label_selector_requirements, labels_match
from agentkube_lab.kube_store import ApiError, ObjectStore, bad_request, now_rfc3339

POLICY_V1 = "policy/v1"
# pkg/controller/disruption/disruption.go: DeletionTimeout
DELETION_TIMEOUT = dt.timedelta(minutes=2)
# pkg/registry/core/pod/storage/eviction.go: MaxDisruptedPodSize
MAX_DISRUPTED_POD_SIZE = 2000
# pkg/apis/policy/types.go
DISRUPTION_BUDGET_CAUSE = "DisruptionBudget"
DISRUPTION_ALLOWED_CONDITION = "DisruptionAllowed"
EVICTION_REFUSED = "Cannot evict pod as it would violate the pod's disruption budget."


def is_pod_ready(pod: dict) -> bool:
    """pkg/api/v1/pod/util.go (IsPodReady): the Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def scaled_value(value: Any, total: int) -> int:
    """staging/src/k8s.io/apimachinery/pkg/util/intstr/intstr.go (GetScaledValueFromIntOrPercent, roundUp):
    an int is itself, "N%" is ceil(N * total / 100); anything else is an error."""
    if isinstance(value, bool):
        raise ValueError(f"invalid value for IntOrString: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d+%", value):
        return math.ceil(int(value[:-1]) * total / 100)
    raise ValueError(f'invalid value for IntOrString: invalid value "{value}"')


def _controller_of(obj: dict) -> dict | None:
    """staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/controller_ref.go (GetControllerOf)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") is True:
            return ref
    return None


class DisruptionController:
    """Keeps every PodDisruptionBudget's status current in one store (a listener on the store)."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self.pdbs = store.catalog.by_kind(POLICY_V1, "PodDisruptionBudget")
        self.pods = store.catalog.by_kind("v1", "Pod")
        self._local = threading.local()
        if self.pdbs is not None and self.pods is not None:
            store.listeners.append(self._on_change)

    # ---------------------------------------------------------------- reconcile
    def _on_change(self, event: str, rtype: ResourceType, obj: dict) -> None:
        if rtype.kind not in ("Pod", "PodDisruptionBudget", "ReplicaSet", "Deployment", "StatefulSet",
                              "ReplicationController"):
            return
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            namespace = (obj.get("metadata") or {}).get("namespace")
            for pdb in self.store.list(self.pdbs, namespace)[0]:
                self.sync(pdb)
        finally:
            self._local.busy = False

    def _pods_for(self, pdb: dict) -> list[dict]:
        """getPodsForPdb: the budget's namespace, its selector (an empty selector selects every pod there,
        a missing or invalid one none)."""
        reqs = label_selector_requirements((pdb.get("spec") or {}).get("selector"))
        if reqs is None:
            return []
        namespace = pdb["metadata"].get("namespace")
        return [p for p in self.store.list(self.pods, namespace)[0]
                if labels_match(reqs, (p.get("metadata") or {}).get("labels"))]

    def _scale_of(self, ref: dict, namespace: str) -> int | None:
        """The finders (getPodReplicationController, getPodDeployment, getPodReplicaSet, getPodStatefulSet,
        getScaleController): the replicas of the pod's controller; a ReplicaSet controlled by a Deployment
        counts the Deployment's. None when no such controller exists."""
        api_version, kind, uid = ref.get("apiVersion", ""), ref.get("kind", ""), ref.get("uid")
        rtype = self.store.catalog.by_kind(api_version, kind)
        if rtype is None:
            return None
        owner = self.store.find(rtype, namespace, ref.get("name", ""))
        if owner is None or (uid and owner["metadata"].get("uid") != uid):
            return None
        if kind == "ReplicaSet":
            parent = _controller_of(owner)
            if parent is not None and parent.get("kind") == "Deployment":
                return self._scale_of(parent, namespace)
        replicas = (owner.get("spec") or {}).get("replicas")
        return replicas if isinstance(replicas, int) else 1

    def _expected_scale(self, pods: list[dict], namespace: str) -> int:
        """getExpectedScale: the sum of the scales of the pods' controllers; pods without a controller are
        left out; a controller that cannot be found is an error."""
        scales: dict[str, int] = {}
        for pod in pods:
            ref = _controller_of(pod)
            if ref is None:
                continue
            key = ref.get("uid") or f"{ref.get('kind')}/{ref.get('name')}"
            if key in scales:
                continue
            scale = self._scale_of(ref, namespace)
            if scale is None:
                raise ValueError(f'found no controllers for pod "{pod["metadata"]["name"]}"')
            scales[key] = scale
        return sum(scales.values())

    def _expected_and_desired(self, pdb: dict, pods: list[dict]) -> tuple[int, int]:
        """getExpectedPodCount."""
        spec, namespace = pdb.get("spec") or {}, pdb["metadata"].get("namespace", "")
        if spec.get("maxUnavailable") is not None:
            expected = self._expected_scale(pods, namespace)
            return expected, max(expected - scaled_value(spec["maxUnavailable"], expected), 0)
        min_available = spec.get("minAvailable")
        if isinstance(min_available, int) and not isinstance(min_available, bool):
            return len(pods), min_available
        if isinstance(min_available, str):
            expected = self._expected_scale(pods, namespace)
            return expected, scaled_value(min_available, expected)
        return 0, 0

    def sync(self, pdb: dict) -> None:
        """trySync / updatePdbStatus, or failSafe when the budget cannot be computed."""
        now = dt.datetime.now(dt.UTC)
        status = dict(pdb.get("status") or {})
        try:
            pods = self._pods_for(pdb)
            expected, desired = self._expected_and_desired(pdb, pods)
        except ValueError as e:
            status["disruptionsAllowed"] = 0
            status["conditions"] = self._condition(status, False, "SyncFailed", str(e),
                                                   status.get("observedGeneration", 0))
            self._write(pdb, status)
            return
        disrupted = self._disrupted_map(pods, status.get("disruptedPods") or {}, now)
        healthy = sum(1 for p in pods if not p["metadata"].get("deletionTimestamp")
                      and not self._recently_disrupted(p, disrupted, now) and is_pod_ready(p))
        allowed = healthy - desired
        if expected <= 0 or allowed <= 0:
            allowed = 0
        new = {"currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected,
               "disruptionsAllowed": allowed, "observedGeneration": pdb["metadata"].get("generation", 1)}
        if disrupted:
            new["disruptedPods"] = disrupted
        new["conditions"] = self._allowed_condition(status, new)
        self._write(pdb, new)

    @staticmethod
    def _recently_disrupted(pod: dict, disrupted: dict, now: dt.datetime) -> bool:
        at = _parse_time(disrupted.get(pod["metadata"]["name"]))
        return at is not None and at + DELETION_TIMEOUT > now

    @staticmethod
    def _disrupted_map(pods: list[dict], disrupted: dict, now: dt.datetime) -> dict:
        """buildDisruptedPodMap: entries for pods that still exist, are not being deleted and were evicted
        less than DeletionTimeout ago."""
        names = {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}
        kept = {}
        for name, when in disrupted.items():
            at = _parse_time(when)
            if name in names and at is not None and at + DELETION_TIMEOUT > now:
                kept[name] = when
        return kept

    @classmethod
    def _allowed_condition(cls, old: dict, new: dict) -> list[dict]:
        """helpers.go (UpdateDisruptionAllowedCondition): True/SufficientPods when disruptions are allowed,
        else False/InsufficientPods."""
        if new["disruptionsAllowed"] > 0:
            return cls._condition(old, True, "SufficientPods", "", new["observedGeneration"])
        return cls._condition(old, False, "InsufficientPods", "", new["observedGeneration"])

    @staticmethod
    def _condition(old: dict, ok: bool, reason: str, message: str, generation: int) -> list[dict]:
        """apimachinery meta.SetStatusCondition: lastTransitionTime moves only when the status changes."""
        status = "True" if ok else "False"
        previous = next((c for c in old.get("conditions") or [] if c.get("type") == DISRUPTION_ALLOWED_CONDITION),
                        None)
        changed = previous is None or previous.get("status") != status
        return [{"type": DISRUPTION_ALLOWED_CONDITION, "status": status, "reason": reason, "message": message,
                 "observedGeneration": generation,
                 "lastTransitionTime": now_rfc3339() if changed else previous.get("lastTransitionTime")}]

    def _write(self, pdb: dict, status: dict) -> None:
        if pdb.get("status") == status:
            return
        new = dict(pdb, status=status)
        meta = pdb["metadata"]
        self.store.replace(self.pdbs, meta.get("namespace"), meta["name"], new, subresource="status")


# ---------------------------------------------------------------- the eviction subresource
def _too_many_requests(message: str, cause: str, retry_after: int) -> ApiError:
    """apimachinery errors.NewTooManyRequests with the DisruptionBudget cause eviction.go appends."""
    details: dict = {"causes": [{"reason": DISRUPTION_BUDGET_CAUSE, "message": cause}]}
    if retry_after:
        details["retryAfterSeconds"] = retry_after
    return ApiError(429, "TooManyRequests", message, details)


def _forbidden_pdb(name: str, why: str) -> ApiError:
    return ApiError(403, "Forbidden", f'poddisruptionbudgets.policy "{name}" is forbidden: {why}',
                    {"name": name, "group": "policy", "kind": "poddisruptionbudgets"})


def _can_ignore_pdb(pod: dict) -> bool:
    """eviction.go (canIgnorePDB): terminal or pending pods, or pods already being deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed", "Pending") or bool(pod["metadata"].get("deletionTimestamp"))


def _matching_pdbs(store: ObjectStore, pdbs: ResourceType, pod: dict) -> list[dict]:
    """eviction.go (getPodDisruptionBudgets): budgets of the pod's namespace whose selector is valid, not
    empty, and matches the pod's labels."""
    found = []
    for pdb in store.list(pdbs, pod["metadata"].get("namespace"))[0]:
        reqs = label_selector_requirements((pdb.get("spec") or {}).get("selector"))
        if not reqs:
            continue
        if labels_match(reqs, pod["metadata"].get("labels")):
            found.append(pdb)
    return found


def evict(store: ObjectStore, pods: ResourceType, namespace: str | None, name: str, body: Any,
          dry_run: bool = False) -> tuple[int, dict]:
    """POST pods/<name>/eviction, as pkg/registry/core/pod/storage/eviction.go (EvictionREST.Create).
    Returns (HTTP code, body); refusals raise ApiError."""
    if isinstance(body, dict) and "kind" not in body:
        # the apiserver defaults the kind from the endpoint; kubernetes.core.k8s_drain sends none
        body = {"apiVersion": POLICY_V1, "kind": "Eviction", **body}
    if not isinstance(body, dict) or body.get("kind") != "Eviction" or \
            body.get("apiVersion") not in (POLICY_V1, "policy/v1beta1"):
        raise bad_request("the body must be a policy/v1 (or v1beta1) Eviction")
    if (body.get("metadata") or {}).get("name") != name:
        raise bad_request("name in URL does not match name in Eviction object")
    options = body.get("deleteOptions") or {}
    if not isinstance(options, dict):
        raise bad_request("deleteOptions must be an object")
    options_dry_run = options.get("dryRun") or []
    dry_run = dry_run or "All" in options_dry_run
    grace = options.get("gracePeriodSeconds")
    pdbs = store.catalog.by_kind(POLICY_V1, "PodDisruptionBudget")
    with store.lock:
        pod = store.get(pods, namespace, name)

        def delete() -> tuple[int, dict]:
            store.delete(pods, namespace, name, dry_run, options.get("preconditions"),
                         grace_period_seconds=grace, propagation_policy=options.get("propagationPolicy"))
            return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

        if _can_ignore_pdb(pod) or pdbs is None:
            return delete()
        matching = _matching_pdbs(store, pdbs, pod)
        if len(matching) > 1:
            return 500, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 500,
                         "message": "This pod has more than one PodDisruptionBudget, which the eviction "
                                    "subresource does not support."}
        if not matching:
            return delete()
        pdb = matching[0]
        status = pdb.get("status") or {}
        current, desired = status.get("currentHealthy", 0), status.get("desiredHealthy", 0)
        if not is_pod_ready(pod) and current >= desired and desired > 0:
            return delete()  # an unready pod does not count towards healthy: no budget is spent
        _check_and_decrement(store, pdbs, pdb, pod["metadata"]["name"], dry_run)
        return delete()


def _check_and_decrement(store: ObjectStore, pdbs: ResourceType, pdb: dict, pod_name: str, dry_run: bool) -> None:
    """eviction.go (checkAndDecrement)."""
    name, status = pdb["metadata"]["name"], dict(pdb.get("status") or {})
    if status.get("observedGeneration", 0) < pdb["metadata"].get("generation", 1):
        raise _too_many_requests(EVICTION_REFUSED, f"The disruption budget {name} is still being processed by "
                                 "the server.", 10)
    allowed = status.get("disruptionsAllowed", 0)
    if allowed < 0:
        raise _forbidden_pdb(name, "pdb disruptions allowed is negative")
    if len(status.get("disruptedPods") or {}) > MAX_DISRUPTED_POD_SIZE:
        raise _forbidden_pdb(name, "DisruptedPods map too big - too many evictions not confirmed by PDB "
                                   "controller")
    if allowed == 0:
        raise _too_many_requests(EVICTION_REFUSED, f"The disruption budget {name} needs "
                                 f"{status.get('desiredHealthy', 0)} healthy pods and has "
                                 f"{status.get('currentHealthy', 0)} currently", 0)
    if dry_run:
        return
    status["disruptionsAllowed"] = allowed - 1
    status["disruptedPods"] = {**(status.get("disruptedPods") or {}), pod_name: now_rfc3339()}
    if status["disruptionsAllowed"] == 0:
        status["conditions"] = DisruptionController._condition(status, False, "InsufficientPods", "",
                                                               status.get("observedGeneration", 0))
    meta = pdb["metadata"]
    store.replace(pdbs, meta.get("namespace"), meta["name"], dict(pdb, status=status), subresource="status")
