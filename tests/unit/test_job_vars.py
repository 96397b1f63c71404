"""The job values and the one vars document: Job/JobResult from and to the API and the journal, the vars per
action (create/update from params, start/stop/delete from service.properties; the version window is the playbooks',
custom actions raw), vault refs, and the tenant spec's field errors not covered by test_cli_render_validate."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from agentkube.core import shipped
from agentkube.core.job_vars import (
    JobInputError,
    build_job_vars,
    secret_paths,
    substitute_vault,
    tenant_spec_for,
    vault_refs,
)
from agentkube.core.jobs import Job, JobResult, Service
from agentkube.core.naming import tenant_name
from agentkube.core.tenant_spec import SpecError, TenantLimits, validate_tenant_spec

SPEC = {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "default", "count": 1}]}
OLD_SPEC = {"kubernetesVersion": "v1.30.2", "nodePools": []}  # outside the default window (1.33 to 1.36)
SERVICE_ID = "5f0c3e4e-6d1a-4a4b-9e33-0c4c7b2b8f10"


def raw_job(action: str, params: Any = None, properties: Any = None, **service: Any) -> dict[str, Any]:
    raw = {
        "id": "job-1", "action": action, "priority": 3, "serviceId": SERVICE_ID,
        "service": {"id": SERVICE_ID, "name": "Team A Cluster", "groupId": "group-1", "status": "Started",
                    "properties": properties if properties is not None else {}, **service},
    }
    if params is not None:
        raw["params"] = params
    return raw


def job(action: str, params: Any = None, properties: Any = None, **service: Any) -> Job:
    return Job.from_api(raw_job(action, params, properties, **service))


# -- Job and JobResult ------------------------------------------------------------------------------------
def test_from_api_reads_a_job_res():
    j = job("update", SPEC, OLD_SPEC, agentInstanceId="kamaji-tenants/t", agentInstanceData={"a": 1})
    assert (j.id, j.action, j.priority, j.params) == ("job-1", "update", 3, SPEC)
    assert j.service == Service(id=SERVICE_ID, name="Team A Cluster", group_id="group-1", status="Started",
                                properties=OLD_SPEC, agent_instance_id="kamaji-tenants/t",
                                agent_instance_data={"a": 1})


def test_to_api_and_back_is_the_same_job():
    original = job("create", SPEC, SPEC, agentInstanceData={"endpoint": "https://10.0.0.5:6443"})
    assert Job.from_api(original.to_api()) == original
    no_params = job("start", None, SPEC)
    assert no_params.to_api()["params"] is None
    assert Job.from_api(no_params.to_api()) == no_params


def test_from_api_without_an_embedded_service_uses_service_id():
    j = Job.from_api({"id": 7, "action": "start", "serviceId": "svc-9", "params": ["not", "a", "dict"]})
    assert (j.id, j.service.id, j.service.name, j.service.group_id) == ("7", "svc-9", "", "")
    assert j.params is None
    assert j.priority == 0
    assert j.service.properties == {}


@pytest.mark.parametrize("raw", [
    {"action": "create", "serviceId": "s"},
    {"id": "j", "serviceId": "s"},
    {"id": "j", "action": "create"},
    {"id": "j", "action": "create", "serviceId": "s", "priority": "high"},
    {"id": "j", "action": "create", "service": "s"},
    ["id", "j"],
])
def test_from_api_rejects_a_malformed_job(raw):
    with pytest.raises((KeyError, TypeError, ValueError)):
        Job.from_api(raw)


def test_job_result_bodies_and_records():
    j = job("create", SPEC)
    failed = JobResult.failed(j, "task 'clone': storage full", 2.5)
    assert (failed.outcome, failed.error_message, failed.action, failed.duration_s) == (
        "failed", "task 'clone': storage full", "create", 2.5)
    done = JobResult(job_id="job-1", outcome="completed", agent_instance_id="ns/t",
                     agent_instance_data={"nodes": []}, properties={})
    assert done.complete_body() == {"agentInstanceId": "ns/t", "agentInstanceData": {"nodes": []}}
    assert JobResult(job_id="j", outcome="completed", properties={"x": 1}).complete_body() == {"properties": {"x": 1}}
    assert JobResult(job_id="j", outcome="completed").complete_body() == {}
    for r in (failed, done):
        assert JobResult.from_record(copy.deepcopy(r.to_record())) == r


# -- the vars document ------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["create", "update"])
def test_create_and_update_take_the_spec_from_params(action):
    j = job(action, SPEC, {"kubernetesVersion": "v1.34.1"}, agentInstanceData={"endpoint": "e"})
    doc = build_job_vars(j)
    assert set(doc) == {"agentkube_job", "agentkube_service", "agentkube_tenant_name", "agentkube_previous",
                        "agentkube_tenant"}
    assert doc["agentkube_job"] == {"id": "job-1", "action": action}
    assert doc["agentkube_service"] == {"id": SERVICE_ID, "name": "Team A Cluster", "groupId": "group-1"}
    assert doc["agentkube_tenant_name"] == tenant_name("Team A Cluster", SERVICE_ID)
    assert doc["agentkube_previous"] == {"endpoint": "e"}
    tenant = doc["agentkube_tenant"]
    assert tenant["kubernetesVersion"] == "v1.35.7"  # params, not the service's properties
    assert tenant["network"]["dnsServiceIP"] == "10.96.0.10"  # defaults filled
    assert tenant["controlPlane"]["serviceType"] == "LoadBalancer"
    assert tenant["nodePools"][0] == {"name": "default", "count": 1, "cores": 2, "memoryMiB": 4096,
                                      "diskGiB": 40, "labels": {}, "taints": []}


def test_previous_is_an_empty_mapping_for_a_new_service():
    assert build_job_vars(job("create", SPEC))["agentkube_previous"] == {}


@pytest.mark.parametrize("action", ["create", "update"])
def test_the_version_window_is_left_to_the_playbooks(action):
    """The window is a role variable the operator may move in the inventory, which the agent does not read: the
    playbooks enforce it (test_kamaji_tcp_role, test_cli_render_validate). The agent checks the version's form."""
    doc = build_job_vars(job(action, OLD_SPEC, SPEC))
    assert doc["agentkube_tenant"]["kubernetesVersion"] == "v1.30.2"
    with pytest.raises(JobInputError, match=r"params\.kubernetesVersion: "):
        build_job_vars(job(action, {**SPEC, "kubernetesVersion": "1.35"}, SPEC))


@pytest.mark.parametrize("action", ["create", "update"])
def test_an_action_re_issued_without_params_works_on_the_services_properties(action):
    """Core re-issues an action (POST /services/{id}/{action}) with nil params: a create retried after a
    failure converges on the properties the service holds."""
    assert build_job_vars(job(action, None, SPEC))["agentkube_tenant"]["kubernetesVersion"] == \
        SPEC["kubernetesVersion"]
    with pytest.raises(JobInputError, match=r"^service\.properties: the tenant spec is missing$"):
        build_job_vars(job(action, None, None))


def test_bad_params_name_every_field_under_params():
    bad = {"kubernetesVersion": "1.35", "controlPlane": {"replicas": 0}, "colour": "blue"}
    with pytest.raises(JobInputError) as e:
        build_job_vars(job("create", bad))
    message = str(e.value)
    for field in ("params.kubernetesVersion: ", "params.controlPlane.replicas: ", "params.colour: unknown field"):
        assert field in message


@pytest.mark.parametrize("action", ["start", "stop", "delete"])
def test_lifecycle_actions_take_the_spec_from_the_service_without_the_window(action):
    doc = build_job_vars(job(action, None, OLD_SPEC))
    assert doc["agentkube_tenant"]["kubernetesVersion"] == "v1.30.2"
    assert doc["agentkube_tenant"]["nodePools"] == []
    assert "agentkube_params" not in doc


@pytest.mark.parametrize("action", ["start", "stop", "delete"])
def test_lifecycle_actions_with_bad_properties_name_service_properties(action):
    bad = {**SPEC, "network": {"dnsServiceIP": "10.1.0.10"}}
    with pytest.raises(JobInputError, match=r"^service\.properties\.network\.dnsServiceIP: 10\.1\.0\.10 must lie"):
        build_job_vars(job(action, None, bad))
    with pytest.raises(JobInputError, match=r"^service\.properties\.kubernetesVersion: Field required$"):
        build_job_vars(job(action, None, {}))


def test_custom_actions_get_their_params_raw():
    params = {"target": "s3://bucket", "note": "not a tenant spec"}
    doc = build_job_vars(job("backup", params, SPEC))
    assert doc["agentkube_params"] == params
    assert "agentkube_tenant" not in doc
    assert doc["agentkube_job"]["action"] == "backup"
    assert build_job_vars(job("backup", None, SPEC))["agentkube_params"] == SPEC


def test_without_spec_validation_every_action_is_raw():
    odd = {"engine": "postgres", "size": "L"}
    doc = build_job_vars(job("create", odd), validate_spec=False)
    assert doc["agentkube_params"] == odd
    assert "agentkube_tenant" not in doc
    assert build_job_vars(job("delete", None, odd), validate_spec=False)["agentkube_params"] == odd


def test_a_job_without_a_service_id_is_refused():
    j = Job(id="j", action="create", service=Service(id="", name="x", group_id="g"), params=SPEC)
    with pytest.raises(JobInputError, match=r"^service\.id: '' is not an id"):
        build_job_vars(j)


@pytest.mark.parametrize(("service", "field"), [
    ({"id": "../../x"}, "service.id"), ({"id": "a" * 64}, "service.id"), ({"id": "x\n"}, "service.id"),
    ({"groupId": "g/../.."}, "service.groupId"),
    ({"name": ""}, "service.name"), ({"name": "web\n{{ x }}"}, "service.name"), ({"name": "x" * 256}, "service.name"),
])
def test_ids_and_names_that_cannot_become_labels_or_tenant_names_are_refused(service, field):
    s = {"id": SERVICE_ID, "name": "Team A", "group_id": "g1"}
    s.update({("group_id" if k == "groupId" else k): v for k, v in service.items()})
    j = Job(id="j", action="create", service=Service(**s), params=SPEC)
    with pytest.raises(JobInputError, match=rf"^{re.escape(field)}: "):
        build_job_vars(j)


def test_the_recorded_tenant_name_survives_a_rename():
    first = build_job_vars(job("create", SPEC))["agentkube_tenant_name"]
    renamed = job("update", SPEC, SPEC, name="Renamed", agentInstanceData={"tenantName": first})
    assert build_job_vars(renamed)["agentkube_tenant_name"] == first
    assert build_job_vars(job("update", SPEC, SPEC, name="Renamed"))["agentkube_tenant_name"] != first


def test_operator_limits_are_applied_to_create_and_update_only():
    big = {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": f"p{i}", "count": 50} for i in range(3)]}
    with pytest.raises(JobInputError, match=r"params\.nodePools: 150 workers in all exceed the limit of 100"):
        build_job_vars(job("create", big))
    with pytest.raises(JobInputError, match=r"params\.nodePools: 3 pools exceed the limit of 2"):
        build_job_vars(job("create", big), limits=TenantLimits(max_node_pools=2, max_workers=1000))
    assert build_job_vars(job("delete", None, big))["agentkube_tenant"]["nodePools"][2]["count"] == 50


def test_tenant_spec_for_leaves_the_job_untouched():
    j = job("create", copy.deepcopy(SPEC))
    tenant_spec_for(j)
    assert j.params == SPEC


# -- vault references -------------------------------------------------------------------------------------
DOC = {
    "proxmox_vm_api_token_secret": "vault://pve/token",
    "nested": {"list": ["plain", "vault://ssh-key", {"deep": "vault://pve/token"}], "n": 3, "none": None},
    "empty_ref": "vault://",
    "mid_string": "see vault://not-a-ref",
}


SECRET_PATHS = {("proxmox_vm_api_token_secret",), ("nested", "key")}


def test_vault_refs_are_found_only_at_secret_paths():
    assert vault_refs(DOC, SECRET_PATHS) == {"pve/token"}
    assert vault_refs(DOC, set()) == set()
    assert vault_refs({}, SECRET_PATHS) == set()
    assert vault_refs({"nested": {"key": "vault://k"}}, SECRET_PATHS) == {"k"}
    assert vault_refs({"nested": "vault://x"}, SECRET_PATHS) == set()


def test_substitute_vault_replaces_only_at_secret_paths_and_keeps_the_input():
    before = copy.deepcopy(DOC)
    out = substitute_vault(DOC, SECRET_PATHS, {"pve/token": "pve-secret", "ssh-key": "-----BEGIN KEY-----"})
    assert before == DOC
    assert out["proxmox_vm_api_token_secret"] == "pve-secret"
    assert out["nested"]["list"] == ["plain", "vault://ssh-key", {"deep": "vault://pve/token"}]  # not secret paths
    assert out["nested"]["n"] == 3
    assert out["mid_string"] == "see vault://not-a-ref"
    assert substitute_vault(DOC, SECRET_PATHS, {})["proxmox_vm_api_token_secret"] == "vault://pve/token"


def test_secret_paths_follow_the_schema_and_the_shipped_service_type_has_none():
    schema = {"properties": {"password": {"type": "string", "secret": {"type": "ephemeral"}},
                             "db": {"type": "object", "properties": {"dsn": {"type": "string",
                                                                             "secret": {"type": "persistent"}}}},
                             "name": {"type": "string"}}}
    assert secret_paths(schema) == {("password",), ("db", "dsn")}
    assert secret_paths(shipped.property_schema()) == set()
    assert secret_paths(shipped.configuration_schema()) == {("proxmox_vm_api_token_secret",)}


# -- tenant spec errors not covered by test_cli_render_validate --------------------------------------------
V = "v1.35.7"
FIELD_ERRORS = [
    ({"nodePools": [{"name": "a", "taints": [{"key": "k", "effect": "Sometimes"}]}]}, "nodePools[0].taints[0].effect"),
    ({"nodePools": [{"name": "a"}, {"name": "b", "taints": [{"key": "bad key!", "effect": "NoSchedule"}]}]},
     "nodePools[1].taints[0].key"),
    ({"nodePools": [{"name": "a", "taints": [{"effect": "NoSchedule"}]}]}, "nodePools[0].taints[0].key"),
    ({"nodePools": [{"name": "a", "taints": [{"key": "k", "value": "a b", "effect": "NoSchedule"}]}]},
     "nodePools[0].taints[0].value"),
    ({"nodePools": [{"name": "a", "taints": [{"key": "k", "effect": "NoSchedule", "when": 1}]}]},
     "nodePools[0].taints[0].when"),
    ({"nodePools": [{"name": "a", "labels": {"-bad": "x"}}]}, "nodePools[0].labels"),
    ({"nodePools": [{"name": "a", "labels": {"ok": "bad value!"}}]}, "nodePools[0].labels"),
    ({"nodePools": [{"name": "Big_Pool"}]}, "nodePools[0].name"),
    ({"nodePools": [{"name": "p" * 21}]}, "nodePools[0].name"),
    ({"nodePools": [{"name": "a", "count": 51}]}, "nodePools[0].count"),
    ({"nodePools": [{"name": "a", "memoryMiB": 512}]}, "nodePools[0].memoryMiB"),
    ({"controlPlane": {"replicas": 0}}, "controlPlane.replicas"),
    ({"controlPlane": {"address": "host.example"}}, "controlPlane.address"),
    ({"controlPlane": {"certSANs": ["a.example", "a.example"]}}, "controlPlane.certSANs"),
    ({"controlPlane": {"certSANs": ["Bad_Name"]}}, "controlPlane.certSANs"),
    ({"controlPlane": {"port": 0}}, "controlPlane.port"),
    ({"network": {"podCidr": "10.96.0.0/12"}}, "network.serviceCidr"),
    ({"network": {"podCidr": "10.244.0.1/16"}}, "network.podCidr"),
    ({"network": {"serviceCidr": "10.96.0.0/30"}}, "network.serviceCidr"),
    ({"network": {"dnsServiceIP": "10.96.0.0"}}, "network.dnsServiceIP"),
    ({"network": {"dnsServiceIP": "dns"}}, "network.dnsServiceIP"),
    ({"baseline": {"cni": "flannel"}}, "baseline.cni"),
    ({"addons": {"coreDNS": "maybe"}}, "addons.coreDNS"),
]


@pytest.mark.parametrize(("overrides", "field"), FIELD_ERRORS)
def test_a_bad_field_is_named_with_its_path(overrides, field):
    with pytest.raises(SpecError) as e:
        validate_tenant_spec({"kubernetesVersion": V, **overrides})
    assert [path for path, _ in e.value.errors] == [field]


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(SpecError) as e:
        validate_tenant_spec({"kubernetesVersion": V, "controlPlane": {"replicas": 9},
                              "nodePools": [{"name": "a", "count": 51}], "baseline": {"cni": "flannel"}})
    assert [path for path, _ in e.value.errors] == ["controlPlane.replicas", "nodePools[0].count", "baseline.cni"]
    assert str(e.value).count("; ") == 2


@pytest.mark.parametrize("data", ["a string", None, ["kubernetesVersion", V]])
def test_the_spec_must_be_a_mapping(data):
    with pytest.raises(SpecError) as e:
        validate_tenant_spec(data)
    assert e.value.errors == [("(root)", "the tenant spec must be a mapping")]


def test_good_specs_pass_with_their_values():
    spec = validate_tenant_spec({
        "kubernetesVersion": "v1.33.0",
        "controlPlane": {"serviceType": "NodePort", "address": "10.0.0.50", "certSANs": ["api.example", "10.0.0.5"]},
        "network": {"serviceCidr": "10.100.0.0/16", "dnsServiceIP": "10.100.0.53"},
        "nodePools": [{"name": "gpu", "labels": {"example.com/gpu": "true", "tier": ""},
                       "taints": [{"key": "example.com/gpu", "effect": "NoSchedule"}]}],
    })
    assert spec.minor == (1, 33)
    assert spec.network.dnsServiceIP == "10.100.0.53"
    assert spec.nodePools[0].taints[0].value == ""
    assert validate_tenant_spec({"kubernetesVersion": V, "nodePools": []}).nodePools == []
    assert validate_tenant_spec({"kubernetesVersion": V, "network": {"serviceCidr": "10.100.0.0/16"}}) \
        .network.dnsServiceIP == "10.100.0.10"
