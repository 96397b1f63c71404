"""Second line of defence (issue 10, item 3): proxmox_vm_remove and proxmox_vm_power re-read each VM's config
from Proxmox right before acting and refuse, naming the VMID and the tags found, a VM that does not carry the
agent's owner tag and this service's tag, whatever list the role handed them.

The lists are forged the way a hostile configuration would: extra vars named like the role's internal facts
(`proxmox_vm_to_remove`, `proxmox_vm_plan`), which beat the facts the role sets. Against the fakepve lab.
"""

from __future__ import annotations

import uuid

import pytest
from proxmox_vm_harness import Tenant, writes_to

from agentkube_lab.pve_lab import PveLab

pytestmark = pytest.mark.integration

NODE = "pve1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = PveLab(tmp_path_factory.mktemp("pve-ownership"), time_scale=0.01).start()
    lab.fake.max_requests = 10**7
    yield lab
    lab.stop()


def _seed(lab, vmid: int, name: str, tags: str | None, status: str, description: str | None = None):
    config = {"scsi0": f"vmstore:vm-{vmid}-disk-0,size=20G", "cores": 2, "memory": 2048}
    if tags is not None:
        config["tags"] = tags
    if description is not None:
        config["description"] = description
    return lab.call(lambda: lab.fake.add_vm(vmid, name, node=NODE, status=status, config=config))


def _vm(lab, vmid: int):
    return lab.call(lambda: next((vm for vm in lab.fake.vms if vm.vmid == vmid), None))


FOREIGN = [
    # another service's worker: the agent's owner tag, someone else's service tag
    ("another-service", "agentkube;pool-default;svc-{other};tenant-victim", None),
    # the operator's own VM: no tags at all, no clone marker
    ("untagged", None, None),
    # untagged, with another service's clone marker
    ("other-marker", None, "agentkube: service={other} ip=127.0.10.99"),
    # this service's svc- tag but not the agent's owner tag
    ("no-owner-tag", "pool-default;svc-{mine};tenant-victim", None),
]


@pytest.mark.parametrize(("case", "tags", "description"), FOREIGN, ids=[c[0] for c in FOREIGN])
def test_remove_refuses_a_vm_that_is_not_the_services(lab, tmp_path, case, tags, description):
    t = Tenant(lab, tmp_path, "own" + uuid.uuid4().hex[:4])
    other = str(uuid.uuid4())
    vmid = 4800 + FOREIGN.index(next(c for c in FOREIGN if c[0] == case))
    name = f"victim-default-{vmid}"
    fill = {"other": other, "mine": t.service_id}
    _seed(lab, vmid, name, tags.format(**fill) if tags else None, "running",
          description.format(**fill) if description else None)
    since = len(lab.fake.requests)

    run = t.run(state="absent", proxmox_vm_to_remove=[{"name": name, "vmid": vmid, "node": NODE}])

    assert run.rc != 0
    out = run.stdout
    assert f"refusing to touch VM {vmid} ({name})" in out and f"not owned by service {t.service_id}" in out, out
    found = "none" if tags is None else ";".join(sorted(tags.format(**fill).split(";")))
    assert f"tags found: {found}" in out, out
    vm = _vm(lab, vmid)
    assert vm is not None and vm.status == "running"
    assert writes_to(lab.fake, {vmid}, since) == []


def test_power_refuses_to_stop_or_start_a_vm_that_is_not_the_services(lab, tmp_path):
    t = Tenant(lab, tmp_path, "pow" + uuid.uuid4().hex[:4])
    other = str(uuid.uuid4())
    running, stopped = 4850, 4851
    tags = f"agentkube;pool-default;svc-{other};tenant-victim"
    _seed(lab, running, "victim-default-0", tags, "running")
    _seed(lab, stopped, "victim-default-1", tags, "stopped")
    since = len(lab.fake.requests)

    def forged(vmid, name):
        return {"proxmox_vm_plan": {"create": [], "remove": [],
                                    "keep": [{"name": name, "vmid": vmid, "node": NODE, "pool": "default"}]}}

    stop = t.run(state="stopped", **forged(running, "victim-default-0"))
    assert stop.rc != 0
    assert f"refusing to touch VM {running} (victim-default-0)" in stop.stdout, stop.stdout
    assert f"svc-{other}" in stop.stdout
    start = t.run(state="started", **forged(stopped, "victim-default-1"))
    assert start.rc != 0
    assert f"refusing to touch VM {stopped} (victim-default-1)" in start.stdout, start.stdout

    assert _vm(lab, running).status == "running"
    assert _vm(lab, stopped).status == "stopped"
    assert writes_to(lab.fake, {running, stopped}, since) == []


def test_the_services_own_vms_are_still_stopped_and_deleted(lab, tmp_path):
    """The check does not get in the way: a VM tagged for this service, and an untagged half-made clone with
    this service's marker, are removed."""
    t = Tenant(lab, tmp_path, "mine" + uuid.uuid4().hex[:4])
    tagged, half_made = 4870, 4871
    _seed(lab, tagged, f"{t.name}-default-0", f"agentkube;pool-default;svc-{t.service_id};tenant-{t.name}",
          "running")
    _seed(lab, half_made, f"{t.name}-default-1", None, "stopped",
          f"agentkube: service={t.service_id} ip=127.0.10.98")
    run = t.run(state="absent")
    assert run.rc == 0, run.stdout[-3000:]
    assert _vm(lab, tagged) is None and _vm(lab, half_made) is None
