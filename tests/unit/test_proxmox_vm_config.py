"""Pure helpers of the proxmox_vm modules: tags, markers, IP pool, disk sizes, VMID/IP allocation."""

from __future__ import annotations

import pytest
from unit_support import load_module_utils

cfg = load_module_utils("proxmox_vm_config")
api = load_module_utils("proxmox_api")
alloc = load_module_utils("proxmox_vm_allocation")


def test_tags_are_lowercase_tokens_marking_owner_service_tenant_and_pool():
    tags = cfg.vm_tags("AgentKube", "ABC-123", "t1-x", "gpu")
    assert tags == ["agentkube", "pool-gpu", "svc-abc-123", "tenant-t1-x"]
    assert cfg.join_tags(tags) == "agentkube;pool-gpu;svc-abc-123;tenant-t1-x"
    assert cfg.split_tags("b;A, c") == ["a", "b", "c"]


def test_marker_round_trips_and_counts_as_an_ip_claim():
    text = cfg.marker("svc-1", "10.0.0.7")
    assert cfg.parse_marker(text) == {"service": "svc-1", "ip": "10.0.0.7"}
    config = {"description": text, "ipconfig0": "ip=10.0.0.8/24,gw=10.0.0.1", "ipconfig1": "ip=dhcp"}
    assert cfg.claimed_ips(config) == {"10.0.0.7", "10.0.0.8"}


def test_ip_pool_ranges_cidrs_and_exclusions():
    pool = cfg.IpPool("10.0.0.1-10.0.0.4", gateway="10.0.0.1", reserved=["10.0.0.2"])
    assert pool.first_free(set()) == "10.0.0.3"
    assert pool.first_free({"10.0.0.3", "10.0.0.4"}) is None
    assert cfg.IpPool("192.168.1.0/30").first_free(set()) == "192.168.1.1"
    with pytest.raises(ValueError, match="proxmox_vm_ip_pool"):
        cfg.IpPool("10.0.0.9-10.0.0.1")


def test_boot_disk_size_and_ipconfig():
    config = {"boot": "order=scsi0", "scsi0": "store:vm-1-disk-0,size=512M", "ide2": "store:cloudinit,media=cdrom"}
    assert cfg.boot_disk(config) == ("scsi0", 0.5)
    assert cfg.ipconfig("10.0.0.5", 24, "10.0.0.1") == "ip=10.0.0.5/24,gw=10.0.0.1"
    assert cfg.ipconfig(None, 24, "10.0.0.1") == "ip=dhcp"
    assert "%0A" in cfg.sshkeys_param(["ssh-ed25519 A a", "ssh-rsa B b"])


def test_guest_address_is_the_global_ipv4_of_the_net0_interface():
    mac = cfg.mac_of("virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,tag=5")
    assert mac == "bc:24:11:aa:bb:cc" and cfg.mac_of("bridge=vmbr0") == ""
    answer = {"result": [
        {"name": "lo", "hardware-address": "00:00:00:00:00:00",
         "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
        # A joined Kubernetes node: the CNI bridge may be listed before the NIC.
        {"name": "cni0", "hardware-address": "0a:58:0a:f4:00:01",
         "ip-addresses": [{"ip-address": "10.244.0.1", "ip-address-type": "ipv4", "prefix": 24}]},
        {"name": "eth0", "hardware-address": "BC:24:11:AA:BB:CC",
         "ip-addresses": [{"ip-address": "fe80::be24:11ff:feaa:bbcc", "ip-address-type": "ipv6", "prefix": 64},
                          {"ip-address": "169.254.3.4", "ip-address-type": "ipv4", "prefix": 16},
                          {"ip-address": "10.0.0.210", "ip-address-type": "ipv4", "prefix": 24}]},
    ]}
    assert cfg.guest_ipv4(answer, mac) == "10.0.0.210"
    assert cfg.guest_ipv4(answer) == "10.244.0.1", "without a MAC: the first global IPv4 of any interface"
    # The NIC has no address yet (DHCP still running): nothing, even though cni0 has one.
    booting = {"result": [answer["result"][1], {**answer["result"][2], "ip-addresses": []}]}
    assert cfg.guest_ipv4(booting, mac) == ""
    assert cfg.guest_ipv4({"result": []}, mac) == "" and cfg.guest_ipv4(None) == ""


def test_agent_option_enables_the_guest_agent_keeping_its_other_properties():
    assert cfg.agent_option(None) == "1"
    assert cfg.agent_option("0") == "1"
    assert cfg.agent_option("enabled=0,fstrim_cloned_disks=1") == "enabled=1,fstrim_cloned_disks=1"
    assert cfg.agent_option("1") is None
    assert cfg.agent_option("enabled=1,type=virtio") is None


def test_transient_and_collision_errors_are_told_apart():
    lock = api.PveApiError(500, "can't lock file '/var/lock/qemu-server/lock-9035.conf' - got timeout")
    taken = api.PveApiError(500, "unable to create VM 4100: config file already exists")
    shutdown = api.PveApiError(0, "VM quit/powerdown failed - got timeout")
    assert lock.transient and not lock.vmid_taken
    assert taken.vmid_taken and not taken.transient
    assert not shutdown.transient


class FakeClient:
    def __init__(self, vms, configs):
        self.vms, self.configs = vms, configs

    def cluster_vms(self):
        return self.vms

    def vm_config(self, node, vmid):
        return self.configs.get(vmid, {})


def test_allocator_skips_every_used_vmid_and_claimed_address():
    client = FakeClient(
        [{"vmid": 100, "node": "n"}, {"vmid": 101, "node": "n"}, {"vmid": 103, "node": "n"}],
        {100: {"ipconfig0": "ip=10.0.0.2/24"}, 103: {"description": cfg.marker("other", "10.0.0.3")}},
    )
    a = alloc.Allocator(client, 100, 105, cfg.IpPool("10.0.0.1-10.0.0.9", gateway="10.0.0.1")).refresh()
    assert [a.next_vmid() for _ in range(3)] == [102, 104, 105]
    with pytest.raises(alloc.AllocationError, match="no free VMID"):
        a.next_vmid()
    assert [a.next_ip() for _ in range(2)] == ["10.0.0.4", "10.0.0.5"]
    # A concurrent claim: the lower vmid keeps the address.
    a.ip_claims["10.0.0.4"] = {102, 99}
    assert a.conflicts({102: "10.0.0.4", 104: "10.0.0.5"}) == {102: "10.0.0.4"}
