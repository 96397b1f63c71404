"""Upgrade planning (agentkube.core.tcp_upgrade), TCP status reading (tcp_status) and the filters the
kamaji_tcp role calls them through (plugins/filter/agentkube_filters.py)."""

from __future__ import annotations

import pytest
from unit_support import playbook_filters

from agentkube.core.tcp_status import describe, not_ready_reason, reached, version_status
from agentkube.core.tcp_upgrade import UpgradeRefused, normalise_upgrade_path, plan_upgrade

WINDOW = {"min_minor": (1, 33), "max_minor": (1, 36)}
PATH = {"1.33": "v1.33.5", "1.34": "v1.34.1", "1.35": "v1.35.7", "1.36": "v1.36.0"}


@pytest.mark.parametrize(
    ("current", "desired", "steps"),
    [
        ("v1.35.7", "v1.35.7", []),
        ("v1.35.1", "v1.35.7", ["v1.35.7"]),
        ("v1.34.9", "v1.35.2", ["v1.35.2"]),
        ("v1.33.0", "v1.35.2", ["v1.34.1", "v1.35.2"]),
        ("v1.33.4", "v1.36.3", ["v1.34.1", "v1.35.7", "v1.36.3"]),
    ],
)
def test_steps_one_minor_at_a_time(current, desired, steps):
    assert plan_upgrade(current, desired, upgrade_path=PATH, **WINDOW) == steps


@pytest.mark.parametrize(
    ("current", "desired", "kwargs", "message"),
    [
        ("v1.35.7", "v1.34.2", {}, "downgrade"),
        ("v1.35.7", "v1.35.6", {}, "downgrade"),
        ("v1.35.7", "v1.37.0", {}, "outside the supported window v1.33 to v1.36"),
        ("v1.34.0", "v1.32.0", {}, "outside the supported window"),
        ("v1.33.0", "v1.35.0", {"step_minors": False}, "skips minor version(s) 1.34"),
        ("v1.33.0", "v1.36.0", {"step_minors": False}, "1.34, 1.35"),
        ("v1.33.0", "v1.35.0", {"upgrade_path": {"1.35": "v1.35.7"}}, "no version is known for 1.34"),
        ("1.33", "v1.35.0", {}, "live version"),
        ("v1.33.0", "latest", {}, "desired version"),
    ],
)
def test_refusals_say_why(current, desired, kwargs, message):
    with pytest.raises(UpgradeRefused) as err:
        plan_upgrade(current, desired, **{"upgrade_path": PATH, **WINDOW, **kwargs})
    assert message in str(err.value)


def test_a_major_change_is_refused():
    with pytest.raises(UpgradeRefused, match="major"):
        plan_upgrade("v1.36.0", "v2.0.0", min_minor=(1, 33), max_minor=(2, 1))


def test_upgrade_path_entries_must_match_their_minor():
    assert normalise_upgrade_path({"v1.34": "v1.34.2"}) == {(1, 34): "v1.34.2"}
    with pytest.raises(UpgradeRefused, match="quote the keys"):
        normalise_upgrade_path({1.3: "v1.30.1"})  # YAML's unquoted 1.30
    with pytest.raises(UpgradeRefused, match=r"not a version of the form"):
        normalise_upgrade_path({"1.34": "v1.34"})


def tcp(status=None, version="v1.35.7", running=None, generation=None, observed=None, conditions=None):
    obj = {"metadata": {"name": "t"}, "spec": {"kubernetes": {"version": version}}, "status": {}}
    if generation is not None:
        obj["metadata"]["generation"] = generation
    if observed is not None:
        obj["status"]["observedGeneration"] = observed
    if status:
        obj["status"]["kubernetesResources"] = {"version": {"status": status}}
        if running:
            obj["status"]["kubernetesResources"]["version"]["version"] = running
    if conditions:
        obj["status"].setdefault("kubernetesResources", {})["deployment"] = {"conditions": conditions}
    return obj


def test_reached_needs_the_status_for_the_current_spec():
    assert not reached(tcp("Ready"), "Ready")  # Kamaji records status...version.version with every Ready
    assert reached(tcp("Ready", running="v1.35.7"), "Ready")
    assert not reached(tcp("Provisioning"), "Ready")
    assert not reached({}, "Ready")
    assert not reached(tcp("Ready", generation=3, observed=2), "Ready")
    assert reached(tcp("Ready", generation=3, observed=3, running="v1.35.7"), "Ready")
    assert not reached(tcp("Ready", version="v1.35.7", running="v1.34.1"), "Ready")
    assert reached(tcp("Ready", version="v1.35.7", running="v1.35.7"), "Ready")
    assert reached(tcp("Sleeping", running="v1.34.1"), "Sleeping")


def test_describe_names_the_last_status_and_reason():
    stuck = tcp(
        "NotReady",
        conditions=[
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "etcd unreachable"},
        ],
    )
    assert version_status(stuck) == "NotReady"
    assert not_ready_reason(stuck) == "MinimumReplicasUnavailable: etcd unreachable"
    assert describe(stuck) == "last status NotReady (reason: MinimumReplicasUnavailable: etcd unreachable)"
    assert describe(tcp()) == "last status (no status yet) (reason: no reason reported)"
    assert describe({}) == "the TenantControlPlane was not found"


@pytest.fixture(scope="module")
def filters():
    return playbook_filters("agentkube_filters")


def test_filters_wrap_core(filters):
    plan = filters["agentkube_tcp_upgrade_plan"]("v1.33.1", "v1.35.2", "v1.33", "v1.36", PATH, True)
    assert plan == {"steps": ["v1.34.1", "v1.35.2"], "error": ""}
    refused = filters["agentkube_tcp_upgrade_plan"]("v1.33.1", "v1.35.2", "v1.33", "v1.36", PATH, False)
    assert refused["steps"] == [] and "skips minor" in refused["error"]
    assert filters["agentkube_tenant_name"]("My Cluster", "id") == filters["agentkube_tenant_name"]("my cluster", "id")
    assert filters["agentkube_datastore_schema"]("a-b") == "a_b"


def test_spec_filters_name_every_bad_field(filters):
    errors = filters["agentkube_tenant_spec_errors"](
        {"kubernetesVersion": "1.35", "controlPlane": {"serviceType": "NodePort"}, "bogus": 1}, "v1.33", "v1.36"
    )
    assert any(e.startswith("agentkube_tenant.kubernetesVersion:") for e in errors)
    assert any(e.startswith("agentkube_tenant.controlPlane.address:") for e in errors)
    assert "agentkube_tenant.bogus: unknown field" in errors
    assert filters["agentkube_tenant_spec_errors"]({"kubernetesVersion": "v1.34.0"}, "v1.35", "v1.36") == [
        "agentkube_tenant.kubernetesVersion: v1.34.0 is outside the supported window v1.35 to v1.36"
    ]
    filled = filters["agentkube_tenant_spec"]({"kubernetesVersion": "v1.34.0"})
    assert filled["controlPlane"]["replicas"] == 2 and filled["network"]["dnsServiceIP"] == "10.96.0.10"
    assert filters["agentkube_tcp_settings_errors"]({"kamaji_tcp_namespace": "Bad"})[0].startswith(
        "kamaji_tcp_namespace:"
    )
