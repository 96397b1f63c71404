"""The generic object store behind every lab API server (the Kamaji parent and each tenant): objects keyed by
type, namespace and name, with the metadata bookkeeping a real apiserver does (uid, a cluster-wide
resourceVersion, generation, creationTimestamp, finalizers and deletionTimestamp), status-subresource rules,
admission hooks, label/field selectors and real `kind: Status` errors."""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import datetime as dt
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentkube_lab.kube_patch import PatchError, apply_patch, json_patch, merge_patch, strategic_merge_patch
from agentkube_lab.kube_resources import ResourceCatalog, ResourceType
from agentkube_lab.kube_selectors import SelectorError, matches, parse_field_selector, parse_label_selector

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An API failure carrying the `kind: Status` body a real apiserver sends."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def qualified(rtype: ResourceType) -> str:
    return f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(rtype)} "{name}" not found',
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def invalid(rtype: ResourceType, name: str, causes: list[dict]) -> ApiError:
    """422 Invalid; causes are {"reason", "message", "field"} like the apiserver's field errors."""
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    if len(causes) > 1:
        summary = f"[{summary}]"
    group_kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    return ApiError(422, "Invalid", f'{group_kind} "{name}" is invalid: {summary}',
                    {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass
class AdmissionRequest:
    """What an admission hook sees; hooks may mutate `obj` or raise ApiError to deny."""

    operation: str  # CREATE, UPDATE, DELETE
    rtype: ResourceType
    obj: dict | None
    old: dict | None
    subresource: str = ""


AdmissionHook = Callable[[AdmissionRequest], None]
# listeners get (event, rtype, obj) with event in ADDED, MODIFIED, DELETED; called with the store lock held,
# so they must only record or signal, never call back into the store from another thread and wait.
Listener = Callable[[str, ResourceType, dict], None]


class ObjectStore:
    def __init__(self, catalog: ResourceCatalog):
        self.catalog = catalog
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
        self._rv = 0
        self.admission_hooks: list[AdmissionHook] = []
        self.listeners: list[Listener] = []

    # ---------------------------------------------------------------- bookkeeping
    @property
    def lock(self) -> threading.RLock:
        """The store's re-entrant lock: hold it to read and write as one step (the eviction handler does)."""
        return self._lock

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _bucket(self, rtype: ResourceType) -> dict[tuple[str, str], dict]:
        return self._objects.setdefault((rtype.group, rtype.plural), {})

    def _key(self, rtype: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        return (namespace or "") if rtype.namespaced else "", name

    def _notify(self, event: str, rtype: ResourceType, obj: dict) -> None:
        for listener in self.listeners:
            listener(event, rtype, obj)

    def _admit(self, request: AdmissionRequest) -> None:
        for hook in self.admission_hooks:
            hook(request)

    def resolve(self, api_version: str, kind: str) -> ResourceType:
        rtype = self.catalog.by_kind(api_version, kind)
        if rtype is None:
            raise bad_request(f"no kind {kind!r} is registered for version {api_version!r}")
        return rtype

    def _require_namespace(self, rtype: ResourceType, namespace: str | None, creating: bool) -> None:
        if not rtype.namespaced:
            return
        if not namespace:
            raise bad_request("the server could not find the requested resource: a namespace is required")
        ns_type = self.catalog.by_kind("v1", "Namespace")
        ns = self._bucket(ns_type).get(("", namespace)) if ns_type else None
        if ns is None:
            raise not_found(ns_type, namespace) if ns_type else bad_request(f"unknown namespace {namespace}")
        if creating and ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden",
                           f"{rtype.plural} is forbidden: unable to create new content in namespace "
                           f"{namespace} because it is being terminated",
                           {"name": "", "group": rtype.group, "kind": rtype.plural})

    # ---------------------------------------------------------------- reads
    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        with self._lock:
            obj = self._bucket(rtype).get(self._key(rtype, namespace, name))
            if obj is None:
                raise not_found(rtype, name)
            return copy.deepcopy(obj)

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> dict | None:
        try:
            return self.get(rtype, namespace, name)
        except ApiError:
            return None

    def list(self, rtype: ResourceType, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict], str]:
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector)
        except SelectorError as e:
            raise bad_request(str(e)) from e
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._bucket(rtype).items())
                if (not namespace or not rtype.namespaced or ns == namespace) and matches(obj, labels, fields)
            ]
            return items, str(self._rv)

    # ---------------------------------------------------------------- writes
    def create(self, rtype: ResourceType, namespace: str | None, body: dict, dry_run: bool = False) -> dict:
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        obj = copy.deepcopy(body)
        self._check_type(rtype, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        namespace = self._check_namespace_field(rtype, namespace, meta)
        with self._lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            name = meta.get("name") or ""
            self._check_name(rtype, name)
            self._require_namespace(rtype, namespace, creating=True)
            if self._key(rtype, namespace, name) in self._bucket(rtype):
                raise ApiError(409, "AlreadyExists", f'{qualified(rtype)} "{name}" already exists',
                               {"name": name, "group": rtype.group, "kind": rtype.plural})
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
                meta.pop(field, None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            if rtype.custom and "status" in rtype.subresources:
                obj.pop("status", None)
            if rtype.kind == "Namespace":
                obj.setdefault("spec", {"finalizers": ["kubernetes"]})
                obj["status"] = {"phase": "Active"}
            _default_and_convert(rtype, obj)
            self._admit(AdmissionRequest("CREATE", rtype, obj, None))
            self._check_name(rtype, obj["metadata"].get("name") or "")
            if dry_run:
                return obj
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._bucket(rtype)[self._key(rtype, namespace, name)] = obj
            self._notify("ADDED", rtype, obj)
            return copy.deepcopy(obj)

    def replace(self, rtype: ResourceType, namespace: str | None, name: str, body: dict,
                subresource: str = "", dry_run: bool = False) -> dict:
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format")
        obj = copy.deepcopy(body)
        self._check_type(rtype, obj)
        meta = obj.setdefault("metadata", {})
        namespace = self._check_namespace_field(rtype, namespace, meta)
        if meta.get("name") not in (None, name):
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the "
                              f"URL ({name})")
        with self._lock:
            old = self._bucket(rtype).get(self._key(rtype, namespace, name))
            if old is None:
                if rtype.allow_create_on_update:  # store.go Update: the create flow, for a strategy that allows it
                    meta["name"] = name
                    meta.pop("resourceVersion", None)
                    return self.create(rtype, namespace, obj, dry_run=dry_run)
                raise not_found(rtype, name)
            rv = meta.get("resourceVersion")
            if not rv and not rtype.allow_unconditional_update:
                # staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go, Update: no resourceVersion
                # and a strategy without AllowUnconditionalUpdate: Invalid, with the resource as the kind
                group_resource = qualified(rtype)
                raise ApiError(422, "Invalid",
                               f'{group_resource} "{name}" is invalid: metadata.resourceVersion: Invalid value: '
                               "0x0: must be specified for an update",
                               {"name": name, "group": rtype.group, "kind": rtype.plural, "causes": [{
                                   "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                                   "message": "Invalid value: 0x0: must be specified for an update"}]})
            if rv and rv != old["metadata"]["resourceVersion"]:
                # store.go Update: NewConflict(qualifiedResource, name, OptimisticLockErrorMsg)
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {qualified(rtype)} "{name}": the object has '
                               "been modified; please apply your changes to the latest version and try again",
                               {"name": name, "group": rtype.group, "kind": rtype.plural})
            return self._update(rtype, old, obj, subresource, dry_run)

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, patch_type: str, patch: Any,
              subresource: str = "", field_manager: str | None = None, dry_run: bool = False) -> dict:
        patch_type = patch_type.split(";")[0].strip()
        if patch_type == STRATEGIC_MERGE_PATCH and rtype.custom:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types include: "
                           f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}")
        if patch_type == APPLY_PATCH and not field_manager:
            raise bad_request("PATCH, application/apply-patch+yaml requires fieldManager")
        with self._lock:
            old = self._bucket(rtype).get(self._key(rtype, namespace, name))
            if old is None:
                if patch_type == APPLY_PATCH:
                    if not isinstance(patch, dict):
                        raise bad_request("the applied configuration must be an object")
                    return self.create(rtype, namespace, patch, dry_run=dry_run)
                raise not_found(rtype, name)
            try:
                if patch_type == MERGE_PATCH:
                    new = merge_patch(old, patch)
                elif patch_type == STRATEGIC_MERGE_PATCH:
                    new = strategic_merge_patch(old, patch)
                elif patch_type == JSON_PATCH:
                    new = json_patch(old, patch)
                elif patch_type == APPLY_PATCH:
                    new = apply_patch(old, patch)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
            except PatchError as e:
                raise ApiError(422, "Invalid", str(e)) from e
            if not isinstance(new, dict):
                raise bad_request("the patched object is not an object")
            meta = new.setdefault("metadata", {})
            if meta.get("name") != name or (rtype.namespaced and meta.get("namespace") != namespace):
                raise bad_request("a patch cannot change the object's name or namespace")
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {qualified(rtype)} "{name}": the object has '
                               "been modified; please apply your changes to the latest version and try again",
                               {"name": name, "group": rtype.group, "kind": rtype.plural})
            self._check_type(rtype, new)
            return self._update(rtype, old, new, subresource, dry_run)

    def _update(self, rtype: ResourceType, old: dict, obj: dict, subresource: str, dry_run: bool) -> dict:
        """Lock held. Applies status-subresource rules, metadata bookkeeping, generation, admission."""
        has_status = "status" in rtype.subresources
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            # metadata labels/annotations may change through status too (as the apiserver allows); keep simple
        else:
            new = obj
            if has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "name", "namespace"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta.pop("managedFields", None)
        _default_and_convert(rtype, new)
        if subresource != "status" and _spec_of(new) != _spec_of(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        self._admit(AdmissionRequest("UPDATE", rtype, new, copy.deepcopy(old), subresource))
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return copy.deepcopy(old)  # a no-op update does not bump resourceVersion, as in Kubernetes
        if dry_run:
            return new
        meta["resourceVersion"] = self._next_rv()
        key = self._key(rtype, meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and \
                int(old_meta.get("deletionGracePeriodSeconds") or 0) == 0:
            # the last finalizer removed from an object whose grace period is over: it goes
            # (staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go, ShouldDeleteDuringUpdate)
            self._bucket(rtype).pop(key, None)
            self._notify("DELETED", rtype, new)
            self._after_removal(rtype, new)
            return copy.deepcopy(new)
        self._bucket(rtype)[key] = new
        self._notify("MODIFIED", rtype, new)
        return copy.deepcopy(new)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, dry_run: bool = False,
               preconditions: dict | None = None, *, grace_period_seconds: int | None = None,
               propagation_policy: str | None = None) -> tuple[dict, bool]:
        """Deletes an object; returns (object, removed). A pod bound to a node terminates through its grace
        period first (deletionTimestamp set, removed once the period is over, as its kubelet would). An object
        with finalizers is only marked (deletionTimestamp) and stays until they are removed. Once removed, the
        garbage collector deletes (or, with propagationPolicy Orphan, releases) its dependents."""
        if propagation_policy not in (None, "Orphan", "Background", "Foreground"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{propagation_policy}": supported values: '
                              '"Foreground", "Background", "Orphan"')
        if grace_period_seconds is not None and not isinstance(grace_period_seconds, int):
            raise bad_request("gracePeriodSeconds must be an integer")
        with self._lock:
            key = self._key(rtype, namespace, name)
            obj = self._bucket(rtype).get(key)
            if obj is None:
                raise not_found(rtype, name)
            pre = preconditions or {}
            for field in ("uid", "resourceVersion"):
                if pre.get(field) and pre[field] != obj["metadata"].get(field):
                    raise ApiError(409, "Conflict",
                                   f'Operation cannot be fulfilled on {qualified(rtype)} "{name}": '
                                   f"Precondition failed: {field} in precondition: {pre[field]}, "
                                   f"{field} in object meta: {obj['metadata'].get(field)}")
            self._admit(AdmissionRequest("DELETE", rtype, None, copy.deepcopy(obj)))
            if dry_run:
                return copy.deepcopy(obj), False
            if rtype.kind == "Namespace":
                return self._delete_namespace(rtype, obj)
            meta = obj["metadata"]
            if rtype.kind == "Pod" and not self._graceful_delete(rtype, obj, grace_period_seconds):
                return copy.deepcopy(obj), False
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp") or int(meta.get("deletionGracePeriodSeconds") or 0) != 0:
                    meta["deletionTimestamp"] = meta.get("deletionTimestamp") or now_rfc3339()
                    meta["deletionGracePeriodSeconds"] = 0
                    meta["resourceVersion"] = self._next_rv()
                    self._notify("MODIFIED", rtype, obj)
                return copy.deepcopy(obj), False
            del self._bucket(rtype)[key]
            meta["resourceVersion"] = self._next_rv()
            self._notify("DELETED", rtype, obj)
            self._after_removal(rtype, obj, propagation_policy)
            return copy.deepcopy(obj), True

    def _graceful_delete(self, rtype: ResourceType, pod: dict, requested: int | None) -> bool:
        """Lock held. The grace period of a pod's deletion, as pkg/registry/core/pod/strategy.go
        (CheckGracefulDelete: the request's gracePeriodSeconds, else spec.terminationGracePeriodSeconds; 0 for a
        pod bound to no node or already Succeeded/Failed; a negative value becomes 1) and
        staging/src/k8s.io/apiserver/pkg/registry/rest/delete.go (BeforeDelete: deletionTimestamp = now + period;
        a pod already terminating only takes a shorter period, counted from when its deletion started).
        Returns True when the pod is to go now (period 0), False when it stays Terminating."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        period = requested if requested is not None else spec.get("terminationGracePeriodSeconds") or 0
        if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
            period = 0
        if period < 0:
            period = 1
        now = dt.datetime.now(dt.UTC)
        if meta.get("deletionTimestamp"):
            current = meta.get("deletionGracePeriodSeconds")
            if current is not None and period >= int(current):
                return int(current) == 0
            started = _parse_rfc3339(meta["deletionTimestamp"]) - dt.timedelta(seconds=int(current or 0))
        else:
            started = now
        if period == 0:
            return True
        meta["deletionTimestamp"] = (started + dt.timedelta(seconds=period)).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["deletionGracePeriodSeconds"] = period
        meta["resourceVersion"] = self._next_rv()
        self._notify("MODIFIED", rtype, pod)
        remaining = max((started + dt.timedelta(seconds=period) - now).total_seconds(), 0.0)
        self._schedule_termination(rtype, meta.get("namespace"), meta["name"], meta.get("uid"), remaining)
        return False

    def _schedule_termination(self, rtype: ResourceType, namespace: str | None, name: str, uid: str | None,
                              delay: float) -> None:
        """The emulated kubelet (no kubelet runs in the lab): once the grace period is over the pod's containers
        are stopped and the kubelet deletes the pod with a zero grace period. Real seconds pass."""
        def finish() -> None:
            with self._lock:
                current = self._bucket(rtype).get(self._key(rtype, namespace, name))
                if current is None or current["metadata"].get("uid") != uid or \
                        not current["metadata"].get("deletionTimestamp"):
                    return
                # an admission hook that refuses leaves the pod Terminating, as with a stuck kubelet
                with contextlib.suppress(ApiError):
                    self.delete(rtype, namespace, name, grace_period_seconds=0)

        timer = threading.Timer(delay, finish)
        timer.daemon = True
        timer.start()

    def _delete_namespace(self, rtype: ResourceType, ns: dict) -> tuple[dict, bool]:
        name = ns["metadata"]["name"]
        if not ns["metadata"].get("deletionTimestamp"):
            ns["metadata"]["deletionTimestamp"] = now_rfc3339()
            ns["status"] = {"phase": "Terminating"}
            ns["metadata"]["resourceVersion"] = self._next_rv()
            self._notify("MODIFIED", rtype, ns)
        for t in self.catalog.types:
            if t.namespaced:
                for (obj_ns, obj_name) in list(self._bucket(t)):
                    if obj_ns == name:
                        self.delete(t, obj_ns, obj_name)
        return copy.deepcopy(ns), self._finish_namespace(name)

    def _namespace_empty(self, name: str) -> bool:
        return not any(ns == name for t in self.catalog.types if t.namespaced for (ns, _) in self._bucket(t))

    def _finish_namespace(self, name: str) -> bool:
        ns_type = self.catalog.by_kind("v1", "Namespace")
        if ns_type is None:
            return False
        ns = self._bucket(ns_type).get(("", name))
        if ns is None or not ns["metadata"].get("deletionTimestamp") or not self._namespace_empty(name):
            return False
        del self._bucket(ns_type)[("", name)]
        ns["metadata"]["resourceVersion"] = self._next_rv()
        self._notify("DELETED", ns_type, ns)
        return True

    def _after_removal(self, rtype: ResourceType, obj: dict, propagation_policy: str | None = None) -> None:
        if rtype.namespaced:
            self._finish_namespace(obj["metadata"].get("namespace", ""))
        self._collect_garbage(obj, propagation_policy)

    def _collect_garbage(self, owner: dict, propagation_policy: str | None) -> None:
        """Lock held. The garbage collector once an owner is gone (pkg/controller/garbagecollector/
        garbagecollector.go, attemptToDeleteItem / orphanDependents): a dependent all of whose owners are gone
        is deleted (background propagation: the owner first, then its dependents); one that still has another
        owner only loses the dangling reference; with propagationPolicy Orphan every dependent only loses the
        reference. Foreground propagation is handled as background (the product does not use it). Dependents
        whose owner never existed are not collected here (the real collector would delete them)."""
        uid = owner["metadata"].get("uid")
        if not uid:
            return
        owner_ns = owner["metadata"].get("namespace")
        for t in self.catalog.types:
            for key, dep in list(self._bucket(t).items()):
                refs = dep["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == uid for r in refs):
                    continue
                if owner_ns and t.namespaced and dep["metadata"].get("namespace") != owner_ns:
                    continue  # a namespaced owner owns only dependents of its namespace
                if self._bucket(t).get(key) is not dep:
                    continue
                remaining = [r for r in refs if r.get("uid") != uid and self._uid_exists(r)]
                if propagation_policy == "Orphan" or remaining:
                    new = copy.deepcopy(dep)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    if not new["metadata"]["ownerReferences"]:
                        del new["metadata"]["ownerReferences"]
                    self._update(t, dep, new, "", False)
                elif not dep["metadata"].get("deletionTimestamp"):
                    # refused by admission: the collector would retry later in a real cluster
                    with contextlib.suppress(ApiError):
                        self.delete(t, dep["metadata"].get("namespace"), dep["metadata"]["name"])

    def _uid_exists(self, ref: dict) -> bool:
        rtype = self.catalog.by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
        if rtype is None:
            return True  # a kind this server does not serve: the lab cannot tell, keep the reference
        return any(o["metadata"].get("uid") == ref.get("uid") for o in self._bucket(rtype).values())

    def delete_collection(self, rtype: ResourceType, namespace: str | None, label_selector: str | None = None,
                          field_selector: str | None = None, dry_run: bool = False) -> list[dict]:
        with self._lock:
            items, _ = self.list(rtype, namespace, label_selector, field_selector)
            return [self.delete(rtype, i["metadata"].get("namespace"), i["metadata"]["name"], dry_run)[0]
                    for i in items]

    def put(self, obj: dict) -> dict:
        """Create or replace (status included), bypassing admission: for seeding and for tests."""
        rtype = self.resolve(obj.get("apiVersion", ""), obj.get("kind", ""))
        meta = obj.get("metadata", {})
        with self._lock:
            existing = self.find(rtype, meta.get("namespace"), meta.get("name", ""))
            if existing is None:
                hooks, self.admission_hooks = self.admission_hooks, []
                try:
                    created = self.create(rtype, meta.get("namespace"), obj)
                finally:
                    self.admission_hooks = hooks
                if "status" in obj and created.get("status") != obj["status"]:
                    created["status"] = copy.deepcopy(obj["status"])
                    return self._update(rtype, self._bucket(rtype)[self._key(
                        rtype, meta.get("namespace"), meta["name"])], created, "status", False)
                return created
            new = copy.deepcopy(obj)
            new["metadata"]["resourceVersion"] = ""
            hooks, self.admission_hooks = self.admission_hooks, []
            try:
                old = self._bucket(rtype)[self._key(rtype, meta.get("namespace"), meta["name"])]
                updated = self._update(rtype, old, new, "", False)
                if "status" in rtype.subresources and "status" in obj:
                    old = self._bucket(rtype)[self._key(rtype, meta.get("namespace"), meta["name"])]
                    updated = self._update(rtype, old, copy.deepcopy(obj), "status", False)
                return updated
            finally:
                self.admission_hooks = hooks

    # ---------------------------------------------------------------- checks
    def _check_type(self, rtype: ResourceType, obj: dict) -> None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if (api_version or kind) and (api_version != rtype.api_version or kind != rtype.kind):
            raise bad_request(f"the API version in the data ({api_version}) and kind ({kind}) do not match "
                              f"the endpoint ({rtype.api_version}, {rtype.kind})")
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind

    def _check_namespace_field(self, rtype: ResourceType, namespace: str | None, meta: dict) -> str | None:
        if not rtype.namespaced:
            meta.pop("namespace", None)
            return None
        body_ns = meta.get("namespace")
        if namespace and body_ns and body_ns != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        namespace = namespace or body_ns
        if namespace:
            meta["namespace"] = namespace
        return namespace

    def _check_name(self, rtype: ResourceType, name: str) -> None:
        if rtype.group == "rbac.authorization.k8s.io" and name and name not in (".", "..") \
                and not any(c in name for c in "/%"):
            return  # ValidateRBACName = path.IsValidPathSegmentName (pkg/apis/rbac/validation): "kubeadm:..." is valid
        if rtype.group == "certificates.k8s.io" and name and name not in (".", "..") \
                and not any(c in name for c in "/%"):
            return  # ValidateCertificateRequestName accepts any name (pkg/apis/certificates/validation): the
            # kubelet's node-csr-<base64url digest> has capitals and '_'; only a path segment is required
        pattern = _DNS1123_LABEL if rtype.kind == "Namespace" else _DNS1123_SUBDOMAIN
        limit = 63 if rtype.kind == "Namespace" else 253
        if not name:
            raise invalid(rtype, name, [{"reason": "FieldValueRequired", "message": "Required value: name or "
                                         "generateName is required", "field": "metadata.name"}])
        if not pattern.match(name) or len(name) > limit:
            raise invalid(rtype, name, [{
                "reason": "FieldValueInvalid", "field": "metadata.name",
                "message": f'Invalid value: "{name}": a lowercase RFC 1123 '
                           f"{'label' if rtype.kind == 'Namespace' else 'subdomain'} must consist of lower case "
                           "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                           "character"}])


def _parse_rfc3339(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _default_and_convert(rtype: ResourceType, obj: dict) -> None:
    """What decoding a write does to an object before it is stored (defaults and internal conversion)."""
    if rtype.group == "coordination.k8s.io" and rtype.kind == "Lease":
        from agentkube_lab.kube_lease import decode_and_validate_lease  # kube_lease imports this module

        decode_and_validate_lease(rtype, obj)
        return
    if rtype.group or rtype.version != "v1":
        return
    if rtype.kind == "Pod":
        # pkg/apis/core/v1/defaults.go (SetDefaults_PodSpec): DefaultTerminationGracePeriodSeconds = 30
        spec = obj.get("spec")
        if isinstance(spec, dict) and spec.get("terminationGracePeriodSeconds") is None:
            spec["terminationGracePeriodSeconds"] = 30
    elif rtype.kind == "Secret":
        # pkg/apis/core/v1/conversion.go (Convert_v1_Secret_To_core_Secret): stringData is write-only, merged
        # into data (base64 on the wire) over any key of the same name, and never stored or returned.
        # data values must be base64 (the JSON decoding of []byte fails with 400 otherwise).
        data = obj.get("data")
        if data is not None and not isinstance(data, dict):
            raise bad_request("data must be an object")
        for key, value in (data or {}).items():
            try:
                # Go's base64 decoder skips line breaks; anything else outside the alphabet fails
                base64.b64decode(value.replace("\n", "").replace("\r", "") if isinstance(value, str) else "",
                                 validate=True)
            except (binascii.Error, ValueError) as e:
                raise bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 "
                                  f"data in data.{key}") from e
            if not isinstance(value, str):
                raise bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: data.{key} must "
                                  "be a base64 string")
        string_data = obj.pop("stringData", None)
        if string_data:
            if not isinstance(string_data, dict) or not all(isinstance(v, str) for v in string_data.values()):
                raise bad_request("Secret in version \"v1\" cannot be handled as a Secret: stringData values "
                                  "must be strings")
            merged = dict(data or {})
            merged.update({k: base64.b64encode(v.encode()).decode() for k, v in string_data.items()})
            obj["data"] = merged


def _spec_of(obj: dict) -> dict:
    """Everything except metadata and status: what the generation tracks."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}
