"""The kamaji_tcp role against the lab's Kamaji parent cluster (agentkube_lab.kube_emulator.KubeEmulator):
ansible-playbook with kubernetes.core over HTTPS, the same way the agent and operators run it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentkube.core.naming import tenant_name
from agentkube.core.tcp_manifest import TcpSettings, render_tcp
from agentkube.core.tenant_spec import validate_tenant_spec

kube_emulator = pytest.importorskip("agentkube_lab.kube_emulator", reason="the Kubernetes/Kamaji emulator")

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "kamaji_tcp.yml"
RENDER_PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "kamaji_tcp_render.yml"
NAMESPACE = "kamaji-tenants"
TCP = ("kamaji.clastix.io/v1alpha1", "TenantControlPlane")


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    state = tmp_path_factory.mktemp("kube")
    emulator = kube_emulator.KubeEmulator(state, ready_delay=0.3)
    emulator.start()
    emulator.kubeconfig_path = emulator.write_kubeconfig(state / "parent.kubeconfig")
    yield emulator
    emulator.stop()


def _ansible_env() -> dict[str, str]:
    return dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_ROLES_PATH=str(REPO / "roles"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )


@dataclass
class Run:
    rc: int
    changed: int
    failures: list[str]
    result: dict
    stdout: str


@dataclass
class Tenant:
    parent: object
    workdir: Path
    service_name: str
    service_id: str
    runs: int = 0

    @property
    def name(self) -> str:
        return tenant_name(self.service_name, self.service_id)

    def live(self) -> dict | None:
        return self.parent.get(*TCP, NAMESPACE, self.name)

    def run(self, spec: dict | None = None, state: str = "present", **settings) -> Run:
        self.runs += 1
        result_file = self.workdir / f"result-{self.runs}.json"
        variables = {
            "agentkube_service": {"id": self.service_id, "name": self.service_name},
            "kamaji_tcp_state": state,
            "kamaji_tcp_kubeconfig": str(self.parent.kubeconfig_path),
            "kamaji_tcp_poll_interval": 1,
            "kamaji_tcp_ready_timeout": 20,
            "kamaji_tcp_delete_timeout": 20,
            "kamaji_tcp_test_result_file": str(result_file),
            **settings,
        }
        if spec is not None:
            variables["agentkube_tenant"] = spec
        vars_file = self.workdir / f"vars-{self.runs}.json"
        vars_file.write_text(json.dumps(variables))
        vars_file.chmod(0o600)
        proc = subprocess.run(
            ["ansible-playbook", "-i", "localhost,", str(PLAYBOOK), "-e", f"@{vars_file}"],
            cwd=REPO, env=_ansible_env(), capture_output=True, text=True, timeout=300,
        )
        report = json.loads(proc.stdout)
        failures = [
            f"{task['task']['name']}: {host.get('msg', '')}"
            for play in report["plays"]
            for task in play["tasks"]
            for host in task["hosts"].values()
            if host.get("failed") and not host.get("_ansible_no_log")
            and not task["task"]["name"].startswith("Poll ")  # retried polls end in the rescue's message
        ]
        changed = sum(  # the role's changes; the test's own result file does not count
            1
            for play in report["plays"]
            for task in play["tasks"]
            for host in task["hosts"].values()
            if host.get("changed") and task["task"]["name"] != "Write the role's facts for the test"
        )
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        return Run(proc.returncode, changed, failures, result, proc.stdout)


@pytest.fixture
def tenant(parent, tmp_path):
    return Tenant(parent, tmp_path, f"Role Test {uuid.uuid4().hex[:6]}", str(uuid.uuid4()))


def spec(version="v1.35.7", **extra):
    return {"kubernetesVersion": version, **extra}


def version_status(tcp):
    return tcp["status"]["kubernetesResources"]["version"]["status"]


def test_create_waits_for_ready_returns_credentials_and_reruns_without_change(tenant, parent):
    first = tenant.run(spec(controlPlane={"replicas": 3}))
    assert first.rc == 0, first.failures
    assert first.changed > 0
    live = tenant.live()
    assert version_status(live) == "Ready"
    labels = live["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "agentkube"
    assert labels["agentkube.io/service-id"] == tenant.service_id
    # what `agentkube render tcp` prints is what the role applied (the API server adds CRD defaults)
    rendered = render_tcp(validate_tenant_spec(spec(controlPlane={"replicas": 3})),
                          tenant.service_name, tenant.service_id, TcpSettings())
    assert _contains(live, rendered)
    # facts: endpoint and the admin.conf of the admin kubeconfig Secret, never printed
    assert first.result["endpoint"] == f"https://{live['status']['controlPlaneEndpoint']}"
    secret = parent.get("v1", "Secret", NAMESPACE, live["status"]["kubeconfig"]["admin"]["secretName"])
    admin_conf = base64.b64decode(secret["data"]["admin.conf"]).decode()
    assert first.result["kubeconfig"] == admin_conf
    assert first.result["instance_id"] == f"{NAMESPACE}/{tenant.name}"
    assert admin_conf not in first.stdout
    assert secret["data"]["admin.conf"] not in first.stdout

    again = tenant.run(spec(controlPlane={"replicas": 3}))
    assert again.rc == 0, again.failures
    assert again.changed == 0
    assert tenant.live()["metadata"]["generation"] == live["metadata"]["generation"]


def _contains(big, small) -> bool:
    """`small` is a sub-document of `big` (the API server may add defaults)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v) for k, v in small.items())
    return big == small


RENDER_CASES = [
    ({"kubernetesVersion": "v1.35.7"}, "Plain", {}),
    (
        {"kubernetesVersion": "v1.33.1", "controlPlane": {"serviceType": "NodePort", "address": "10.0.0.9",
                                                          "certSANs": ["api.example.com", "10.0.0.10"]},
         "addons": {"coreDNS": False, "kubeProxy": True, "konnectivity": False}},
        "ÜBER Cluster 🚀 with a rather long name that goes on and on and on",
        {"kamaji_tcp_namespace": "tenants-x", "kamaji_tcp_datastore": "", "kamaji_tcp_cgroup_driver": "cgroupfs"},
    ),
    (
        {"kubernetesVersion": "v1.36.0", "controlPlane": {"address": "10.0.0.50", "replicas": 5}},
        'quote " and \\ backslash',
        {"kamaji_tcp_extra_spec": {"networkProfile": {"clusterDomain": "t.local", "podCidr": None},
                                   "controlPlane": {"deployment": {"replicas": 1}}},
         "kamaji_tcp_konnectivity_agent_mode": "Deployment", "kamaji_tcp_konnectivity_port": 9132},
    ),
]


@pytest.mark.parametrize(("tenant_spec", "service_name", "settings"), RENDER_CASES)
def test_the_role_renders_exactly_what_agentkube_render_prints(tmp_path, tenant_spec, service_name, settings):
    out = tmp_path / "manifest.json"
    variables = {"agentkube_service": {"id": "svc-42", "name": service_name}, "agentkube_tenant": tenant_spec,
                 "kamaji_tcp_test_manifest_file": str(out), **settings}
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(variables))
    proc = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(RENDER_PLAYBOOK), "-e", f"@{vars_file}"],
        cwd=REPO, env=_ansible_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    python_side = render_tcp(validate_tenant_spec(tenant_spec), service_name, "svc-42",
                             TcpSettings.from_vars(settings))
    assert json.loads(out.read_text()) == python_side


def test_fields_dropped_from_the_spec_leave_the_live_tcp(tenant):
    full = spec(controlPlane={"address": "10.0.0.60", "certSANs": ["api.example.com"]},
                addons={"coreDNS": True, "kubeProxy": True, "konnectivity": True})
    assert tenant.run(full).rc == 0
    live = tenant.live()
    assert live["spec"]["networkProfile"]["address"] == "10.0.0.60"
    assert "konnectivity" in live["spec"]["addons"]
    slim = spec(addons={"coreDNS": True, "kubeProxy": True, "konnectivity": False})
    run = tenant.run(slim)
    assert run.rc == 0, run.failures
    live = tenant.live()
    assert "address" not in live["spec"]["networkProfile"]
    assert "certSANs" not in live["spec"]["networkProfile"]
    assert "additionalMetadata" not in live["spec"]["controlPlane"]["service"]
    assert "konnectivity" not in live["spec"]["addons"]
    assert tenant.run(slim).changed == 0


def test_sleep_then_wake_restores_the_replicas(tenant):
    assert tenant.run(spec(controlPlane={"replicas": 3})).rc == 0
    asleep = tenant.run(state="sleeping")
    assert asleep.rc == 0, asleep.failures
    live = tenant.live()
    assert live["spec"]["controlPlane"]["deployment"]["replicas"] == 0
    assert version_status(live) == "Sleeping"
    assert asleep.result["status"] == "Sleeping"
    assert tenant.run(state="sleeping").changed == 0

    awake = tenant.run(spec(controlPlane={"replicas": 3}))
    assert awake.rc == 0, awake.failures
    live = tenant.live()
    assert live["spec"]["controlPlane"]["deployment"]["replicas"] == 3
    assert version_status(live) == "Ready"
    assert awake.result["endpoint"]


def test_sleeping_a_missing_tcp_fails_clearly(tenant):
    run = tenant.run(state="sleeping")
    assert run.rc != 0
    assert any("does not exist" in f for f in run.failures), run.failures


def test_upgrade_one_minor(tenant):
    assert tenant.run(spec("v1.34.2")).rc == 0
    up = tenant.run(spec("v1.35.7"))
    assert up.rc == 0, up.failures
    live = tenant.live()
    assert live["spec"]["kubernetes"]["version"] == "v1.35.7"
    assert version_status(live) == "Ready"
    assert up.result["version"] == "v1.35.7"


def test_a_skipped_minor_is_stepped_through_the_upgrade_path(tenant):
    assert tenant.run(spec("v1.33.4")).rc == 0
    # the emulator's webhook refuses a skipped minor, so reaching v1.35.2 proves the role stepped via 1.34
    up = tenant.run(spec("v1.35.2"), kamaji_tcp_upgrade_path={"1.34": "v1.34.3"})
    assert up.rc == 0, up.failures
    assert tenant.live()["spec"]["kubernetes"]["version"] == "v1.35.2"
    assert version_status(tenant.live()) == "Ready"


@pytest.mark.parametrize(
    ("start", "target", "settings", "message"),
    [
        ("v1.33.4", "v1.35.2", {"kamaji_tcp_upgrade_step_minors": False}, "skips minor version(s) 1.34"),
        ("v1.35.7", "v1.34.9", {}, "downgrade from v1.35.7 to v1.34.9"),
        ("v1.33.4", "v1.35.2", {"kamaji_tcp_upgrade_path": {"1.35": "v1.35.7"}}, "no version is known for 1.34"),
    ],
)
def test_refused_version_changes_touch_nothing(tenant, start, target, settings, message):
    assert tenant.run(spec(start)).rc == 0
    before = tenant.live()
    run = tenant.run(spec(target), **settings)
    assert run.rc != 0
    assert any(message in f and "kubernetesVersion" in f for f in run.failures), run.failures
    after = tenant.live()
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["kubernetes"]["version"] == start


def test_a_version_outside_the_window_is_refused_before_any_api_call(tenant, parent):
    before = sum(parent.request_count.values())
    run = tenant.run(spec("v1.35.7"), kamaji_tcp_max_version="v1.34")
    assert run.rc != 0
    assert any("agentkube_tenant.kubernetesVersion" in f and "outside the supported window" in f
               for f in run.failures), run.failures
    assert sum(parent.request_count.values()) == before


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"kubernetesVersion": "1.35"}, "agentkube_tenant.kubernetesVersion"),
        ({"kubernetesVersion": "v1.35.7", "controlPlane": {"serviceType": "NodePort"}},
         "agentkube_tenant.controlPlane.address"),
        ({"kubernetesVersion": "v1.35.7", "network": {"dnsServiceIP": "10.200.0.10"}},
         "agentkube_tenant.network.dnsServiceIP"),
        ({"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "a"}, {"name": "a"}]}, "agentkube_tenant.nodePools"),
        ({"kubernetesVersion": "v1.35.7", "size": "XL"}, "agentkube_tenant.size"),
    ],
)
def test_bad_specs_fail_naming_the_field_without_api_calls(tenant, parent, bad, field):
    before = sum(parent.request_count.values())
    run = tenant.run(bad)
    assert run.rc != 0
    assert any(f"{field}:" in f for f in run.failures), run.failures
    assert sum(parent.request_count.values()) == before
    assert tenant.live() is None


def test_not_ready_timeout_names_the_last_status_and_reason(tenant, parent):
    assert tenant.run(spec()).rc == 0
    parent.stick(NAMESPACE, tenant.name, "NotReady", reason="EtcdUnreachable", message="datastore default is down")
    try:
        run = tenant.run(spec(), kamaji_tcp_ready_timeout=3)
    finally:
        parent.unstick(NAMESPACE, tenant.name)
    assert run.rc != 0
    message = " ".join(run.failures)
    assert f"{NAMESPACE}/{tenant.name} did not become Ready within 3s" in message
    assert "last status NotReady" in message
    assert "EtcdUnreachable" in message and "datastore default is down" in message


def test_delete_then_delete_again(tenant):
    assert tenant.run(spec()).rc == 0
    gone = tenant.run(state="absent")
    assert gone.rc == 0, gone.failures
    assert gone.changed > 0
    assert tenant.live() is None
    again = tenant.run(state="absent")
    assert again.rc == 0, again.failures
    assert again.changed == 0


def test_deleting_a_tcp_that_never_existed_succeeds(tenant):
    run = tenant.run(state="absent")
    assert run.rc == 0, run.failures
    assert run.changed == 0
