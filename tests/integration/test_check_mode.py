"""Break-glass as kubespray users expect it (README, "Running the playbooks by hand"): `--check` runs an action
end to end, reports what it would change and changes nothing in the lab; `--tags`/`--skip-tags` select the
concerns (validation always runs first). One lab for the module; the playbooks are typed as `agentkube render
job` prints them, with the extra options appended."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from test_break_glass import NAMESPACE, rendered_command

from agentkube_lab.lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TCP = ("kamaji.clastix.io/v1alpha1", "TenantControlPlane")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(tmp_path_factory.mktemp("check-mode") / "lab", emulated_workers=False, tcp_ready_delay=0.2) as lab:
        yield lab


@pytest.fixture(scope="module")
def existing(lab, tmp_path_factory):
    """A tenant created for real (TCP Ready, its worker VM running)."""
    svc = lab.create_rehearsal_service("Check Existing")
    before = snapshot(lab)
    created = playbook(lab, svc["id"], "create", tmp_path_factory.mktemp("existing"))
    assert created.returncode == 0, created.stdout[-4000:]
    after = snapshot(lab)  # the snapshots see what a real run does, in both emulators
    assert after[0] != before[0] and after[1] != before[1]
    assert [t["metadata"]["labels"]["agentkube.io/service-id"] for t in lab.kube.list(*TCP, NAMESPACE)] == [svc["id"]]
    assert vms(lab), "the real create made no VM"
    return svc


def playbook(lab: Lab, service_id: str, action: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The action's playbook as `agentkube render job` prints it, plus `extra` options."""
    command, env = rendered_command(lab, service_id, action, out)
    return subprocess.run([*command, *extra], cwd=out, capture_output=True, text=True, env=env, timeout=600)


def vms(lab: Lab) -> list[tuple]:
    """Every VM of fakepve with its node, power state and whole config."""
    def read():
        fake = lab.pve.fake
        every = list(fake.vms.values()) if isinstance(fake.vms, dict) else list(fake.vms)
        return sorted((vm.vmid, vm.node, getattr(vm, "status", None), json.dumps(vm.config, sort_keys=True,
                                                                                  default=str)) for vm in every)
    return lab.pve.call(read)


def kube(lab: Lab) -> tuple:
    """The parent cluster's and every tenant's store version (any write moves it) and the TCPs as stored."""
    tenants = sorted((key, t.store.resource_version) for key, t in lab.kube.controller.tenants.items())
    tcps = sorted(json.dumps(t, sort_keys=True) for t in lab.kube.list(*TCP))
    return lab.kube.store.resource_version, tenants, tcps


def snapshot(lab: Lab) -> tuple:
    return vms(lab), kube(lab)


def changed(run: subprocess.CompletedProcess) -> int:
    recap = re.search(r"^localhost\s*:.*\bchanged=(\d+)", run.stdout, re.M)
    assert recap, f"no PLAY RECAP for localhost:\n{run.stdout[-3000:]}"
    return int(recap.group(1))


def reported_changed(run: subprocess.CompletedProcess, task: str) -> bool:
    """The task (role : name) ran and reported changed."""
    return re.search(re.escape(task) + r"\][^\n]*\nchanged:", run.stdout) is not None


def test_check_create_on_an_empty_lab_reports_changes_and_changes_nothing(lab, tmp_path):
    svc = lab.create_rehearsal_service("Check Create")
    before = snapshot(lab)
    run = playbook(lab, svc["id"], "create", tmp_path, "--check", "--diff")
    assert run.returncode == 0, run.stdout[-4000:]
    assert snapshot(lab) == before, "create --check changed the lab"
    assert lab.leftovers() == []
    assert changed(run) > 0, "create --check reported nothing it would change"
    assert reported_changed(run, "proxmox_vm : Clone the new VMs"), run.stdout[-4000:]
    assert "check mode: a real run would clone" in run.stdout
    assert "check mode: a real run would wait" in run.stdout  # the new TCP's Ready, predicted
    assert "check mode: a real run would apply the tenant baseline" in run.stdout


@pytest.mark.parametrize("action", ["delete", "stop", "update"])
def test_check_on_an_existing_tenant_changes_nothing(lab, existing, tmp_path, action):
    before = snapshot(lab)
    run = playbook(lab, existing["id"], action, tmp_path, "--check")
    assert run.returncode == 0, run.stdout[-4000:]
    assert snapshot(lab) == before, f"{action} --check changed the lab"
    if action in ("delete", "stop"):  # the VM and the TCP are there: a real run would delete / stop them
        assert changed(run) > 0, f"{action} --check reported nothing it would change:\n{run.stdout[-3000:]}"
    if action == "delete":
        assert reported_changed(run, "proxmox_vm : Delete VMs"), run.stdout[-4000:]
        assert reported_changed(run, "kamaji_tcp : Delete the TenantControlPlane"), run.stdout[-4000:]


def test_skip_tags_proxmox_touches_no_vm(lab, tmp_path):
    svc = lab.create_rehearsal_service("Skip Proxmox")
    before = vms(lab)
    run = playbook(lab, svc["id"], "create", tmp_path, "--skip-tags", "proxmox")
    assert run.returncode == 0, run.stdout[-4000:]
    assert vms(lab) == before, "create --skip-tags proxmox touched a VM"
    assert "proxmox_vm : Find the VMs the service owns" not in run.stdout  # only the settings were checked
    tcp = [t for t in lab.kube.list(*TCP, NAMESPACE) if t["metadata"]["labels"]["agentkube.io/service-id"] == svc["id"]]
    assert len(tcp) == 1, "the control plane was not converged"


def test_tags_validate_runs_the_validation_only(lab, tmp_path):
    svc = lab.create_rehearsal_service("Validate Only")
    before = snapshot(lab)
    run = playbook(lab, svc["id"], "create", tmp_path, "--tags", "validate")
    assert run.returncode == 0, run.stdout[-4000:]
    assert snapshot(lab) == before
    assert "Check the tenant spec" in run.stdout
    for step in ("kamaji_tcp : Converge to present", "proxmox_vm : Find the VMs the service owns",
                 "tenant_baseline : Install the CNI", "TASK [Return the result]"):
        assert step not in run.stdout, f"--tags validate ran {step!r}"
    assert re.search(r"Return the tenant's state\][^\n]*\nskipping:", run.stdout), "no result without a run"


@pytest.mark.parametrize("tags", [["--tags", "validate"], ["--tags", "proxmox"]])
def test_a_bad_spec_fails_naming_the_field_whatever_the_tags(lab, tmp_path, tags):
    svc = lab.create_rehearsal_service("Bad Spec")
    before = snapshot(lab)
    bad = {"kubernetesVersion": "v1.35.7",
           "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 5}]}
    run = playbook(lab, svc["id"], "create", tmp_path, *tags, "-e", json.dumps({"agentkube_tenant": bad}))
    assert run.returncode != 0, run.stdout[-4000:]
    assert "nodePools" in run.stdout and "diskGiB" in run.stdout, run.stdout[-4000:]
    assert "proxmox_vm : Find the VMs the service owns" not in run.stdout  # failed before any VM work
    assert snapshot(lab) == before
