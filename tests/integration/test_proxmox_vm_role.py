"""The proxmox_vm role against the fakepve lab: create, idempotency, scale, resize, power, delete, DHCP
through the guest agent, faults, refused input and secrets.

Runtime: every role run is an ansible-playbook (seconds each), so runs are shared where the checks allow:
- the lifecycle of one tenant (create 5 -> re-run -> 2 -> 4 -> grow -> re-run -> shrink refused -> stop ->
  start -> expose 2 for removal -> delete them -> delete all -> again) is one `Story` on its own lab, and
  the DHCP tenant's (create 2 -> re-run -> a third VM whose guest agent stays silent) another; both start
  in the background with the module, and their tests check snapshots taken right after each step, while
  the fault tests run on the shared lab;
- the refused runs (bad input, no template, foreign CA) are made once and checked by the input, TLS and
  secret tests.
Fault tests keep a run each: fakepve's failure injection is global to its lab.
"""

from __future__ import annotations

import concurrent.futures
import urllib.parse
import zlib
from dataclasses import dataclass

import pytest
from proxmox_vm_harness import (
    Story,
    Tenant,
    agent_ipv4,
    assert_clean_cluster,
    ip_of,
    locked_touches,
    pools,
    snapshot,
    tenant_vms,
    writes_to,
)

from agentkube_lab.pve_lab import LabDhcp, PveLab, mac_of

pytestmark = pytest.mark.integration

STATIC_POOL = [f"127.0.10.{i}" for i in range(60, 200)]
BIG = {"cores": 2, "memory": 4096, "disk": 40}
GROWN = {"cores": 4, "memory": 8192, "disk": 50}


def start_lab(tmp_path_factory, name: str) -> PveLab:
    lab = PveLab(tmp_path_factory.mktemp(name), time_scale=0.01).start()
    lab.fake.max_requests = 10**7  # request windows are slices by index: keep every request
    return lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = start_lab(tmp_path_factory, "pve-lab")
    yield lab
    lab.stop()


@pytest.fixture
def tenant(lab, tmp_path, request):
    name = "t" + str(zlib.crc32(request.node.name.encode()) % 10**6)
    yield Tenant(lab, tmp_path, name)
    lab.fake.failures.clear()
    lab.fake.ceph_slow(lab.clone_secs, health="HEALTH_OK")


def by_name(fake, service_id):
    return {vm.name: vm for vm in tenant_vms(fake, service_id)}


def lowest_free(state, count: int) -> list[str]:
    """The first `count` addresses of the lab's static pool no VM holds or claims."""
    claimed = {ip_of(vm) for vm in state.vms} | {
        str(vm.config.get("description", "")).rsplit("ip=", 1)[-1] for vm in state.vms}
    return [ip for ip in STATIC_POOL if ip not in claimed][:count]


# ------------------------------------------------------------------ the lifecycle story


@dataclass
class TenantStory:
    """A tenant's story on its own lab."""

    lab: PveLab
    tenant: Tenant
    story: Story

    def names(self, *indices: int) -> list[str]:
        return [f"{self.tenant.name}-default-{i}" for i in indices]


def tenant_story(tmp_path_factory, lab_name: str, folder: str, tenant_name: str, steps):
    """For a module fixture (`yield from`): a lab of its own and one tenant whose story `steps(lab, tenant)` runs
    in the background; joined and the lab stopped at teardown."""
    lab = start_lab(tmp_path_factory, lab_name)
    tenant = Tenant(lab, tmp_path_factory.mktemp(folder), tenant_name)
    story = Story(steps(lab, tenant)).start()
    yield TenantStory(lab, tenant, story)
    story.join()
    lab.stop()


def lifecycle_steps(lab: PveLab, t: Tenant) -> list:
    def step(**runs):
        return lambda seen: {**{k: f(seen) for k, f in runs.items()}, "after": snapshot(lab)}

    def before_and(run):
        def both(seen):
            before = snapshot(lab)
            return {"before": before, **run(seen)}
        return both

    def stop_with_a_stubborn_guest(seen):
        stubborn = by_name(lab.fake, t.service_id)[f"{t.name}-default-1"]
        lab.call(setattr, stubborn, "acpi", False)  # ignores the ACPI shutdown: only the hard stop ends it
        return {"run": t.run(state="stopped"), "stubborn": stubborn.vmid, "after": snapshot(lab)}

    return [
        # verbosity 3: the secret test reads this run's output and artifacts too
        ("created", step(run=lambda _: t.run(pools(("default", 5), **BIG), verbosity=3))),
        ("rerun", step(run=lambda _: t.run(pools(("default", 5), **BIG)))),
        ("scaled_down", step(run=lambda _: t.run(pools(("default", 2), **BIG)))),
        ("scaled_up", before_and(step(run=lambda _: t.run(pools(("default", 4), **BIG))))),
        ("grown", step(run=lambda _: t.run(pools(("default", 4), **GROWN)))),
        ("grown_rerun", step(run=lambda _: t.run(pools(("default", 4), **GROWN)))),
        ("shrink", step(run=lambda _: t.run(pools(("default", 4), **dict(GROWN, disk=10))))),
        ("stopped", stop_with_a_stubborn_guest),
        ("started", step(run=lambda _: t.run(state="started"))),
        ("exposed", step(run=lambda _: t.run(pools(("default", 2), **GROWN), proxmox_vm_scale_down_delete=False))),
        ("deleted_list", step(run=lambda seen: t.run(
            state="absent", proxmox_vm_delete_list=[v["name"] for v in seen["exposed"]["run"].to_remove]))),
        ("deleted", before_and(step(run=lambda _: t.run(state="absent")))),
        ("deleted_again", step(run=lambda _: t.run(state="absent"))),
    ]


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    yield from tenant_story(tmp_path_factory, "pve-lifecycle", "lifecycle", "life", lifecycle_steps)


@pytest.fixture(scope="module", autouse=True)
def _stories_run_in_the_background(request):
    """Start the stories (each on its own lab) with the module when any selected test checks them, so
    their runs overlap with each other and with the tests on the shared lab."""
    selected = [item for item in request.session.items if item.module is request.module]
    for story in ("lifecycle", "dhcp"):
        if any(story in item.fixturenames for item in selected):
            request.getfixturevalue(story)


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


@pytest.fixture(scope="module")
def refused(lab, tmp_path_factory):
    """Runs the role must refuse, at verbosity 3 (the secret test reads them): bad input, a version
    without template, an API certificate from a foreign CA."""
    from agentkube_lab.certs import LabCA

    t = Tenant(lab, tmp_path_factory.mktemp("refused"), "refused")
    mark = len(lab.fake.requests)
    bad = t.run(pools(("default", 2), disk=5), verbosity=3)
    t.version = "v1.20.1"
    no_template = t.run(pools(("default", 1)), verbosity=3)
    requests = lab.fake.requests[mark:]
    t.version = "v1.35.7"
    t.settings["proxmox_vm_ca_file"] = str(LabCA(tmp_path_factory.mktemp("other-ca")).ca_file)
    foreign_ca = t.run(pools(("default", 1)), verbosity=3)
    return {"bad": bad, "no_template": no_template, "requests": requests, "foreign_ca": foreign_ca}


def test_bad_input_fails_naming_the_field_before_anything_is_touched(refused):
    assert refused["bad"].rc != 0 and "nodePools[0]" in refused["bad"].stdout
    no_template = refused["no_template"]
    assert no_template.rc != 0 and "proxmox_vm_templates" in no_template.stdout
    assert refused["requests"] == []


def test_tls_is_verified_against_the_configured_ca(refused):
    run = refused["foreign_ca"]
    assert run.rc != 0 and "TLS verification failed" in run.stdout


def test_token_secret_never_reaches_output_or_artifacts(lab, refused, lifecycle):
    ok = lifecycle.story["created"]["run"]
    assert ok.rc == 0
    checked = [(ok, lifecycle.lab.token_secret)] + [(refused[k], lab.token_secret) for k in ("bad", "no_template",
                                                                                              "foreign_ca")]
    for run, secret in checked:
        assert secret not in run.stdout
        files = [p for p in run.artifacts.rglob("*") if p.is_file()]
        assert files, "ansible-runner wrote artifacts"
        leaked = [str(p) for p in files if secret in p.read_text(errors="replace")]
        assert leaked == []


# ------------------------------------------------------------------ DHCP (guest agent)


def dhcp_steps(lab: PveLab, t: Tenant) -> list:
    silent = f"{t.name}-default-2"

    def with_a_silent_guest(seen):
        lab.guests.silent.add(silent)
        try:
            mark = len(lab.fake.requests)
            run = t.run(pools(("default", 3)), proxmox_vm_dhcp_timeout=3)
            return {"run": run, "silent": silent, "mark": mark, "after": snapshot(lab)}
        finally:
            lab.guests.silent.discard(silent)

    return [
        ("created", lambda _: {"run": t.run(pools(("default", 2))), "after": snapshot(lab)}),
        ("rerun", lambda _: {"run": t.run(pools(("default", 2)))}),
        # a third VM whose guest agent never comes up
        ("timed_out", with_a_silent_guest),
    ]


@pytest.fixture(scope="module")
def dhcp(tmp_path_factory):
    """One DHCP tenant on its own lab, in the background: 2 VMs, a re-run, then a third VM whose guest
    agent never comes up."""
    lab = start_lab(tmp_path_factory, "pve-dhcp")
    tenant = Tenant(lab, tmp_path_factory.mktemp("dhcp"), "dhcp", settings=lab.group_vars(ip_mode="dhcp"))
    story = Story(dhcp_steps(lab, tenant)).start()
    yield TenantStory(lab, tenant, story)
    story.join()
    lab.stop()


def test_dhcp_addresses_are_learned_from_the_guest_agent(dhcp):
    t, created, state = dhcp.tenant, dhcp.story["created"]["run"], dhcp.story["created"]["after"]
    assert created.rc == 0, created.stdout[-3000:]
    assert [n["name"] for n in created.nodes] == [f"{t.name}-default-{i}" for i in range(2)]
    assert {n["status"] for n in created.nodes} == {"running"}
    dhcp_range = LabDhcp().addresses
    vms = by_name(state, t.service_id)
    for node in created.nodes:
        vm = vms[node["name"]]
        # Cloud-init asks for DHCP, the agent channel is enabled before first boot, no static claim is made.
        assert vm.config["ipconfig0"] == "ip=dhcp"
        assert str(vm.config["agent"]) == "1"
        assert "ip=dhcp" in urllib.parse.unquote(str(vm.config["description"]))
        # The address is the lab DHCP server's lease for the VM's MAC, as its guest agent reports it.
        assert node["ip"] in dhcp_range
        assert node["ip"] == agent_ipv4(vm) == dhcp.lab.guests.dhcp.leases[mac_of(vm.config["net0"])]
        assert ("network-get-interfaces", {}) in vm.agent_requests
    assert len({n["ip"] for n in created.nodes}) == 2

    rerun = dhcp.story["rerun"]["run"]
    assert rerun.rc == 0 and rerun.changed == 0, rerun.stdout[-3000:]
    assert rerun.nodes == created.nodes, "the same leases are learned again"


def test_a_guest_agent_that_never_comes_up_fails_after_the_timeout_naming_the_vm(dhcp):
    step = dhcp.story["timed_out"]
    t, run, state, silent = dhcp.tenant, step["run"], step["after"], step["silent"]
    assert run.rc != 0
    failure = [line for line in run.stdout.splitlines() if "no address from the QEMU guest agent" in line]
    assert failure, run.stdout[-3000:]
    assert "proxmox_vm_dhcp_timeout=3s" in failure[0] and silent in failure[0]
    assert f"{t.name}-default-0" not in failure[0] and f"{t.name}-default-1" not in failure[0]
    vm = by_name(state, t.service_id)[silent]
    assert vm.status == "running" and vm.agent is None, "the VM runs; only its agent stays silent"
    polls = [path for method, path, _ in state.requests[step["mark"]:]
             if method == "GET" and path.endswith(f"/qemu/{vm.vmid}/agent/network-get-interfaces")]
    assert len(polls) > 1, "the agent was polled until the timeout, not asked once"


# ------------------------------------------------------------------ lifecycle checks


def test_pool_of_five_is_created_in_parallel_and_rerun_changes_nothing(lifecycle):
    t, story = lifecycle.tenant, lifecycle.story
    first, state = story["created"]["run"], story["created"]["after"]
    assert first.rc == 0, first.stdout[-3000:]
    names = lifecycle.names(*range(5))
    assert [n["name"] for n in first.nodes] == names
    assert {n["status"] for n in first.nodes} == {"running"}
    assert len({n["vmid"] for n in first.nodes}) == 5 and all(4100 <= n["vmid"] <= 4999 for n in first.nodes)
    assert len({n["ip"] for n in first.nodes}) == 5
    vms = by_name(state, t.service_id)
    for node in first.nodes:
        cfg = vms[node["name"]].config
        assert cfg["ipconfig0"] == f"ip={node['ip']}/24,gw=127.0.10.1"
        assert str(cfg["cores"]) == "2" and str(cfg["memory"]) == "4096"
        assert "size=40G" in cfg["scsi0"]
        assert cfg["ciuser"] == "agentkube" and str(cfg["ciupgrade"]) == "0" and cfg["nameserver"] == "127.0.10.1"
        assert urllib.parse.unquote(cfg["sshkeys"]).startswith("ssh-ed25519 ")
        assert set(cfg["tags"].split(";")) == {"agentkube", f"svc-{t.service_id}", f"tenant-{t.name}",
                                              "pool-default"}
    # Both nodes used, since the lab's target nodes are pve1 and pve2.
    assert {n["node"] for n in first.nodes} == {"pve1", "pve2"}
    assert not locked_touches(state)

    second = story["rerun"]["run"]
    assert second.rc == 0 and second.changed == 0, second.stdout[-3000:]
    assert second.nodes == first.nodes
    assert_clean_cluster(story["rerun"]["after"], {t.service_id: names})


def test_scale_down_then_up_touches_only_the_new_vms_and_reuses_freed_addresses(lifecycle):
    t, story = lifecycle.tenant, lifecycle.story
    before = {n["name"]: n["vmid"] for n in story["created"]["run"].nodes}
    ips = {n["name"]: n["ip"] for n in story["created"]["run"].nodes}

    down = story["scaled_down"]["run"]
    assert down.rc == 0, down.stdout[-3000:]
    # Highest indices first, exposed before deletion.
    assert [v["name"] for v in down.to_remove] == lifecycle.names(4, 3, 2)
    assert [n["name"] for n in down.nodes] == lifecycle.names(0, 1)
    assert_clean_cluster(story["scaled_down"]["after"], {t.service_id: lifecycle.names(0, 1)})

    step = story["scaled_up"]
    up = step["run"]
    assert up.rc == 0, up.stdout[-3000:]
    after = {n["name"]: n["vmid"] for n in up.nodes}
    kept = {before[name] for name in lifecycle.names(0, 1)}
    assert {after[name] for name in lifecycle.names(0, 1)} == kept
    new = {after[name] for name in lifecycle.names(2, 3)}
    mark = len(step["before"].requests)
    assert writes_to(step["after"], kept, mark) == []
    assert writes_to(step["after"], new, mark), "the new VMs were configured and started"
    assert_clean_cluster(step["after"], {t.service_id: lifecycle.names(*range(4))})
    # Addresses freed by the scale-down go back to the pool: the new VMs get the lowest free ones.
    expected = lowest_free(step["before"], 2)
    freed = {ips[name] for name in lifecycle.names(2, 3, 4)}
    assert set(expected) <= freed, "the lowest free addresses are the freed ones in this lab"
    assert sorted(n["ip"] for n in up.nodes if n["vmid"] in new) == sorted(expected)


def test_resize_grows_and_a_shrink_fails_naming_the_vm(lifecycle):
    t, story = lifecycle.tenant, lifecycle.story
    grown = story["grown"]["run"]
    assert grown.rc == 0, grown.stdout[-3000:]
    vms = tenant_vms(story["grown"]["after"], t.service_id)
    assert len(vms) == 4
    for vm in vms:
        effective = {**vm.config, **{k: v for k, v in vm.pending.items() if v is not None}}
        assert str(effective["cores"]) == "4" and str(effective["memory"]) == "8192"
        assert "size=50G" in vm.config["scsi0"]
    assert story["grown_rerun"]["run"].changed == 0

    shrink = story["shrink"]["run"]
    assert shrink.rc != 0
    assert f"{t.name}-default-0" in shrink.stdout and "is 50 GiB, requested 10 GiB" in shrink.stdout
    assert all("size=50G" in vm.config["scsi0"] for vm in tenant_vms(story["shrink"]["after"], t.service_id))


def test_stop_is_graceful_then_hard_and_start_brings_them_back(lifecycle):
    step = lifecycle.story["stopped"]
    stopped = step["run"]
    assert stopped.rc == 0, stopped.stdout[-3000:]
    assert len(stopped.nodes) == 4 and {n["status"] for n in stopped.nodes} == {"stopped"}
    kinds = [task["type"] for task in step["after"].tasklog if task["id"] == str(step["stubborn"])]
    assert "qmshutdown" in kinds and kinds[-1] == "qmstop"
    started = lifecycle.story["started"]["run"]
    assert started.rc == 0 and {n["status"] for n in started.nodes} == {"running"}


def test_scale_down_can_expose_first_and_delete_exactly_the_list_later(lifecycle):
    t, story = lifecycle.tenant, lifecycle.story
    planned = story["exposed"]["run"]
    assert planned.rc == 0
    assert [v["name"] for v in planned.to_remove] == lifecycle.names(3, 2)
    assert len(tenant_vms(story["exposed"]["after"], t.service_id)) == 4, "nothing deleted before the drain"
    gone = story["deleted_list"]["run"]
    assert gone.rc == 0
    assert [n["name"] for n in gone.nodes] == lifecycle.names(0, 1)
    assert_clean_cluster(story["deleted_list"]["after"], {t.service_id: lifecycle.names(0, 1)})


def test_delete_frees_addresses_and_deleting_again_succeeds(lifecycle):
    t, story = lifecycle.tenant, lifecycle.story
    freed = {n["ip"] for n in story["deleted_list"]["run"].nodes}
    assert len(freed) == 2
    step = story["deleted"]
    gone, state = step["run"], step["after"]
    assert gone.rc == 0 and gone.nodes == []
    assert tenant_vms(state, t.service_id) == []
    deletes = [path for method, path, _ in state.requests[len(step["before"].requests):] if method == "DELETE"]
    assert len(deletes) == 2
    destroyed = [task for task in state.tasklog if task["type"] == "qmdestroy"]
    assert destroyed and all(task["exitstatus"] == "OK" for task in destroyed)
    still_claimed = {ip_of(vm) for vm in state.vms} | {
        str(vm.config.get("description", "")).rsplit("ip=", 1)[-1] for vm in state.vms}
    assert not freed & still_claimed
    again = story["deleted_again"]["run"]
    assert again.rc == 0 and again.changed == 0


def test_the_lifecycle_lab_ends_without_leftovers(lifecycle):
    state = lifecycle.story["deleted_again"]["after"]
    assert_clean_cluster(state, {lifecycle.tenant.service_id: []})
    assert [vm.name for vm in state.vms if not vm.template] == [], "no VM left behind by any step"
