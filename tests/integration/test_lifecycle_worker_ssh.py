"""Workers as real VMs, through the agent and the whole lab: a fresh worker whose SSH answers late is waited for (up
to the operator's bound, then the job fails naming the VM), and a worker presenting another host key than the one
its guest agent reported is refused before anything is sent to it. Needs root and the cached Debian 12 root
filesystem (the lab boots each worker VM: cloud-init applied, an sshd on its address in 127.0.0.0/8)."""

from __future__ import annotations

import pytest
from agent_harness import job_done, lifecycle_lab, wait_for

from agentkube.core.naming import tenant_name
from agentkube_lab.lab import Lab, emulated_workers_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMESPACE = "kamaji-tenants"
SPEC = {"kubernetesVersion": "v1.35.7", "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [{"name": "edge", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}]}
CONNECT_BOUND = 40  # agentkube_worker_connect_timeout_seconds of this lab's operator


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    ok, why = emulated_workers_available()
    if not ok:
        pytest.skip(f"emulated workers unavailable: {why}")
    with lifecycle_lab(tmp_path_factory.mktemp("worker-ssh") / "lab", tcp_ready_delay=0.2, emulated_workers=True,
                       operator_vars={"agentkube_worker_connect_timeout_seconds": CONNECT_BOUND}) as lab:
        yield lab


@pytest.fixture(autouse=True)
def no_faults(lab):
    yield
    lab.pve.guests.ssh_delay = 0.0
    lab.pve.guests.impostors.clear()


def create(lab: Lab, title: str) -> tuple[dict, str, dict]:
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service(title, lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, SPEC)
    job = next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"])
    wait_for(lambda: job_done(lab, job["id"]), 400, interval=0.5, what="the create job")
    return svc, f"{tenant_name(title, svc['id'])}-edge-0", lab.fulcrum.get_job(job["id"])


def delete(lab: Lab, svc: dict) -> None:
    job = lab.fulcrum.request_action(svc["id"], "delete")
    wait_for(lambda: job_done(lab, job["id"]), 300, interval=0.5, what="the delete job")
    assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"


def nodes(lab: Lab, svc: dict, title: str) -> list[str]:
    tenant = lab.kube.tenant(NAMESPACE, tenant_name(title, svc["id"]))
    return [n["metadata"]["name"] for n in tenant.store.list(tenant.store.resolve("v1", "Node"), None)[0]]


def sshd_log(lab: Lab, node: str) -> str:
    """What the VM's sshd logged (it must have run)."""
    logs = sorted(lab.workers_dir.glob(f"{node}-*.sshd.log"))
    assert logs, f"no sshd log of {node} in {lab.workers_dir}"
    return "\n".join(p.read_text(errors="replace") for p in logs)


def test_a_worker_whose_ssh_answers_late_is_waited_for_and_joined(lab):
    lab.pve.guests.ssh_delay = CONNECT_BOUND / 2
    svc, node, job = create(lab, "Late SSH")
    assert job["status"] == "Completed", job.get("errorMessage")
    assert nodes(lab, svc, "Late SSH") == [node]
    root = lab.worker_root(node)
    # Reached as the cloud-init user, root work through sudo; the packages came from the lab's pkgs.k8s.io.
    assert "agentkube ALL=(ALL) NOPASSWD:ALL" in (root / "etc/sudoers.d/90-cloud-init-users").read_text().splitlines()
    assert "Accepted publickey for agentkube" in sshd_log(lab, node)
    held = (root / "var/lib/dpkg/status").read_text()
    assert "Package: kubeadm\nStatus: hold ok installed" in held and "Version: 1.35.7-1.1" in held
    # The join configuration holding the bootstrap token is gone from the worker (its record is token-free), and
    # the SSH private key reached none of the agent's files (ansible-runner artifacts, job events, its log).
    assert not (root / "etc/kubernetes/kubeadm-join.yaml").exists()
    assert "token: \"REDACTED\"" in (root / "etc/kubernetes/kubeadm-join.redacted.yaml").read_text()
    private = "".join(lab.ssh_key.read_text().splitlines()[1:-1])
    secrets = [private[i:i + 40] for i in range(0, len(private), 40)]
    for path in (lab.state_dir / "agent").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets), f"the SSH private key leaked into {path}"
    delete(lab, svc)


def test_a_worker_that_never_answers_fails_the_job_naming_it_at_the_operators_bound(lab):
    lab.pve.guests.ssh_delay = CONNECT_BOUND * 4
    svc, node, job = create(lab, "No SSH")
    assert job["status"] == "Failed"
    assert node in job["errorMessage"] and f"no SSH answer after {CONNECT_BOUND}s" in job["errorMessage"], \
        job["errorMessage"]
    lab.pve.guests.ssh_delay = 0.0
    delete(lab, svc)
    assert lab.leftovers() == []


def test_a_worker_presenting_another_host_key_is_refused_and_sent_nothing(lab):
    title = "Impostor"
    assert lab.catalog is not None
    svc = lab.fulcrum.create_service(title, lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                     lab.catalog.agent_id, SPEC)
    node = f"{tenant_name(title, svc['id'])}-edge-0"
    lab.pve.guests.impostors.add(node)
    job = next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"])
    wait_for(lambda: job_done(lab, job["id"]), 400, interval=0.5, what="the create job")
    failed = lab.fulcrum.get_job(job["id"])
    assert failed["status"] == "Failed"
    message = failed["errorMessage"]
    assert node in message and "presents the host key" in message and "nothing was sent to it" in message, message
    log = sshd_log(lab, node)  # the impostor's sshd ran, and no one tried to authenticate to it
    assert "Accepted" not in log and "publickey" not in log and "Failed" not in log, log
    root = lab.worker_root(node)
    assert not (root / "etc/kubernetes/kubeadm-join.yaml").exists()
    assert not (root / "etc/kubernetes/pki/ca.crt").exists()
    assert nodes(lab, svc, title) == []
    delete(lab, svc)
    assert lab.leftovers() == []
