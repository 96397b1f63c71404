"""The proxmox_vm role's VM options against the fakepve lab: CPU type, sockets, ballooning, a data disk and extra
NICs/VLANs (proxmox_vm_cpu_type, _sockets, _balloon, _data_disk, _extra_nets).

- One tenant's story on its own lab, in the background: created with every option -> re-run -> every option
  changed on the running VMs -> re-run -> a data disk shrink, refused. The tests check snapshots of each step.
- Bad settings are refused on the shared lab before any request reaches it, naming each variable.
- Under the least-privileged token (the README's privileges): an extra NIC on a bridge the token may not use fails
  with Proxmox's 403; granted SDN.Use on that bridge as the README documents, a re-run converges.
"""

from __future__ import annotations

import json

import pytest
import test_proxmox_vm_role as role_tests
from proxmox_vm_harness import Tenant, pools, snapshot, tenant_vms, writes_to
from test_proxmox_vm_role import by_name, tenant_story

from agentkube_lab.pve_lab import VM_STORAGE, PveLab, mac_of
from agentkube_lab.pve_realism import Realism, role_privileges

pytestmark = pytest.mark.integration

# The role tests' fixtures: the shared lab (module scope: one for this module) and a tenant on it.
lab = role_tests.lab
tenant = role_tests.tenant

SIZES = {"cores": 2, "memory": 2048, "disk": 20}
OPTIONS = {
    "proxmox_vm_cpu_type": "host",
    "proxmox_vm_sockets": 2,
    "proxmox_vm_balloon": 1024,
    "proxmox_vm_data_disk": {"size_gib": 30, "bus": "scsi1"},
    "proxmox_vm_extra_nets": [{"bridge": "vmbr1", "vlan": 42, "firewall": True, "dhcp": True},
                              {"bridge": "vmbr2", "model": "e1000"}],
}
CHANGED = {
    "proxmox_vm_cpu_type": "x86-64-v2-AES",
    "proxmox_vm_sockets": 1,
    "proxmox_vm_balloon": 0,
    "proxmox_vm_data_disk": {"size_gib": 40, "storage": VM_STORAGE, "bus": "scsi1"},
    "proxmox_vm_extra_nets": [{"bridge": "vmbr1", "vlan": 43, "firewall": True}],
}


def effective(vm) -> dict:
    """The config the VM runs with after its next boot: pending values over the current ones, pending deletes gone."""
    config = {**vm.config, **{k: v for k, v in vm.pending.items() if v is not None}}
    return {k: v for k, v in config.items() if vm.pending.get(k, "") is not None}


def volumes(lab: PveLab) -> dict:
    """The lab storage's volumes (name -> {size, vmid ...}), read in the fake's thread."""
    return lab.call(lambda: {name: dict(v) for name, v in lab.fake.storages[VM_STORAGE]["volumes"].items()})


def failures(run) -> str:
    """The messages of the run's failed tasks, from ansible-runner's job events (stdout wraps and quotes them)."""
    found = []
    for path in sorted(run.artifacts.rglob("job_events/*.json")):
        event = json.loads(path.read_text())
        if event.get("event") == "runner_on_failed":
            res = event["event_data"]["res"]
            found += [str(res.get("msg", "")), *map(str, res.get("argument_errors") or [])]
    return "\n".join(found)


# ------------------------------------------------------------------ the options story


def options_steps(lab: PveLab, t: Tenant) -> list:
    def step(**settings):
        def run(_seen):
            mark = len(lab.fake.requests)
            result = t.run(pools(("default", 2), **SIZES), **settings)
            return {"run": result, "mark": mark, "after": snapshot(lab), "volumes": volumes(lab)}
        return run

    return [
        ("created", step(**OPTIONS)),
        ("rerun", step(**OPTIONS)),
        ("changed", step(**CHANGED)),
        ("changed_rerun", step(**CHANGED)),
        ("shrink", step(**dict(CHANGED, proxmox_vm_data_disk={"size_gib": 20, "bus": "scsi1"}))),
    ]


@pytest.fixture(scope="module")
def options(tmp_path_factory):
    yield from tenant_story(tmp_path_factory, "pve-options", "options", "opts", options_steps)


def test_every_option_converges_on_new_vms(options):
    t, step = options.tenant, options.story["created"]
    run = step["run"]
    assert run.rc == 0, run.stdout[-3000:]
    vms = tenant_vms(step["after"], t.service_id)
    assert sorted(vm.name for vm in vms) == options.names(0, 1)
    for vm in vms:
        cfg = effective(vm)
        assert cfg["cpu"] == "host" and str(cfg["sockets"]) == "2" and str(cfg["cores"]) == "2"
        assert str(cfg["balloon"]) == "1024" and str(cfg["memory"]) == "2048"
        # A new volume on the boot disk's storage, allocated by Proxmox: its name, not the `vmstore:30` asked for.
        assert cfg["scsi1"] == f"{VM_STORAGE}:vm-{vm.vmid}-disk-1,size=30G"
        assert step["volumes"][f"vm-{vm.vmid}-disk-1"]["size"] == 30 * 2**30
        assert cfg["scsi0"].startswith(f"{VM_STORAGE}:vm-{vm.vmid}-disk-0,") and "size=20G" in cfg["scsi0"]
        # Extra NICs: Proxmox gave each a MAC and wrote it in its own order (model=MAC, then the keys sorted).
        mac1, mac2 = mac_of(cfg["net1"]).upper(), mac_of(cfg["net2"]).upper()
        assert mac1 and mac2 and mac1 != mac2
        assert cfg["net1"] == f"virtio={mac1},bridge=vmbr1,firewall=1,tag=42"
        assert cfg["net2"] == f"e1000={mac2},bridge=vmbr2"
        assert cfg["ipconfig1"] == "ip=dhcp" and "ipconfig2" not in cfg
        assert cfg["net0"].endswith(",bridge=vmbr0") and cfg["ipconfig0"].startswith("ip=127.0.10.")
    assert {n["status"] for n in run.nodes} == {"running"}


def test_a_rerun_with_the_same_options_changes_nothing(options):
    step = options.story["rerun"]
    run = step["run"]
    assert run.rc == 0 and run.changed == 0, run.stdout[-3000:]
    vmids = {vm.vmid for vm in tenant_vms(step["after"], options.tenant.service_id)}
    assert writes_to(step["after"], vmids, step["mark"]) == []


def test_changed_options_converge_on_running_vms_keeping_the_nic_mac(options):
    t = options.tenant
    before = by_name(options.story["rerun"]["after"], t.service_id)
    step = options.story["changed"]
    run = step["run"]
    assert run.rc == 0, run.stdout[-3000:]
    for vm in tenant_vms(step["after"], t.service_id):
        assert vm.status == "running"
        cfg = effective(vm)
        assert cfg["cpu"] == "x86-64-v2-AES" and str(cfg["sockets"]) == "1" and str(cfg["balloon"]) == "0"
        # Grown in place (resize), not a second volume.
        assert vm.config["scsi1"] == f"{VM_STORAGE}:vm-{vm.vmid}-disk-1,size=40G"
        assert not [name for name in step["volumes"] if name.startswith(f"vm-{vm.vmid}-") and name.endswith("-2")]
        # The VLAN changed, the MAC is the one Proxmox gave net1 at first; net2 and ipconfig1 are removed.
        old_mac = mac_of(before[vm.name].config["net1"]).upper()
        assert cfg["net1"] == f"virtio={old_mac},bridge=vmbr1,firewall=1,tag=43"
        assert "net2" not in cfg and "ipconfig1" not in cfg
        assert vm.pending.get("net2", "") is None, "a running VM's NIC goes at its next boot"
    rerun = options.story["changed_rerun"]["run"]
    assert rerun.rc == 0 and rerun.changed == 0, rerun.stdout[-3000:]


def test_a_data_disk_shrink_fails_naming_the_vm_and_sizes_and_touches_nothing(options):
    t, step = options.tenant, options.story["shrink"]
    run = step["run"]
    assert run.rc != 0
    failure = failures(run)
    for name in options.names(0, 1):
        assert f"data_disk (proxmox_vm_data_disk) refused for {name} (vmid " in failure, failure or run.stdout[-3000:]
    assert failure.count("scsi1 is 40 GiB, requested 20 GiB") == 2
    vms = tenant_vms(step["after"], t.service_id)
    assert writes_to(step["after"], {vm.vmid for vm in vms}, step["mark"]) == []
    assert all(vm.config["scsi1"].endswith(",size=40G") for vm in vms)


# ------------------------------------------------------------------ refused settings


BAD_VALUES = {
    "proxmox_vm_cpu_type": "host,flags=+aes",
    "proxmox_vm_sockets": 0,
    "proxmox_vm_balloon": 4096,  # more than the pool's 2048 MiB
    "proxmox_vm_data_disk": {"size_gib": 0, "bus": "scsi31", "storage": "x"},
    "proxmox_vm_extra_nets": [{"bridge": "vm br0", "vlan": 4095}],
}


@pytest.mark.parametrize(("settings", "named"), [
    pytest.param(BAD_VALUES, ["proxmox_vm_cpu_type", "proxmox_vm_sockets",
                              "proxmox_vm_balloon: 4096 MiB is more than the memory of agentkube_tenant.nodePools[0] "
                              "(default): 2048 MiB", "proxmox_vm_data_disk.size_gib", "proxmox_vm_data_disk.bus",
                              "proxmox_vm_data_disk.storage", "proxmox_vm_extra_nets[0].bridge",
                              "proxmox_vm_extra_nets[0].vlan"], id="values"),
    # Types and choices: the role's argument spec, before its own checks.
    pytest.param({"proxmox_vm_extra_nets": [{"bridge": "vmbr1", "model": "rtl9999"}]},
                 ["got: rtl9999 found in proxmox_vm_extra_nets"], id="choices"),
    pytest.param({"proxmox_vm_sockets": "two"}, ["argument 'proxmox_vm_sockets' is of type str"], id="types"),
])
def test_bad_option_values_fail_naming_the_variable_before_anything_is_touched(lab, tenant, settings, named):
    mark = len(lab.fake.requests)
    run = tenant.run(pools(("default", 1), **SIZES), **settings)
    assert run.rc != 0
    failure = failures(run)
    for text in named:
        assert text in failure, (text, failure or run.stdout[-3000:])
    assert lab.fake.requests[mark:] == []


# ------------------------------------------------------------------ least privilege


@pytest.fixture(scope="module")
def least_privilege(tmp_path_factory):
    lab = PveLab(tmp_path_factory.mktemp("pve-options-lp"), time_scale=0.01,
                 realism=Realism(least_privilege=True)).start()
    lab.fake.max_requests = 10**7
    yield lab
    lab.stop()


def test_extra_nics_need_sdn_use_on_their_bridge_as_the_readme_documents(least_privilege, tmp_path):
    lab = least_privilege
    t = Tenant(lab, tmp_path, "lpopt")
    denied = t.run(pools(("default", 1), **SIZES), **OPTIONS)
    assert denied.rc != 0
    assert "Permission check failed (/sdn/zones/localnetwork/vmbr1/42, SDN.Use)" in failures(denied), \
        denied.stdout[-3000:]
    # The README's grant for an extra NIC's bridge: SDN.Use on /sdn/zones/localnetwork/<bridge> (propagated to
    # its VLANs); the rest (CPU, memory, the data disk on vmstore) is already the documented role's.
    for bridge in ("vmbr1", "vmbr2"):
        path = f"/sdn/zones/localnetwork/{bridge}"
        lab.call(lab.fake.grant, lab.token_id, path, *role_privileges(VM_STORAGE, bridge)[path])
    healed = t.run(pools(("default", 1), **SIZES), **OPTIONS)
    assert healed.rc == 0, healed.stdout[-3000:]
    vm = tenant_vms(snapshot(lab), t.service_id)[0]
    cfg = effective(vm)
    assert cfg["cpu"] == "host" and str(cfg["balloon"]) == "1024" and cfg["scsi1"].endswith(",size=30G")
    assert "tag=42" in cfg["net1"] and "bridge=vmbr2" in cfg["net2"] and vm.status == "running"
