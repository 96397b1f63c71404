"""The proxmox_vm role against the fakepve lab: create, idempotency, scale, resize, power, delete, faults."""

from __future__ import annotations

import concurrent.futures
import urllib.parse
import zlib

import pytest
from proxmox_vm_harness import (
    Tenant,
    assert_clean_cluster,
    ip_of,
    locked_touches,
    pools,
    tenant_vms,
    writes_to,
)

from agentkube.lab.pve_lab import PveLab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with PveLab(tmp_path_factory.mktemp("pve-lab"), time_scale=0.01) as lab:
        yield lab


@pytest.fixture
def tenant(lab, tmp_path, request):
    name = "t" + str(zlib.crc32(request.node.name.encode()) % 10**6)
    yield Tenant(lab, tmp_path, name)
    lab.fake.failures.clear()
    lab.fake.ceph_slow(lab.clone_secs, health="HEALTH_OK")


def by_name(fake, service_id):
    return {vm.name: vm for vm in tenant_vms(fake, service_id)}


def test_pool_of_five_is_created_in_parallel_and_rerun_changes_nothing(lab, tenant):
    first = tenant.run(pools(("default", 5), cores=2, memory=4096, disk=40))
    assert first.rc == 0, first.stdout[-3000:]
    names = [f"{tenant.name}-default-{i}" for i in range(5)]
    assert [n["name"] for n in first.nodes] == names
    assert {n["status"] for n in first.nodes} == {"running"}
    assert len({n["vmid"] for n in first.nodes}) == 5 and all(4100 <= n["vmid"] <= 4999 for n in first.nodes)
    assert len({n["ip"] for n in first.nodes}) == 5
    vms = by_name(lab.fake, tenant.service_id)
    for node in first.nodes:
        cfg = vms[node["name"]].config
        assert cfg["ipconfig0"] == f"ip={node['ip']}/24,gw=10.0.0.1"
        assert str(cfg["cores"]) == "2" and str(cfg["memory"]) == "4096"
        assert "size=40G" in cfg["scsi0"]
        assert cfg["ciuser"] == "agentkube" and str(cfg["ciupgrade"]) == "0" and cfg["nameserver"] == "10.0.0.1"
        assert urllib.parse.unquote(cfg["sshkeys"]).startswith("ssh-ed25519 ")
        assert set(cfg["tags"].split(";")) == {"agentkube", f"svc-{tenant.service_id}", f"tenant-{tenant.name}",
                                              "pool-default"}
    # Both nodes used, since the lab's target nodes are pve1 and pve2.
    assert {n["node"] for n in first.nodes} == {"pve1", "pve2"}
    assert not locked_touches(lab.fake)

    second = tenant.run(pools(("default", 5), cores=2, memory=4096, disk=40))
    assert second.rc == 0 and second.changed == 0, second.stdout[-3000:]
    assert second.nodes == first.nodes
    assert_clean_cluster(lab.fake, {tenant.service_id: names})


def test_scale_down_then_up_touches_only_the_new_vms(lab, tenant):
    created = tenant.run(pools(("default", 5)))
    assert created.rc == 0
    before = {n["name"]: n["vmid"] for n in created.nodes}

    down = tenant.run(pools(("default", 2)))
    assert down.rc == 0, down.stdout[-3000:]
    # Highest indices first, exposed before deletion.
    assert [v["name"] for v in down.to_remove] == [f"{tenant.name}-default-{i}" for i in (4, 3, 2)]
    assert [n["name"] for n in down.nodes] == [f"{tenant.name}-default-{i}" for i in (0, 1)]
    assert_clean_cluster(lab.fake, {tenant.service_id: [f"{tenant.name}-default-{i}" for i in (0, 1)]})

    mark = len(lab.fake.requests)
    up = tenant.run(pools(("default", 4)))
    assert up.rc == 0, up.stdout[-3000:]
    after = {n["name"]: n["vmid"] for n in up.nodes}
    kept = {before[f"{tenant.name}-default-{i}"] for i in (0, 1)}
    assert {after[f"{tenant.name}-default-{i}"] for i in (0, 1)} == kept
    new = {after[f"{tenant.name}-default-{i}"] for i in (2, 3)}
    assert writes_to(lab.fake, kept, mark) == []
    assert writes_to(lab.fake, new, mark), "the new VMs were configured and started"
    assert_clean_cluster(lab.fake, {tenant.service_id: [f"{tenant.name}-default-{i}" for i in range(4)]})


def test_scale_down_can_expose_first_and_delete_exactly_the_list_later(lab, tenant):
    assert tenant.run(pools(("default", 3))).rc == 0
    planned = tenant.run(pools(("default", 1)), proxmox_vm_scale_down_delete=False)
    assert planned.rc == 0
    doomed = [v["name"] for v in planned.to_remove]
    assert doomed == [f"{tenant.name}-default-2", f"{tenant.name}-default-1"]
    assert len(tenant_vms(lab.fake, tenant.service_id)) == 3, "nothing deleted before the drain"
    gone = tenant.run(state="absent", proxmox_vm_delete_list=doomed)
    assert gone.rc == 0
    assert [n["name"] for n in gone.nodes] == [f"{tenant.name}-default-0"]
    assert_clean_cluster(lab.fake, {tenant.service_id: [f"{tenant.name}-default-0"]})


def test_resize_grows_and_a_shrink_fails_naming_the_vm(lab, tenant):
    assert tenant.run(pools(("default", 2), cores=2, memory=2048, disk=20)).rc == 0
    grown = tenant.run(pools(("default", 2), cores=4, memory=8192, disk=30))
    assert grown.rc == 0, grown.stdout[-3000:]
    for vm in tenant_vms(lab.fake, tenant.service_id):
        effective = {**vm.config, **{k: v for k, v in vm.pending.items() if v is not None}}
        assert str(effective["cores"]) == "4" and str(effective["memory"]) == "8192"
        assert "size=30G" in vm.config["scsi0"]
    assert tenant.run(pools(("default", 2), cores=4, memory=8192, disk=30)).changed == 0

    shrink = tenant.run(pools(("default", 2), cores=4, memory=8192, disk=10))
    assert shrink.rc != 0
    assert f"{tenant.name}-default-0" in shrink.stdout and "is 30 GiB, requested 10 GiB" in shrink.stdout
    assert all("size=30G" in vm.config["scsi0"] for vm in tenant_vms(lab.fake, tenant.service_id))


def test_stop_is_graceful_then_hard_and_start_brings_them_back(lab, tenant):
    created = tenant.run(pools(("default", 2)))
    assert created.rc == 0
    stubborn = by_name(lab.fake, tenant.service_id)[f"{tenant.name}-default-1"]
    stubborn.acpi = False  # ignores the ACPI shutdown: only the hard stop ends it
    stopped = tenant.run(state="stopped")
    assert stopped.rc == 0, stopped.stdout[-3000:]
    assert {n["status"] for n in stopped.nodes} == {"stopped"}
    kinds = [t["type"] for t in lab.fake.tasklog if t["id"] == str(stubborn.vmid)]
    assert "qmshutdown" in kinds and kinds[-1] == "qmstop"
    started = tenant.run(state="started")
    assert started.rc == 0 and {n["status"] for n in started.nodes} == {"running"}


def test_delete_frees_addresses_and_deleting_again_succeeds(lab, tenant, tmp_path):
    created = tenant.run(pools(("default", 2)))
    assert created.rc == 0
    freed = {n["ip"] for n in created.nodes}
    mark = len(lab.fake.requests)
    gone = tenant.run(state="absent")
    assert gone.rc == 0 and gone.nodes == []
    assert tenant_vms(lab.fake, tenant.service_id) == []
    deletes = [p for m, p, _ in lab.fake.requests[mark:] if m == "DELETE"]
    assert len(deletes) == 2
    destroyed = [t for t in lab.fake.tasklog if t["type"] == "qmdestroy"]
    assert destroyed and all(t["exitstatus"] == "OK" for t in destroyed)
    still_claimed = {ip_of(vm) for vm in lab.fake.vms} | {
        str(vm.config.get("description", "")).rsplit("ip=", 1)[-1] for vm in lab.fake.vms}
    assert not freed & still_claimed
    again = tenant.run(state="absent")
    assert again.rc == 0 and again.changed == 0
    # Freed addresses go back to the pool: the next tenant gets the lowest free ones.
    pool = [f"10.0.0.{i}" for i in range(60, 200)]
    expected = [ip for ip in pool if ip not in still_claimed][:2]
    other = Tenant(lab, tmp_path / "other", tenant.name + "x")
    reused = other.run(pools(("default", 2)))
    assert reused.rc == 0
    assert sorted(n["ip"] for n in reused.nodes) == sorted(expected)
    assert other.run(state="absent").rc == 0


# ------------------------------------------------------------------ faults


def test_fault_slow_clones_holding_the_clone_lock(lab, tenant):
    lab.fake.ceph_slow(150, health="HEALTH_WARN")  # every clone holds `lock: clone` for 150 PVE seconds
    run = tenant.run(pools(("default", 3)))
    assert run.rc == 0, run.stdout[-3000:]
    assert not locked_touches(lab.fake), "a VM was touched before its clone finished"
    assert_clean_cluster(lab.fake, {tenant.service_id: [f"{tenant.name}-default-{i}" for i in range(3)]})


def test_fault_storage_lock_timeouts_are_retried(lab, tenant):
    lab.fake.fail("POST", "/nodes/{node}/qemu/{vmid}/clone", error="config_lock_timeout", times=3)
    lab.fake.fail("POST", "/nodes/{node}/qemu/{vmid}/config", error="config_lock_timeout", times=2)
    run = tenant.run(pools(("default", 3)))
    assert run.rc == 0, run.stdout[-3000:]
    assert not any(k[1].endswith("/clone") for k in lab.fake.failures), "the injected failures were hit"
    assert_clean_cluster(lab.fake, {tenant.service_id: [f"{tenant.name}-default-{i}" for i in range(3)]})


def test_fault_vmid_collisions_get_a_fresh_id(lab, tenant):
    lab.fake.fail("POST", "/nodes/{node}/qemu/{vmid}/clone", error="unable_create_config_file_already", times=2)
    run = tenant.run(pools(("default", 3)))
    assert run.rc == 0, run.stdout[-3000:]
    assert_clean_cluster(lab.fake, {tenant.service_id: [f"{tenant.name}-default-{i}" for i in range(3)]})


def test_fault_two_tenants_cloning_at_once_never_share_a_vmid_or_address(lab, tenant, tmp_path):
    other = Tenant(lab, tmp_path / "other", tenant.name + "b")
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        runs = list(ex.map(lambda t: t.run(pools(("default", 3))), [tenant, other]))
    assert [r.rc for r in runs] == [0, 0], runs[0].stdout[-2000:] + runs[1].stdout[-2000:]
    assert_clean_cluster(lab.fake, {
        tenant.service_id: [f"{tenant.name}-default-{i}" for i in range(3)],
        other.service_id: [f"{other.name}-default-{i}" for i in range(3)],
    })
    assert other.run(state="absent").rc == 0


def test_fault_failing_start_task_is_retried_then_a_rerun_converges(lab, tenant):
    lab.fake.fail("POST", "/nodes/{node}/qemu/{vmid}/status/start", error="qemu_exited_code", times=2)
    run = tenant.run(pools(("default", 2)))
    assert run.rc == 0, run.stdout[-3000:]
    assert {n["status"] for n in run.nodes} == {"running"}

    lab.fake.fail("POST", "/nodes/{node}/qemu/{vmid}/status/start", error="qemu_exited_code")
    failed = tenant.run(pools(("default", 3)))
    assert failed.rc != 0 and "QEMU exited with code 1" in failed.stdout
    lab.fake.failures.clear()
    healed = tenant.run(pools(("default", 3)))
    assert healed.rc == 0 and {n["status"] for n in healed.nodes} == {"running"}
    assert_clean_cluster(lab.fake, {tenant.service_id: [f"{tenant.name}-default-{i}" for i in range(3)]})


# ------------------------------------------------------------ input and secrets


def test_bad_input_fails_naming_the_field_before_anything_is_touched(lab, tenant):
    mark = len(lab.fake.requests)
    bad = tenant.run(pools(("default", 2), disk=5))
    assert bad.rc != 0 and "nodePools[0]" in bad.stdout
    tenant.version = "v1.20.1"
    no_template = tenant.run(pools(("default", 1)))
    assert no_template.rc != 0 and "proxmox_vm_templates" in no_template.stdout
    assert lab.fake.requests[mark:] == []


def test_tls_is_verified_against_the_configured_ca(lab, tenant, tmp_path):
    from agentkube.lab.certs import LabCA

    tenant.settings["proxmox_vm_ca_file"] = str(LabCA(tmp_path / "other-ca").ca_file)
    run = tenant.run(pools(("default", 1)))
    assert run.rc != 0 and "TLS verification failed" in run.stdout


def test_token_secret_never_reaches_output_or_artifacts(lab, tenant):
    ok = tenant.run(pools(("default", 1)), verbosity=3)
    tenant.version = "v1.20.1"
    failed = tenant.run(pools(("default", 1)), verbosity=3)
    assert ok.rc == 0 and failed.rc != 0
    secret = lab.token_secret
    for run in (ok, failed):
        assert secret not in run.stdout
        files = [p for p in run.artifacts.rglob("*") if p.is_file()]
        assert files, "ansible-runner wrote artifacts"
        leaked = [str(p) for p in files if secret in p.read_text(errors="replace")]
        assert leaked == []
