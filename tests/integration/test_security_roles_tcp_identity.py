"""TCP identity (issue 10, item 6): the kamaji_tcp role finds a tenant's TenantControlPlane by its
agentkube.io/service-id label, never by its name alone, against the lab's Kamaji parent cluster.

- A TCP of the wanted name labelled for another service (or for none) is never adopted, changed or deleted:
  present, sleeping and absent all fail naming it.
- A renamed service (other name, same id) keeps its TCP, with or without agentkube_tenant_name.
- delete finds the TCP by its label when its name is not the one derived from the service's current name.
- The vars contract (playbooks/validate.yml) accepts a recorded name that belongs to the service and refuses one
  that does not.

Shares the parent emulator fixture and the role driver of test_kamaji_tcp_role.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import test_kamaji_tcp_role
from test_kamaji_tcp_role import NAMESPACE, REPO, TCP, Tenant, _ansible_env, spec

from agentkube.core.naming import tenant_name
from agentkube.core.tcp_manifest import TcpSettings, render_tcp
from agentkube.core.tenant_spec import validate_tenant_spec

pytestmark = pytest.mark.integration

LABEL = "agentkube.io/service-id"
LAB_CNI = REPO / "roles" / "tenant_baseline" / "files" / "lab-cni-stand-in.yaml"
parent = test_kamaji_tcp_role.parent  # the module-scoped parent cluster fixture, one per test module


def _fresh(parent, tmp_path, name: str | None = None) -> Tenant:
    return Tenant(parent, tmp_path, name or f"Identity {uuid.uuid4().hex[:6]}", str(uuid.uuid4()))


def _seed_foreign_tcp(parent, name: str, labels: dict[str, str]) -> dict:
    """A TCP named `name` that this test's service does not own (rendered for another service)."""
    manifest = render_tcp(validate_tenant_spec(spec()), "Someone Else", str(uuid.uuid4()), TcpSettings())
    manifest["metadata"]["name"] = name
    manifest["metadata"]["labels"] = labels
    if parent.get("v1", "Namespace", None, NAMESPACE) is None:
        parent.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    parent.put_object(manifest)
    deadline = time.monotonic() + 20  # let the lab's Kamaji controller settle it (defaults, status)
    while time.monotonic() < deadline:
        tcp = parent.get(*TCP, NAMESPACE, name)
        if ((tcp.get("status") or {}).get("kubernetesResources") or {}).get("version", {}).get("status") == "Ready":
            break
        time.sleep(0.1)
    return parent.get(*TCP, NAMESPACE, name)


def _untouched(before: dict, after: dict | None) -> bool:
    return (after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
            and after["metadata"].get("generation") == before["metadata"].get("generation")
            and after["metadata"]["labels"] == before["metadata"]["labels"] and after["spec"] == before["spec"])


def _owned(parent, service_id: str) -> list[dict]:
    return parent.list(*TCP, NAMESPACE, label_selector=f"{LABEL}={service_id}")


@pytest.mark.parametrize("labels", [
    {LABEL: "another-service", "app.kubernetes.io/managed-by": "agentkube"},
    {"app.kubernetes.io/managed-by": "someone"},
], ids=["labelled-for-another-service", "no-service-label"])
def test_a_tcp_of_the_wanted_name_owned_by_another_service_is_never_touched(parent, tmp_path, labels):
    t = _fresh(parent, tmp_path)
    foreign = _seed_foreign_tcp(parent, t.name, labels)
    for state, tenant_spec in (("present", spec(controlPlane={"replicas": 3})), ("sleeping", None),
                               ("absent", None)):
        run = t.run(tenant_spec, state=state)
        assert run.rc != 0, f"{state} succeeded on a foreign TCP"
        message = " ".join(run.failures)
        assert f"{NAMESPACE}/{t.name} is not owned by this service" in message, run.failures
        assert labels.get(LABEL, "missing") in message and t.service_id in message
        assert _untouched(foreign, parent.get(*TCP, NAMESPACE, t.name)), state
    assert _owned(parent, t.service_id) == []


def test_a_renamed_service_keeps_its_tcp(parent, tmp_path):
    t = _fresh(parent, tmp_path, "Before Rename")
    created = t.run(spec())
    assert created.rc == 0, created.failures
    original = t.name
    live = parent.get(*TCP, NAMESPACE, original)

    t.service_name = "After Rename"  # same id; the agent hands back the recorded name
    assert t.name != original
    kept = t.run(spec(), agentkube_tenant_name=original)
    assert kept.rc == 0, kept.failures
    after = parent.get(*TCP, NAMESPACE, original)
    assert after["metadata"]["uid"] == live["metadata"]["uid"]
    assert after["spec"] == live["spec"]  # only the informative service-name annotation follows the rename
    assert after["metadata"]["annotations"]["agentkube.io/service-name"] == "After Rename"
    assert kept.result["name"] == original
    assert kept.result["instance_id"] == f"{NAMESPACE}/{original}"

    # Without the recorded name (an older agentInstanceData): still found by its label, never a second TCP.
    found = t.run(spec())
    assert found.rc == 0, found.failures
    assert found.result["name"] == original
    assert parent.get(*TCP, NAMESPACE, t.name) is None
    assert [o["metadata"]["name"] for o in _owned(parent, t.service_id)] == [original]
    assert parent.get(*TCP, NAMESPACE, original)["metadata"]["uid"] == live["metadata"]["uid"]

    asleep = t.run(state="sleeping")
    assert asleep.rc == 0, asleep.failures
    assert parent.get(*TCP, NAMESPACE, original)["spec"]["controlPlane"]["deployment"]["replicas"] == 0


def test_delete_finds_the_tcp_by_its_label_whatever_its_name(parent, tmp_path):
    t = _fresh(parent, tmp_path, "Old Name")
    assert t.run(spec()).rc == 0
    original = t.name
    t.service_name = "New Name"
    gone = t.run(state="absent")
    assert gone.rc == 0, gone.failures
    assert gone.changed > 0
    assert parent.get(*TCP, NAMESPACE, original) is None
    assert _owned(parent, t.service_id) == []
    again = t.run(state="absent")
    assert again.rc == 0 and again.changed == 0, again.failures


def test_two_tcps_labelled_for_one_service_fail_naming_both(parent, tmp_path):
    t = _fresh(parent, tmp_path)
    first = f"dup-a-{uuid.uuid4().hex[:6]}"
    second = f"dup-b-{uuid.uuid4().hex[:6]}"
    for name in (first, second):
        _seed_foreign_tcp(parent, name, {LABEL: t.service_id})
    run = t.run(state="absent")
    assert run.rc != 0
    message = " ".join(run.failures)
    assert first in message and second in message and "a service has one" in message, run.failures
    assert parent.get(*TCP, NAMESPACE, first) is not None and parent.get(*TCP, NAMESPACE, second) is not None


def _validate(tmp_path, service_name: str, service_id: str, tenant: str) -> subprocess.CompletedProcess:
    variables = {"agentkube_job": {"id": str(uuid.uuid4()), "action": "validate"},
                 "agentkube_service": {"id": service_id, "name": service_name},
                 "agentkube_tenant_name": tenant, "agentkube_tenant": spec(), "agentkube_previous": {},
                 "tenant_baseline_cni_manifest_files": {"calico": [str(LAB_CNI)], "cilium": []}}
    vars_file = tmp_path / f"vars-{uuid.uuid4().hex[:6]}.json"
    vars_file.write_text(json.dumps(variables))
    vars_file.chmod(0o600)
    return subprocess.run(["ansible-playbook", "-i", "localhost,", str(REPO / "playbooks" / "validate.yml"),
                           "-e", f"@{vars_file}"], cwd=REPO, env=_ansible_env(), capture_output=True, text=True,
                          timeout=120)


def test_the_contract_accepts_a_recorded_name_of_the_service_and_refuses_another(tmp_path):
    service_id = str(uuid.uuid4())
    recorded = tenant_name("The Old Name", service_id)
    ok = _validate(tmp_path, "A New Name", service_id, recorded)
    assert ok.returncode == 0, ok.stdout[-3000:]

    someone_elses = tenant_name("The Old Name", str(uuid.uuid4()))
    refused = _validate(tmp_path, "A New Name", service_id, someone_elses)
    assert refused.returncode != 0
    assert "agentkube_tenant_name: must be a DNS-1035 label" in refused.stdout

    for bad in ("Not-A-Label-" + recorded[-6:], recorded + "\n", "x" * 40 + "-" + recorded[-6:]):
        run = _validate(tmp_path, "A New Name", service_id, bad)
        assert run.returncode != 0, bad
        assert "agentkube_tenant_name" in run.stdout, bad
