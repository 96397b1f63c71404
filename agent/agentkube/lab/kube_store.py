"""The generic object store behind every lab API server (the Kamaji parent and each tenant): objects keyed by
type, namespace and name, with the metadata bookkeeping a real apiserver does (uid, a cluster-wide
resourceVersion, generation, creationTimestamp, finalizers and deletionTimestamp), status-subresource rules,
admission hooks, label/field selectors and real `kind: Status` errors."""

from __future__ import annotations

import copy
import datetime as dt
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentkube.lab.kube_patch import PatchError, apply_patch, json_patch, merge_patch, strategic_merge_patch
from agentkube.lab.kube_resources import ResourceCatalog, ResourceType
from agentkube.lab.kube_selectors import SelectorError, matches, parse_field_selector, parse_label_selector

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
                raise not_found(rtype, name)
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
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
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._bucket(rtype).pop(key, None)
            self._notify("DELETED", rtype, new)
            self._after_removal(rtype, new)
            return copy.deepcopy(new)
        self._bucket(rtype)[key] = new
        self._notify("MODIFIED", rtype, new)
        return copy.deepcopy(new)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, dry_run: bool = False,
               preconditions: dict | None = None) -> tuple[dict, bool]:
        """Deletes an object; returns (object, removed). An object with finalizers is only marked
        (deletionTimestamp) and stays until they are removed."""
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
            if obj["metadata"].get("finalizers"):
                if not obj["metadata"].get("deletionTimestamp"):
                    obj["metadata"]["deletionTimestamp"] = now_rfc3339()
                    obj["metadata"]["deletionGracePeriodSeconds"] = 0
                    obj["metadata"]["resourceVersion"] = self._next_rv()
                    self._notify("MODIFIED", rtype, obj)
                return copy.deepcopy(obj), False
            del self._bucket(rtype)[key]
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._notify("DELETED", rtype, obj)
            self._after_removal(rtype, obj)
            return copy.deepcopy(obj), True

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

    def _after_removal(self, rtype: ResourceType, obj: dict) -> None:
        if rtype.namespaced:
            self._finish_namespace(obj["metadata"].get("namespace", ""))

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


def _spec_of(obj: dict) -> dict:
    """Everything except metadata and status: what the generation tracks."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}
