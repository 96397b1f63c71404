"""The lab's generic Kubernetes object store, selectors, patches and CEL subset, without HTTP."""

from __future__ import annotations

import pytest

from agentkube_lab.kube_cel import CelError, evaluate
from agentkube_lab.kube_patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from agentkube_lab.kube_resources import CORE_TYPES, KAMAJI_TYPES, TENANT_CONTROL_PLANE, ResourceCatalog
from agentkube_lab.kube_selectors import SelectorError, matches, parse_field_selector, parse_label_selector
from agentkube_lab.kube_store import APPLY_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, ApiError, ObjectStore


@pytest.fixture
def store() -> ObjectStore:
    s = ObjectStore(ResourceCatalog(CORE_TYPES + KAMAJI_TYPES))
    s.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenants"}})
    return s


def _cm(name: str, labels: dict | None = None, data: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "tenants", "labels": labels or {}}, "data": data or {}}


def _tcp(name: str = "t1", version: str = "v1.34.1") -> dict:
    return {"apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": "tenants"},
            "spec": {"kubernetes": {"version": version}}, "status": {"should": "be dropped"}}


@pytest.mark.parametrize(("selector", "expected"), [
    ("app=web", {"a"}), ("app==web", {"a"}), ("app!=web", {"b", "c"}), ("app in (web, db)", {"a", "b"}),
    ("app notin (web)", {"b", "c"}), ("tier", {"a", "b"}), ("!tier", {"c"}), ("app=web,tier=front", {"a"}),
    ("app in (web,db),!tier", set()),
])
def test_label_selectors(selector: str, expected: set[str]) -> None:
    objects = {
        "a": {"metadata": {"name": "a", "labels": {"app": "web", "tier": "front"}}},
        "b": {"metadata": {"name": "b", "labels": {"app": "db", "tier": "back"}}},
        "c": {"metadata": {"name": "c", "labels": {}}},
    }
    reqs = parse_label_selector(selector)
    assert {n for n, o in objects.items() if matches(o, reqs, ())} == expected


def test_field_selectors_and_bad_selectors() -> None:
    pod = {"metadata": {"name": "p1", "namespace": "x"}, "spec": {"nodeName": "n1"}}
    assert matches(pod, (), parse_field_selector("spec.nodeName=n1,metadata.name=p1"))
    assert not matches(pod, (), parse_field_selector("spec.nodeName!=n1"))
    with pytest.raises(SelectorError):
        parse_label_selector("app in web")
    with pytest.raises(SelectorError):
        parse_field_selector("spec.nodeName")


def test_patches() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == \
        {"a": {"c": 2, "d": 3}, "l": [2]}
    live = {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}
    patched = strategic_merge_patch(live, {"spec": {"containers": [{"name": "b", "image": "z"}]}})
    assert patched["spec"]["containers"] == [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]
    assert json_patch({"a": [1, 2]}, [{"op": "add", "path": "/a/-", "value": 3},
                                      {"op": "remove", "path": "/a/0"}]) == {"a": [2, 3]}
    with pytest.raises(PatchError):
        json_patch({"a": 1}, [{"op": "replace", "path": "/missing", "value": 1}])
    with pytest.raises(PatchError):
        json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])


def test_create_sets_metadata_and_counts_resource_versions(store: ObjectStore) -> None:
    cm_type = store.resolve("v1", "ConfigMap")
    first = store.create(cm_type, "tenants", _cm("one"))
    second = store.create(cm_type, "tenants", _cm("two"))
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert first["metadata"]["generation"] == 1 and first["metadata"]["creationTimestamp"].endswith("Z")
    with pytest.raises(ApiError) as exists:
        store.create(cm_type, "tenants", _cm("one"))
    assert (exists.value.code, exists.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as no_ns:
        store.create(cm_type, "missing", _cm("x") | {"metadata": {"name": "x"}})
    assert no_ns.value.code == 404 and 'namespaces "missing" not found' in no_ns.value.message
    with pytest.raises(ApiError) as bad_name:
        store.create(cm_type, "tenants", _cm("Bad_Name"))
    assert bad_name.value.code == 422 and bad_name.value.details["causes"][0]["field"] == "metadata.name"


def test_status_subresource_rules_and_generation(store: ObjectStore) -> None:
    created = store.create(TENANT_CONTROL_PLANE, "tenants", _tcp())
    assert "status" not in created  # a custom resource's status is not settable on create
    with_status = dict(created, status={"phase": "x"})
    updated = store.replace(TENANT_CONTROL_PLANE, "tenants", "t1", with_status)
    assert "status" not in updated  # the main endpoint ignores status
    assert updated["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]  # a no-op
    status_only = dict(created, status={"phase": "x"}, spec={"kubernetes": {"version": "v1.99.0"}})
    after = store.replace(TENANT_CONTROL_PLANE, "tenants", "t1", status_only, subresource="status")
    assert after["status"] == {"phase": "x"} and after["spec"]["kubernetes"]["version"] == "v1.34.1"
    assert after["metadata"]["generation"] == 1
    bumped = store.patch(TENANT_CONTROL_PLANE, "tenants", "t1", MERGE_PATCH,
                         {"spec": {"kubernetes": {"version": "v1.35.0"}}})
    assert bumped["metadata"]["generation"] == 2 and bumped["status"] == {"phase": "x"}
    stale = dict(created)
    with pytest.raises(ApiError) as conflict:
        store.replace(TENANT_CONTROL_PLANE, "tenants", "t1", stale)
    assert conflict.value.code == 409 and conflict.value.reason == "Conflict"


def test_patch_types(store: ObjectStore) -> None:
    cm_type = store.resolve("v1", "ConfigMap")
    store.create(cm_type, "tenants", _cm("c", data={"a": "1"}))
    store.create(TENANT_CONTROL_PLANE, "tenants", _tcp())
    with pytest.raises(ApiError) as unsupported:
        store.patch(TENANT_CONTROL_PLANE, "tenants", "t1", STRATEGIC_MERGE_PATCH, {"spec": {}})
    assert unsupported.value.code == 415  # as a real apiserver answers for custom resources
    assert store.patch(cm_type, "tenants", "c", STRATEGIC_MERGE_PATCH, {"data": {"b": "2"}})["data"] == \
        {"a": "1", "b": "2"}
    with pytest.raises(ApiError) as no_manager:
        store.patch(cm_type, "tenants", "c", APPLY_PATCH, {"data": {}})
    assert no_manager.value.code == 400
    applied = store.patch(cm_type, "tenants", "new", APPLY_PATCH, _cm("new", data={"x": "y"}), field_manager="t")
    assert applied["data"] == {"x": "y"}  # server-side apply creates what is missing
    with pytest.raises(ApiError) as missing:
        store.patch(cm_type, "tenants", "absent", MERGE_PATCH, {"data": {}})
    assert missing.value.code == 404


def test_finalizers_delay_deletion_and_namespace_cascade(store: ObjectStore) -> None:
    cm_type, ns_type = store.resolve("v1", "ConfigMap"), store.resolve("v1", "Namespace")
    store.create(cm_type, "tenants", _cm("keep") | {"metadata": {"name": "keep", "finalizers": ["x/y"]}})
    store.create(cm_type, "tenants", _cm("plain"))
    obj, removed = store.delete(cm_type, "tenants", "keep")
    assert not removed and obj["metadata"]["deletionTimestamp"]
    store.delete(ns_type, None, "tenants")
    assert store.find(cm_type, "tenants", "plain") is None
    ns = store.get(ns_type, None, "tenants")
    assert ns["status"]["phase"] == "Terminating"  # still holds the finalized ConfigMap
    with pytest.raises(ApiError) as terminating:
        store.create(cm_type, "tenants", _cm("late"))
    assert terminating.value.code == 403
    store.patch(cm_type, "tenants", "keep", MERGE_PATCH, {"metadata": {"finalizers": None}})
    assert store.find(cm_type, "tenants", "keep") is None
    assert store.find(ns_type, None, "tenants") is None


def test_list_with_selectors_and_delete_collection(store: ObjectStore) -> None:
    cm_type = store.resolve("v1", "ConfigMap")
    for name, tier in (("a", "front"), ("b", "back"), ("c", "front")):
        store.create(cm_type, "tenants", _cm(name, {"tier": tier}))
    items, rv = store.list(cm_type, "tenants", "tier=front")
    assert [i["metadata"]["name"] for i in items] == ["a", "c"] and rv == store.resource_version
    assert [i["metadata"]["name"] for i in store.list(cm_type, None, field_selector="metadata.name=b")[0]] == ["b"]
    store.delete_collection(cm_type, "tenants", "tier=front")
    assert [i["metadata"]["name"] for i in store.list(cm_type, "tenants")[0]] == ["b"]


@pytest.mark.parametrize(("rule", "env", "expected"), [
    ("self == oldSelf", {"self": "a", "oldSelf": "a"}, True),
    ("self == '' || isCIDR(self)", {"self": "10.0.0.0/8"}, True),
    ("self == '' || isCIDR(self)", {"self": "10.0.0.0"}, False),
    ("self.all(x, isCIDR(x))", {"self": ["10.0.0.0/8", "fd00::/64"]}, True),
    ("!has(oldSelf.dataStore) || has(self.dataStore)", {"self": {}, "oldSelf": {"dataStore": "d"}}, False),
    ("!(self.mode == 'DaemonSet' && has(self.replicas) && self.replicas != 0)", {"self": {"mode": "DaemonSet",
                                                                                          "replicas": 2}}, False),
    ("(self.driver == \"etcd\") ? has(self.tls) : true", {"self": {"driver": "pg"}}, True),
    ("size(self) == 0 || self[0] == 'x'", {"self": ["x"]}, True),
])
def test_cel_subset(rule: str, env: dict, expected: bool) -> None:
    assert evaluate(rule, env) is expected


def test_cel_outside_subset_raises() -> None:
    with pytest.raises(CelError):
        evaluate("self.noSuchFunction('a')", {"self": "abc"})  # an unknown function does not compile
    with pytest.raises(CelError):
        evaluate("self.missing == 1", {"self": {}})
