"""coordination.k8s.io/v1 Leases on the Kubernetes emulator, through HTTPS and the official client: CRUD, the
optimistic-concurrency answers kube-apiserver gives (409 Conflict, 409 AlreadyExists, 422 without a
resourceVersion, create on PUT), LeaseSpec decoding and validation, and RBAC on leases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from unit_support import grant_leader_election, kube_with_namespace

from agentkube_lab.kube_emulator import KubeEmulator

NS = "agents"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[KubeEmulator]:
    emulator = kube_with_namespace(tmp_path / "kube", NS)
    yield emulator
    emulator.stop()


@pytest.fixture
def leases(emu: KubeEmulator, tmp_path: Path) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(config.new_client_from_config(str(emu.write_kubeconfig(tmp_path / "kc"))))


def _raw(emu: KubeEmulator, method: str, path: str, body: dict | None = None) -> requests.Response:
    token = yaml.safe_load(emu.kubeconfig)["users"][0]["user"]["token"]
    return requests.request(method, f"{emu.url}{path}", json=body, verify=emu.ca_file, timeout=10,
                            headers={"Authorization": f"Bearer {token}"})


def _lease(name: str = "l1", **spec: object) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": spec}


def _status(error: ApiException) -> dict:
    return json.loads(error.body)


def test_discovery_publishes_leases(leases: client.CoordinationV1Api) -> None:
    resources = {r.name: r for r in leases.get_api_resources().resources}
    assert resources["leases"].namespaced is True and resources["leases"].kind == "Lease"
    assert set(resources["leases"].verbs) >= {"get", "list", "create", "update", "patch", "delete"}


def test_lease_crud_and_optimistic_concurrency(emu: KubeEmulator, leases: client.CoordinationV1Api) -> None:
    created = leases.create_namespaced_lease(NS, _lease(holderIdentity="a", leaseDurationSeconds=15,
                                                        renewTime="2026-01-01T10:00:00.000001+02:00"))
    assert created.spec.holder_identity == "a" and created.metadata.resource_version
    raw = _raw(emu, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/l1").json()
    assert raw["spec"]["renewTime"] == "2026-01-01T08:00:00.000001Z"  # MicroTime, written back in UTC

    with pytest.raises(ApiException) as exists:
        leases.create_namespaced_lease(NS, _lease(holderIdentity="b"))
    assert exists.value.status == 409 and _status(exists.value)["reason"] == "AlreadyExists"
    assert _status(exists.value)["message"] == 'leases.coordination.k8s.io "l1" already exists'

    stale = leases.read_namespaced_lease("l1", NS)
    first = leases.read_namespaced_lease("l1", NS)
    first.spec.holder_identity = "b"
    updated = leases.replace_namespaced_lease("l1", NS, first)
    assert updated.spec.holder_identity == "b"
    assert updated.metadata.resource_version != stale.metadata.resource_version

    stale.spec.holder_identity = "c"  # a second writer with the resourceVersion it read before the update
    with pytest.raises(ApiException) as conflict:
        leases.replace_namespaced_lease("l1", NS, stale)
    status = _status(conflict.value)
    assert conflict.value.status == 409 and status["kind"] == "Status" and status["reason"] == "Conflict"
    assert status["message"] == ('Operation cannot be fulfilled on leases.coordination.k8s.io "l1": the object '
                                 "has been modified; please apply your changes to the latest version and try again")
    assert status["details"] == {"name": "l1", "group": "coordination.k8s.io", "kind": "leases"}
    assert leases.read_namespaced_lease("l1", NS).spec.holder_identity == "b"

    patched = leases.patch_namespaced_lease("l1", NS, {"spec": {"leaseTransitions": 3}})
    assert patched.spec.lease_transitions == 3 and patched.spec.holder_identity == "b"
    assert [i.metadata.name for i in leases.list_namespaced_lease(NS).items] == ["l1"]
    leases.delete_namespaced_lease("l1", NS)
    with pytest.raises(ApiException) as gone:
        leases.read_namespaced_lease("l1", NS)
    assert gone.value.status == 404


def test_put_without_resource_version_is_invalid_and_put_creates(emu: KubeEmulator) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    made = _raw(emu, "PUT", f"{path}/l2", _lease("l2", holderIdentity="a"))  # AllowCreateOnUpdate
    assert made.status_code == 201 and made.json()["spec"]["holderIdentity"] == "a"
    again = _raw(emu, "PUT", f"{path}/l2", _lease("l2", holderIdentity="b"))  # no AllowUnconditionalUpdate
    assert again.status_code == 422 and again.json()["reason"] == "Invalid"
    assert again.json()["message"] == ('leases.coordination.k8s.io "l2" is invalid: metadata.resourceVersion: '
                                       "Invalid value: 0x0: must be specified for an update")
    assert _raw(emu, "GET", f"{path}/l2").json()["spec"]["holderIdentity"] == "a"
    # a ConfigMap (AllowUnconditionalUpdate true) still takes a PUT without resourceVersion
    cms = f"/api/v1/namespaces/{NS}/configmaps"
    assert _raw(emu, "POST", cms, {"metadata": {"name": "c"}, "data": {"k": "1"}}).status_code == 201
    assert _raw(emu, "PUT", f"{cms}/c", {"metadata": {"name": "c"}, "data": {"k": "2"}}).status_code == 200


@pytest.mark.parametrize(("spec", "code", "fragment"), [
    ({"leaseDurationSeconds": 0}, 422, "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"),
    ({"leaseTransitions": -1}, 422, "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"),
    ({"preferredHolder": "x"}, 422, "spec.preferredHolder: Forbidden: may only be specified if `strategy`"),
    ({"strategy": "Newest"}, 422, 'spec.strategy.strategy: Unsupported value: "Newest"'),
    ({"leaseDurationSeconds": "15"}, 400, "cannot unmarshal str into Go struct field"),
    ({"leaseDurationSeconds": 2**31}, 400, "of type int32"),
    ({"renewTime": "2026-01-01T10:00:00Z"}, 400, 'as "2006-01-02T15:04:05.000000Z07:00"'),
])
def test_lease_spec_decoding_and_validation(emu: KubeEmulator, spec: dict, code: int, fragment: str) -> None:
    answer = _raw(emu, "POST", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", _lease("bad", **spec))
    assert answer.status_code == code and fragment in answer.json()["message"], answer.json()
    assert _raw(emu, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/bad").status_code == 404


def test_valid_strategy_and_long_holder_identity_are_accepted(emu: KubeEmulator) -> None:
    body = _lease("ok", strategy="OldestEmulationVersion", preferredHolder="p", holderIdentity="h" * 1000,
                  leaseDurationSeconds=1, leaseTransitions=0, acquireTime=None)
    answer = _raw(emu, "POST", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", body)
    assert answer.status_code == 201 and "acquireTime" not in answer.json()["spec"]


def test_leases_go_through_rbac(emu: KubeEmulator, tmp_path: Path) -> None:
    user = "system:serviceaccount:agents:agent"
    path = tmp_path / "agent.kubeconfig"
    path.write_text(emu.identity_kubeconfig(user, ("system:serviceaccounts",)))
    api = client.CoordinationV1Api(config.new_client_from_config(str(path)))
    with pytest.raises(ApiException) as denied:
        api.create_namespaced_lease(NS, _lease(holderIdentity="a"))
    assert denied.value.status == 403
    grant_leader_election(emu, NS, "leader-election",
                          {"kind": "ServiceAccount", "name": "agent", "namespace": "agents"})
    lease = api.create_namespaced_lease(NS, _lease(holderIdentity="a"))
    lease.spec.holder_identity = "b"
    assert api.replace_namespaced_lease("l1", NS, lease).spec.holder_identity == "b"
    with pytest.raises(ApiException) as no_delete:
        api.delete_namespaced_lease("l1", NS)
    assert no_delete.value.status == 403
    with pytest.raises(ApiException) as other_namespace:
        api.read_namespaced_lease("l1", "default")
    assert other_namespace.value.status == 403
