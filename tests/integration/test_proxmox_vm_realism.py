"""The proxmox_vm role against a lab that behaves like a real Proxmox VE cluster (PveLab(realistic=True)):
/cluster/resources lags behind (pvestatd), a cloning VM has no name, every clone is HA-managed, and the agent's
token holds only the privileges roles/proxmox_vm/README.md documents.

Each test is one behaviour: a whole lifecycle under the least-privileged token with HA-managed VMs; two tenants
created at once; a run that ends between clone and configure, then a converging run (and a duplicate orphan);
a clone whose answer is lost; a VMID taken on another node."""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
from pathlib import Path

import pytest
from proxmox_vm_harness import Tenant, assert_clean_cluster, pools, snapshot, tenant_vms

from agentkube_lab.pve_lab import VM_STORAGE, PveLab, template_vmid

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = PveLab(tmp_path_factory.mktemp("pve-real"), time_scale=0.01, realistic=True).start()
    lab.fake.max_requests = 10**7
    yield lab
    lab.stop()


def names(t: Tenant, count: int) -> list[str]:
    return [f"{t.name}-default-{i}" for i in range(count)]


def assert_converged(vm) -> None:
    """Configured before it was started, and running."""
    config = vm.config
    assert config.get("ciuser") == "agentkube", vm.name
    assert str(config.get("ipconfig0", "")).startswith("ip=127.0.10."), vm.name
    assert config.get("nameserver") == "127.0.10.1" and "sshkeys" in config, vm.name
    assert str(config.get("onboot")) == "1", vm.name
    assert vm.status == "running", vm.name


def test_lifecycle_under_the_least_privileged_token_with_ha_managed_vms(lab, tmp_path):
    assert lab.fake.acl, "the realistic lab's token holds only the documented privileges"
    t = Tenant(lab, tmp_path, "real")
    run = t.run(pools(("default", 2)))
    assert run.rc == 0, run.stdout[-3000:]
    state = snapshot(lab)
    vms = tenant_vms(state, t.service_id)
    assert sorted(vm.name for vm in vms) == names(t, 2)
    for vm in vms:
        assert_converged(vm)
    assert {n["status"] for n in run.nodes} == {"running"}  # read live, not from the lagging list
    kinds = [task["type"] for task in state.tasklog]
    assert "hastart" in kinds  # the clones are HA-managed: the starts were HA requests, waited to running

    again = t.run(pools(("default", 2)))
    assert again.rc == 0, again.stdout[-3000:]
    assert sorted(vm.vmid for vm in tenant_vms(snapshot(lab), t.service_id)) == sorted(vm.vmid for vm in vms)

    gone = t.run(state="absent")
    assert gone.rc == 0, gone.stdout[-3000:]
    state = snapshot(lab)
    assert tenant_vms(state, t.service_id) == []
    assert "hastop" in [task["type"] for task in state.tasklog]  # stopped through HA, waited to stopped
    for vm in vms:  # destroyed with purge=1, which took each out of the HA resources
        assert any(f"NOTE: removed VM {vm.vmid} from HA resource configuration." in "\n".join(task["log"])
                   for task in state.tasklog if task["type"] == "qmdestroy" and task["id"] == str(vm.vmid))


def test_two_tenants_created_at_once_share_no_vmid_and_no_address(lab, tmp_path):
    one, two = Tenant(lab, tmp_path / "a", "conc"), Tenant(lab, tmp_path / "b", "concb")
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        runs = list(ex.map(lambda t: t.run(pools(("default", 3))), [one, two]))
    assert [r.rc for r in runs] == [0, 0], runs[0].stdout[-2000:] + runs[1].stdout[-2000:]
    state = snapshot(lab)
    assert_clean_cluster(state, {one.service_id: names(one, 3), two.service_id: names(two, 3)})
    for vm in tenant_vms(state, one.service_id) + tenant_vms(state, two.service_id):
        assert_converged(vm)


def test_a_run_ended_between_clone_and_configure_then_a_run_that_converges(lab, tmp_path):
    t = Tenant(lab, tmp_path, "orph", settings={"proxmox_vm_vmid_min": 4500, "proxmox_vm_vmid_max": 4599})
    lab.fake.fail("POST", "/nodes/{node}/qemu/{vmid}/config", 500, "interrupted")  # the run ends after its clones
    try:
        first = t.run(pools(("default", 2)))
    finally:
        lab.fake.failures.clear()
    assert first.rc != 0
    orphans = [vm for vm in snapshot(lab).vms if vm.name in names(t, 2)]
    assert len(orphans) == 2 and all(vm.status == "stopped" and "ciuser" not in vm.config for vm in orphans)

    healed = t.run(pools(("default", 2)))
    assert healed.rc == 0, healed.stdout[-3000:]
    state = snapshot(lab)
    assert sorted(vm.vmid for vm in tenant_vms(state, t.service_id)) == sorted(vm.vmid for vm in orphans)
    for vm in tenant_vms(state, t.service_id):
        assert_converged(vm)

    # A late clone of the same name (an earlier request whose answer was lost), lower vmid, never configured:
    # the configured VM is kept, the orphan removed.
    kept = min(tenant_vms(state, t.service_id), key=lambda vm: vm.name)
    lab.call(lambda: lab.fake.add_vm(4499, kept.name, node="pve1", config={
        "description": f"agentkube: service={t.service_id} ip=127.0.10.198", "tags": "k8s-1-35;template",
        "scsi0": f"{VM_STORAGE}:vm-4499-disk-0,size=10G", "net0": "virtio=BC:24:11:00:44:99,bridge=vmbr0"}))
    deduped = t.run(pools(("default", 2)))
    assert deduped.rc == 0, deduped.stdout[-3000:]
    state = snapshot(lab)
    assert 4499 not in {vm.vmid for vm in state.vms}
    assert_clean_cluster(state, {t.service_id: names(t, 2)})
    assert kept.vmid in {vm.vmid for vm in tenant_vms(state, t.service_id)}


def test_a_clone_whose_answer_was_lost_is_looked_for_not_sent_again(lab, tmp_path):
    t = Tenant(lab, tmp_path, "lost", settings={"proxmox_vm_api_timeout": 2, "proxmox_vm_vmid_min": 4600,
                                                "proxmox_vm_vmid_max": 4699})
    since = len(lab.fake.requests)
    lab.lose_clone_answers(1, hang=6.0)
    run = t.run(pools(("default", 2)))
    assert run.rc == 0, run.stdout[-3000:]
    state = snapshot(lab)
    assert_clean_cluster(state, {t.service_id: names(t, 2)})
    clones = [path for method, path, _ in state.requests[since:] if method == "POST" and path.endswith("/clone")]
    assert len(clones) == 2, clones  # one per VM: the one without an answer was found, not repeated


PLUGINS = "ansible_collections.agentkube.kamaji.plugins"


def _clone_module():
    return importlib.import_module(f"{PLUGINS}.modules.proxmox_vm_clone")


def test_a_vmid_taken_on_another_node_fails_in_the_task_and_gets_a_fresh_id(lab):
    clone = _clone_module()
    api = importlib.import_module(f"{PLUGINS}.module_utils.proxmox_api")
    alloc_mod = importlib.import_module(f"{PLUGINS}.module_utils.proxmox_vm_allocation")
    client = api.PveClient(lab.host, lab.port, lab.token_id, lab.token_secret, verify=lab.ca_file, retry_delay=0.05)
    allocator = alloc_mod.Allocator(client, 4700, 4710).refresh()
    # Created on pve2 after the allocator looked: the clone on pve1 passes PVE's early check and fails in its task.
    lab.call(lambda: lab.fake.add_vm(4700, "someone-else", node="pve2"))
    params = {"service_id": "0d7c3a52-8f0e-4a8e-9d53-8f1c0f6f2a10", "owner_tag": "agentkube",
              "template_vmid": template_vmid("1.35"), "template_node": "pve1", "target_nodes": ["pve1"],
              "storage": VM_STORAGE, "resource_pool": "agentkube", "full_clone": True, "concurrency_per_storage": 1,
              "ip_mode": "dhcp"}
    done = clone.Cloner(client, allocator, params).clone_one({"name": "xnode-default-0", "index": 0})
    assert done["vmid"] == 4701
    failed = [task["exitstatus"] for task in snapshot(lab).tasklog if task["type"] == "qmclone"
              and "4700.conf" in str(task.get("exitstatus"))]
    assert failed == ["close (rename) atomic file '/etc/pve/nodes/pve1/qemu-server/4700.conf' failed: File exists"]
    lab.call(lambda: [lab.fake.vms.remove(lab.fake.vm(vmid)) for vmid in (4700, 4701)])
