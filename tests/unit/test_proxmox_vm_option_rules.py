"""The VM options of the proxmox_vm role (CPU type, sockets, ballooning, a data disk, extra NICs): their pure helpers
(plugins/module_utils/proxmox_vm_options.py), the role's filter, proxmox_vm_configure's plan of one VM, and the lab's
update_vm rules they rely on (allocation of a new disk, a MAC for a new NIC, SDN.Use on the bridge, the balloon)."""

from __future__ import annotations

import pytest
from test_pve_lab_realism import Api, lab_with
from unit_support import load_module, load_module_utils

from agentkube_lab.pve_lab import VM_STORAGE

opt = load_module_utils("proxmox_vm_options")
cfg = load_module_utils("proxmox_vm_config")
configure = load_module("proxmox_vm_configure")

MAC = "BC:24:11:AA:BB:01"
GOOD = {
    "cpu_type": "x86-64-v2-AES",
    "sockets": 2,
    "balloon": 1024,
    "data_disk": {"size_gib": 50, "storage": "vmstore", "bus": "scsi1"},
    "extra_nets": [{"bridge": "vmbr1", "vlan": 42, "model": "virtio", "firewall": True, "dhcp": True},
                   {"bridge": "vmbr2.100"}],
}
POOLS = [{"name": "default", "memoryMiB": 2048}, {"name": "big", "memoryMiB": 8192}]


# ------------------------------------------------------------------ settings


def test_good_options_and_unset_ones_pass():
    assert opt.option_errors(GOOD, POOLS) == []
    unset = {"cpu_type": "", "sockets": None, "balloon": None, "data_disk": {}, "extra_nets": None}
    assert opt.option_errors(unset, POOLS) == []
    # Integers from the command line (-e proxmox_vm_sockets=2) are strings; [] is a set of no extra NICs.
    assert opt.option_errors({"sockets": "2", "balloon": "0", "extra_nets": []}, POOLS) == []


@pytest.mark.parametrize(("options", "expected"), [
    ({"cpu_type": "host,flags=+aes"}, "proxmox_vm_cpu_type: 'host,flags=+aes' is not a CPU model name"),
    ({"cpu_type": "-host"}, "proxmox_vm_cpu_type:"),
    ({"sockets": 0}, "proxmox_vm_sockets: 0 is not an integer >= 1"),
    ({"sockets": True}, "proxmox_vm_sockets:"),
    ({"balloon": -1}, "proxmox_vm_balloon: -1 is not a size in MiB >= 0"),
    ({"balloon": 4096}, "proxmox_vm_balloon: 4096 MiB is more than the memory of agentkube_tenant.nodePools[0] "
                        "(default): 2048 MiB"),
    ({"data_disk": {"bus": "scsi1"}}, "proxmox_vm_data_disk.size_gib: None is not a size in GiB >= 1"),
    ({"data_disk": {"size_gib": 10, "bus": "scsi31"}}, "proxmox_vm_data_disk.bus: 'scsi31' is not a drive key"),
    ({"data_disk": {"size_gib": 10, "bus": "virtio16"}}, "proxmox_vm_data_disk.bus:"),
    ({"data_disk": {"size_gib": 10, "bus": "scsi01"}}, "proxmox_vm_data_disk.bus:"),
    ({"data_disk": {"size_gib": 10, "storage": "x"}}, "proxmox_vm_data_disk.storage: 'x' is not a Proxmox storage ID"),
    ({"data_disk": {"size_gib": 10, "disk": "scsi1"}}, "proxmox_vm_data_disk: unknown keys disk"),
    ({"data_disk": "50G"}, "proxmox_vm_data_disk: must be a mapping"),
    ({"extra_nets": {"bridge": "vmbr1"}}, "proxmox_vm_extra_nets: must be a list"),
    ({"extra_nets": [{"vlan": 5}]}, "proxmox_vm_extra_nets[0].bridge: None is not a bridge name"),
    ({"extra_nets": [{"bridge": "vmbr1;rm"}]}, "proxmox_vm_extra_nets[0].bridge: 'vmbr1;rm' is not a bridge name"),
    ({"extra_nets": [{"bridge": "vmbr1", "vlan": 4095}]}, "proxmox_vm_extra_nets[0].vlan: 4095 is not a VLAN tag"),
    ({"extra_nets": [{"bridge": "vmbr1", "vlan": -1}]}, "proxmox_vm_extra_nets[0].vlan:"),
    ({"extra_nets": [{"bridge": "vmbr1", "model": "rtl9999"}]}, "proxmox_vm_extra_nets[0].model: 'rtl9999'"),
    ({"extra_nets": [{"bridge": "vmbr1", "firewall": "yes"}]}, "proxmox_vm_extra_nets[0].firewall: 'yes'"),
    ({"extra_nets": [{"bridge": "vmbr1", "tag": 5}]}, "proxmox_vm_extra_nets[0]: unknown keys tag"),
    ({"extra_nets": [{"bridge": "vmbr1"}] * 32}, "proxmox_vm_extra_nets: 32 NICs, at most 31"),
])
def test_a_bad_value_is_refused_naming_the_variable(options, expected):
    errors = opt.option_errors(options, POOLS)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_the_module_names_its_own_options():
    assert opt.option_errors({"sockets": 0}, prefix="") == ["sockets: 0 is not an integer >= 1"]


def test_the_roles_filter_wraps_the_same_rules():
    from ansible_collections.agentkube.kamaji.plugins.filter.proxmox_vm_filters import FilterModule

    errors = FilterModule().filters()["proxmox_vm_option_errors"]
    assert errors(GOOD, POOLS) == []
    assert errors(dict(GOOD, balloon=9000), POOLS) == [
        "proxmox_vm_balloon: 9000 MiB is more than the memory of agentkube_tenant.nodePools[0] (default): 2048 MiB",
        "proxmox_vm_balloon: 9000 MiB is more than the memory of agentkube_tenant.nodePools[1] (big): 8192 MiB"]
    assert errors("nope") and errors(GOOD, "not pools") == []


# ------------------------------------------------------------ property strings


def test_net_values_are_printed_as_proxmox_prints_them_and_compared_by_meaning():
    props = opt.net_props(f"virtio={MAC.lower()},tag=5,firewall=true,bridge=vmbr0")
    assert props == {"model": "virtio", "macaddr": MAC, "tag": "5", "firewall": "1", "bridge": "vmbr0"}
    # qemu-server print_net: model=MAC first, then the other keys sorted.
    assert opt.print_net(props) == f"virtio={MAC},bridge=vmbr0,firewall=1,tag=5"
    assert opt.net_props(f"model=e1000,macaddr={MAC},bridge=x") == {"model": "e1000", "macaddr": MAC, "bridge": "x"}
    assert opt.same_net(f"virtio={MAC},bridge=vmbr0,firewall=1", f"virtio={MAC.lower()},firewall=on,bridge=vmbr0")
    assert opt.same_net(f"virtio={MAC},bridge=vmbr0", "virtio,bridge=vmbr0")  # no MAC asked: any
    assert opt.same_net(f"virtio={MAC},bridge=vmbr0,firewall=0", "virtio,bridge=vmbr0")
    assert not opt.same_net(f"virtio={MAC},bridge=vmbr0", "virtio=BC:24:11:AA:BB:02,bridge=vmbr0")
    assert not opt.same_net(f"virtio={MAC},bridge=vmbr0", "virtio,bridge=vmbr0,tag=5")
    assert not opt.same_net(None, "virtio,bridge=vmbr0")


def test_a_changed_nic_keeps_its_mac_and_the_properties_the_role_does_not_manage():
    current = f"e1000={MAC},bridge=vmbr0,firewall=1,mtu=9000,queues=4,tag=5"
    assert opt.net_value(current, "vmbr1", 0) == f"e1000={MAC},bridge=vmbr1,firewall=1,mtu=9000,queues=4"
    assert opt.net_value(current, "vmbr1", 7, "virtio", False) == f"virtio={MAC},bridge=vmbr1,mtu=9000,queues=4,tag=7"
    assert opt.net_value(None, "vmbr1", 0, None, True) == "virtio,bridge=vmbr1,firewall=1"


def test_the_cpu_type_is_replaced_and_its_other_properties_kept():
    assert opt.cpu_value(None, "host") == "host"
    assert opt.cpu_value("kvm64,flags=+aes;+pcid,hidden=1", "host") == "host,flags=+aes;+pcid,hidden=1"
    assert opt.same_cpu("cputype=host,hidden=1", "host,hidden=1")
    assert not opt.same_cpu("kvm64", "host")


# ------------------------------------------------------------------- the plan


BOOTED = {"boot": "order=scsi0;ide2;net0", "scsi0": f"{VM_STORAGE}:vm-4100-disk-0,size=20G",
          "ide2": f"{VM_STORAGE}:vm-4100-cloudinit,media=cdrom"}


def test_the_data_disk_is_added_on_the_boot_disks_storage_grown_and_never_shrunk():
    disk = {"size_gib": 30, "storage": "", "bus": "scsi1"}
    assert opt.data_disk_action(BOOTED, disk, "scsi0") == ("add", "scsi1", f"{VM_STORAGE}:30")
    assert opt.data_disk_action(BOOTED, dict(disk, storage="fast"), "scsi0") == ("add", "scsi1", "fast:30")
    has = dict(BOOTED, scsi1=f"{VM_STORAGE}:vm-4100-disk-1,discard=on,size=30G")
    assert opt.data_disk_action(has, disk, "scsi0") is None
    assert opt.data_disk_action(has, dict(disk, size_gib=40), "scsi0") == ("grow", "scsi1", 40)
    assert opt.data_disk_action(has, dict(disk, size_gib=20), "scsi0") == (
        "refuse", "scsi1 is 30 GiB, requested 20 GiB (a data disk only grows)")
    assert opt.data_disk_action(BOOTED, dict(disk, bus="scsi0"), "scsi0")[0] == "refuse"
    assert "CD-ROM" in opt.data_disk_action(BOOTED, dict(disk, bus="ide2"), "scsi0")[1]
    assert opt.data_disk_action({}, disk, None)[0] == "refuse"  # no storage known


def test_the_boot_disk_is_never_taken_for_the_data_disk_unless_the_boot_order_says_so():
    config = {"virtio0": "s:vm-1-disk-0,size=20G", "scsi1": "s:vm-1-disk-1,size=50G"}  # no boot order
    assert cfg.boot_disk(config) == ("scsi1", 50.0)  # sorted: scsi1 before virtio0
    assert cfg.boot_disk(config, exclude=("scsi1",)) == ("virtio0", 20.0)
    assert cfg.boot_disk(dict(config, boot="order=scsi1;virtio0"), exclude=("scsi1",)) == ("scsi1", 50.0)


def test_extra_nics_converge_to_the_list_and_nics_above_it_go():
    config = {"net0": f"virtio={MAC},bridge=vmbr0", "net1": "virtio=BC:24:11:AA:BB:02,bridge=vmbr1,tag=5",
              "net3": "e1000=BC:24:11:AA:BB:03,bridge=vmbr3", "ipconfig1": "ip=dhcp", "ipconfig3": "ip=dhcp"}
    nets = [{"bridge": "vmbr1", "vlan": 6, "model": "virtio", "firewall": False, "dhcp": False},
            {"bridge": "vmbr2", "vlan": 0, "model": "virtio", "firewall": True, "dhcp": True}]
    want, delete = opt.extra_net_config(config, nets)
    assert want == {"net1": "virtio=BC:24:11:AA:BB:02,bridge=vmbr1,tag=6", "net2": "virtio,bridge=vmbr2,firewall=1",
                    "ipconfig2": "ip=dhcp"}
    assert delete == ["ipconfig1", "ipconfig3", "net3"]
    # What Proxmox holds after that request (a MAC for net2): nothing more to do.
    after = {k: v for k, v in {**config, **want}.items() if k not in delete}
    after["net2"] = "virtio=BC:24:11:AA:BB:04,bridge=vmbr2,firewall=1"
    assert opt.extra_net_config(after, nets) == ({}, [])
    # [] removes every NIC but net0; net0 is never the list's.
    assert opt.extra_net_config(config, []) == ({}, ["ipconfig1", "ipconfig3", "net1", "net3"])


def test_a_balloon_above_the_memory_is_refused_whether_asked_or_the_vms_own():
    assert opt.balloon_problem({}, 1024, 2048) is None
    assert opt.balloon_problem({"balloon": "4096"}, 0, 2048) is None  # 0: disabled
    assert opt.balloon_problem({}, 4096, 2048) == "balloon 4096 MiB (requested) is more than memory 2048 MiB"
    assert "the VM's own" in opt.balloon_problem({"balloon": "4096"}, None, 2048)
    assert opt.balloon_problem({"balloon": "2048"}, None, 2048) is None


def params(**over) -> dict:
    p = {"cloud_init": False, "service_id": "svc", "owner_tag": "agentkube", "bridge": "vmbr0", "vlan": 0,
         "cpu_type": "", "sockets": None, "balloon": None, "data_disk": None, "extra_nets": None}
    return {**p, **over}


def vm(**over) -> dict:
    return {"name": "t-default-0", "vmid": 4100, "pool": "default", "cores": 2, "memory": 2048, "disk_gib": 20,
            "tags": ["agentkube"], **over}


def test_the_module_writes_only_what_differs_from_what_proxmox_wrote_back():
    written = dict(BOOTED, cores=2, memory="2048", tags="agentkube", onboot=1, cpu="host,flags=+aes", sockets=2,
                   balloon=1024, scsi1=f"{VM_STORAGE}:vm-4100-disk-1,size=30G",
                   net0=f"virtio={MAC},bridge=vmbr0,firewall=1",
                   net1="virtio=BC:24:11:AA:BB:02,bridge=vmbr1,firewall=1,tag=42", ipconfig1="ip=dhcp")
    p = params(cpu_type="host", sockets=2, balloon=1024, data_disk={"size_gib": 30, "storage": "", "bus": "scsi1"},
               extra_nets=[{"bridge": "vmbr1", "vlan": 42, "model": "virtio", "firewall": True, "dhcp": True}])
    assert configure.plan_vm(vm(), written, p) == ({}, {}, [], [], [])
    # A template's net0 in another key order is the same NIC (a string comparison would rewrite it every run).
    p_net0 = dict(p, cloud_init=True, ciuser="", ssh_public_keys=[], ip_mode="dhcp", ip_prefix=24, ip_gateway="",
                  nameservers=[])
    reordered = dict(written, net0=f"virtio={MAC},firewall=1,bridge=vmbr0")
    assert "net0" not in configure.wanted_changes(vm(), reordered, p_net0)
    # The defaults: sockets absent is 1; unset options write nothing.
    assert configure.plan_vm(vm(), dict(written), params(sockets=1))[0] == {"sockets": "1"}
    assert configure.plan_vm(vm(), {k: v for k, v in written.items() if k != "sockets"}, params(sockets=1))[0] == {}


def test_the_module_plans_each_option_and_refuses_before_any_write():
    p = params(cpu_type="host", sockets=2, balloon=0, data_disk={"size_gib": 30, "storage": "", "bus": "scsi1"},
               extra_nets=[])
    config = dict(BOOTED, cores=2, memory="2048", tags="agentkube", onboot=1, cpu="kvm64",
                  net1=f"virtio={MAC},bridge=vmbr9")
    changes, volumes, grows, shrinks, refused = configure.plan_vm(vm(disk_gib=25), config, p)
    assert changes == {"cpu": "host", "sockets": "2", "balloon": "0", "delete": "net1"}
    assert volumes == {"scsi1": f"{VM_STORAGE}:30"} and grows == [("scsi0", 25)] and not shrinks and not refused
    grown = dict(config, scsi1=f"{VM_STORAGE}:vm-4100-disk-1,size=50G", balloon="4096")
    _, volumes, grows, shrinks, refused = configure.plan_vm(vm(disk_gib=10), grown, params(
        data_disk={"size_gib": 30, "storage": "", "bus": "scsi1"}))
    assert not volumes and not grows
    assert shrinks == ["t-default-0 (vmid 4100): disk scsi0 is 20 GiB, requested 10 GiB"]
    assert refused == [
        "data_disk (proxmox_vm_data_disk) refused for t-default-0 (vmid 4100): scsi1 is 50 GiB, requested 30 GiB "
        "(a data disk only grows)",
        "balloon (proxmox_vm_balloon) refused for t-default-0 (vmid 4100, pool default): balloon 4096 MiB (the VM's "
        "own (set proxmox_vm_balloon)) is more than memory 2048 MiB"]


# --------------------------------------------------- the lab's update_vm rules


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    lab = lab_with(tmp_path_factory, "pve-options-unit", least_privilege=True)
    api = Api(lab)
    api.lab.call(api.lab.fake.ceph_slow, 0.0, "HEALTH_OK")
    assert api.task("pve1", api.clone(4130, "opt-a-0"))["exitstatus"] == "OK"
    yield api
    lab.stop()


def config_task(api: Api, **values) -> str:
    return api.task("pve1", api.ok("POST", "/nodes/pve1/qemu/4130/config", **values))["exitstatus"]


def test_lab_a_new_disk_is_allocated_on_its_storage(api):
    assert config_task(api, scsi1=f"{VM_STORAGE}:30") == "OK"
    config = api.ok("GET", "/nodes/pve1/qemu/4130/config")
    assert config["scsi1"] == f"{VM_STORAGE}:vm-4130-disk-1,size=30G"
    vols = api.lab.call(lambda: dict(api.lab.fake.storages[VM_STORAGE]["volumes"]))
    assert vols["vm-4130-disk-1"]["size"] == 30 * 2**30 and vols["vm-4130-disk-1"]["vmid"] == 4130
    # Only storages the token may allocate on (Datastore.AllocateSpace, check_storage_access).
    api.lab.call(api.lab.fake.add_ceph_storage, "other", "other")
    assert config_task(api, scsi2="other:10") == "Permission check failed (/storage/other, Datastore.AllocateSpace)"
    assert "scsi2" not in api.ok("GET", "/nodes/pve1/qemu/4130/config")


def test_lab_a_nic_written_without_a_mac_gets_one_and_is_stored_as_print_net_writes_it(api):
    api.lab.call(api.lab.fake.grant, api.lab.token_id, "/sdn/zones/localnetwork/vmbr1", "SDN.Use")
    assert config_task(api, net1="virtio,tag=42,firewall=1,bridge=vmbr1") == "OK"
    net1 = api.ok("GET", "/nodes/pve1/qemu/4130/config")["net1"]
    mac = opt.net_props(net1)["macaddr"]
    assert opt.MAC_RE.fullmatch(mac) and net1 == f"virtio={mac},bridge=vmbr1,firewall=1,tag=42"


def test_lab_a_nic_needs_sdn_use_on_its_bridge_or_vlan(api):
    # pve-guest-common GuestHelpers.pm check_vnet_access: the VLAN's path, propagated from the bridge's ACL.
    assert config_task(api, net2="virtio,bridge=vmbr7,tag=7") == \
        "Permission check failed (/sdn/zones/localnetwork/vmbr7/7, SDN.Use)"
    api.lab.call(api.lab.fake.grant, api.lab.token_id, "/sdn/zones/localnetwork/vmbr7/7", "SDN.Use")
    assert config_task(api, net2="virtio,bridge=vmbr7,tag=7") == "OK"
    assert config_task(api, net2="virtio,bridge=vmbr7") == "Permission check failed (/sdn/zones/localnetwork/vmbr7, " \
                                                           "SDN.Use)"


def test_lab_a_balloon_above_the_memory_is_refused(api):
    assert config_task(api, memory=2048, balloon=4096) == \
        "balloon value too large (must be smaller than assigned memory)"
    assert config_task(api, balloon=2048) == "OK"
    assert config_task(api, memory=1024) == "balloon value too large (must be smaller than assigned memory)"
    assert config_task(api, memory=1024, balloon=0) == "OK"
