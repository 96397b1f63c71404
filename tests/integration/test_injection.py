"""Hostile job input through the agent and the real action playbooks (issue 10): nothing a Fulcrum consumer or
Fulcrum itself sends is ever evaluated as a template, resolved as a vault reference or used as a path, and no
canary secret reaches an artifact, a log or Fulcrum. Also: a renamed service keeps its tenant, and operator
quotas refuse a spec before anything is touched.

One module-scoped lab (Fulcrum, Kamaji and Proxmox emulators) with an in-process agent; the actions used are the
cheap ones (delete of nothing, refused creates), plus one create without workers for the rename."""

from __future__ import annotations

import base64
import copy
import json
import logging
from pathlib import Path

import pytest
from agent_harness import job_done, lifecycle_lab, wait_for

from agentkube.core.naming import tenant_name
from agentkube.core.shipped import load_shipped
from agentkube_lab.lab import Lab

pytestmark = pytest.mark.integration

NAMESPACE = "kamaji-tenants"
JOB_TIMEOUT = 240
SPEC = {"kubernetesVersion": "v1.35.7", "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [], "baseline": {"cni": "none"}}


def payloads(canary: Path) -> list[str]:
    """Template syntax in every form ansible-core evaluates: expressions, statements, comments, lookups, query,
    filters and tests. Each would create the canary file if it were ever templated."""
    touch = f"touch {canary}"
    return [
        "{{ lookup('ansible.builtin.pipe', '" + touch + "') }}",
        "{% set x = lookup('pipe', '" + touch + "') %}{{ x }}",
        "{# c #}{{ query('ansible.builtin.pipe', '" + touch + "') | first }}",
        "web {{ lookup('pipe', '" + touch + "') | upper }}",
        "{{ ('" + touch + "') is ansible.builtin.truthy and lookup('pipe', '" + touch + "') }}",
        "{% for i in [1] %}{{ lookup('pipe', '" + touch + "') }}{% endfor %}",
    ]


UNVALIDATED = "kubernetes-cluster-unvalidated"


def _without_validators(node):
    if isinstance(node, dict):
        return {k: _without_validators(v) for k, v in node.items() if k != "validators"}
    if isinstance(node, list):
        return [_without_validators(v) for v in node]
    return node


def unvalidated_service_type() -> dict:
    """The shipped ServiceType without its validators: Fulcrum then passes any string through, as Core does for
    a property an admin left without validators. The agent must not rely on Fulcrum's validation."""
    st = _without_validators(copy.deepcopy(load_shipped("service-type")))
    st["name"] = UNVALIDATED
    return st


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lifecycle_lab(tmp_path_factory.mktemp("injection") / "lab", tcp_ready_delay=0.2,
                       operator_vars={"kamaji_tcp_poll_interval": 1},
                       extra_service_types=[unvalidated_service_type()]) as lab:
        yield lab


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("canary") / "EXECUTED"


def finish(lab: Lab, job: dict) -> dict:
    wait_for(lambda: job_done(lab, job["id"]), JOB_TIMEOUT, interval=0.3, what=f"job {job['action']}")
    return lab.fulcrum.get_job(job["id"])


def service(lab: Lab, name: str, spec: dict) -> tuple[dict, dict]:
    """A new service and its create job (Pending)."""
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service(name, lab.catalog.extra_service_type_ids[UNVALIDATED],
                                     lab.catalog.group_ids[0], lab.catalog.agent_id, spec)
    return svc, next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"])


def artifacts_text(lab: Lab) -> str:
    return "\n".join(p.read_text(errors="replace") for p in Path(lab.state_dir).rglob("jobs/*/**/*") if p.is_file())


def fulcrum_text(lab: Lab) -> str:
    """Everything the agent sent to Fulcrum: job failures and results, status, metrics."""
    return json.dumps([[r.method, r.path, r.body] for r in lab.fulcrum.request_log], default=str)


def test_payloads_in_every_property_string_are_refused_naming_the_field(lab, canary):
    payload = payloads(canary)[0]
    cases = {
        "nodePools[0].name": {**SPEC, "nodePools": [{"name": payload}]},
        "nodePools[0].labels": {**SPEC, "nodePools": [{"name": "a", "labels": {"k": payload}}]},
        "controlPlane.certSANs": {**SPEC, "controlPlane": {"certSANs": [payload]}},
        "controlPlane.address": {**SPEC, "controlPlane": {"address": payload}},
        "baseline.cni": {**SPEC, "baseline": {"cni": payload}},
    }
    for field, spec in cases.items():
        _, create = service(lab, "Props", spec)
        done = finish(lab, create)
        assert done["status"] == "Failed"
        assert f"params.{field}" in done["errorMessage"], done["errorMessage"]
    assert not canary.exists()


def test_a_vault_reference_as_a_name_is_never_resolved(lab):
    secret = "VAULT-CANARY-never-resolved-9f3e"
    lab.fulcrum.put_secret("pve-token", secret)
    svc, create = service(lab, "vault://pve-token", {**SPEC, "kubernetesVersion": "vault://pve-token"})
    assert finish(lab, create)["status"] == "Failed"
    lab.fulcrum.state._service(svc["id"]).agent_instance_data = {"endpoint": "vault://pve-token",
                                                                 "tenantName": "vault://pve-token"}
    finish(lab, lab.fulcrum.request_action(svc["id"], "delete"))
    assert not [r for r in lab.fulcrum.request_log if "/vault/secrets/" in str(r.path)]
    assert secret not in fulcrum_text(lab)
    assert secret not in artifacts_text(lab)


def test_operator_quotas_refuse_a_spec_before_anything_is_touched(lab):
    big = {**SPEC, "nodePools": [{"name": f"p{i}", "count": 50} for i in range(3)],
           "controlPlane": {"certSANs": [f"san{i}.example" for i in range(40)]}}
    vms_before = len(lab.pve.fake.vms)
    _, create = service(lab, "Too Big", big)
    done = finish(lab, create)
    assert done["status"] == "Failed"
    assert "params.nodePools: 150 workers in all exceed the limit of 100" in done["errorMessage"]
    assert "params.controlPlane.certSANs: 40 entries exceed the limit of 32" in done["errorMessage"]
    assert len(lab.pve.fake.vms) == vms_before
    assert lab.kube.get("kamaji.clastix.io/v1alpha1", "TenantControlPlane", NAMESPACE,
                        tenant_name("Too Big", create["serviceId"])) is None


def test_payloads_in_names_and_instance_data_never_execute_and_a_renamed_service_keeps_its_tenant(
        lab, canary, caplog):
    """One tenant's story with hostile strings wherever a consumer or Fulcrum can put them: created under a
    payload name, renamed to another payload (PATCH /services/{id}), updated, its agentInstanceData replaced by
    payloads (Fulcrum echoes it back, and may lose it), deleted. The real playbooks read every one of them."""
    caplog.set_level(logging.INFO)
    table = payloads(canary)
    svc, create = service(lab, table[0], SPEC)
    done = finish(lab, create)
    assert done["status"] == "Completed", done.get("errorMessage")
    tenant = tenant_name(table[0], svc["id"])
    tcp = lab.kube.get("kamaji.clastix.io/v1alpha1", "TenantControlPlane", NAMESPACE, tenant)
    assert tcp["metadata"]["annotations"]["agentkube.io/service-name"] == table[0]  # the very string
    data = lab.fulcrum.get_service(svc["id"])["agentInstanceData"]
    assert data["tenantName"] == tenant
    assert not canary.exists(), "a payload in the service name executed"

    # the first create's kubeconfig, its base64 fields and their decoded PEM blocks: in no artifact, no log
    kubeconfig = data["kubeconfig"]
    parts = [kubeconfig, *_kubeconfig_fields(kubeconfig)]
    parts += [base64.b64decode(p).decode() for p in parts[1:] if _is_b64(p)]
    on_disk, logged = artifacts_text(lab), caplog.text
    for part in parts:
        assert part not in on_disk and json.dumps(part)[1:-1] not in on_disk, part[:40]
        assert part not in logged, part[:40]

    lab.fulcrum.state.rename_service(svc["id"], table[1])
    updated = finish(lab, lab.fulcrum.request_action(svc["id"], "update", copy.deepcopy(SPEC)))
    assert updated["status"] == "Completed", updated.get("errorMessage")
    assert lab.fulcrum.get_service(svc["id"])["agentInstanceData"]["tenantName"] == tenant
    owned = [t["metadata"]["name"] for t in lab.kube.list("kamaji.clastix.io/v1alpha1", "TenantControlPlane",
                                                          NAMESPACE)
             if t["metadata"].get("labels", {}).get("agentkube.io/service-id") == svc["id"]]
    assert owned == [tenant]  # the rename kept the tenant: no second TCP under the new name

    # Fulcrum echoes agentInstanceData back, and may lose the recorded name: payloads everywhere in it, and a
    # tenantName that is not this service's; the TCP is still found by its label
    lab.fulcrum.state._service(svc["id"]).agent_instance_data = {
        "endpoint": table[2], "tenantName": table[3], "kubernetesVersion": table[4],
        "nodes": [{"name": p, "vmid": p, "ip": p} for p in table], **{p: p for p in table}}
    deleted = finish(lab, lab.fulcrum.request_action(svc["id"], "delete"))
    assert deleted["status"] == "Completed", deleted.get("errorMessage")
    assert lab.kube.get("kamaji.clastix.io/v1alpha1", "TenantControlPlane", NAMESPACE, tenant) is None
    assert not canary.exists()


def _kubeconfig_fields(kubeconfig: str) -> list[str]:
    import yaml

    doc = yaml.safe_load(kubeconfig)
    out = []
    for section, key in (("clusters", "cluster"), ("users", "user")):
        for entry in doc.get(section) or []:
            for field, value in (entry.get(key) or {}).items():
                if field.endswith("-data") or field == "token":
                    out.append(value)
    return out


def _is_b64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True).decode()
    except ValueError:
        return False
    return True
