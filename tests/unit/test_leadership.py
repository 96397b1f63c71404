"""One active instance: leader election on a Lease of the Kubernetes emulator (through the official client's
leader election), on a file lock in the state directory (across processes, with a SIGKILL), and the factory.
Waits are bounded and generous; assertions are on order and state, never on durations."""

from __future__ import annotations

import datetime
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from unit_support import grant_leader_election, kube_with_namespace, wait_for

from agentkube.adapters.leadership import (
    FileLockLeadership,
    Leadership,
    LeaseLeadership,
    SoleLeadership,
    leadership_for,
    lease_name_for,
)
from agentkube_lab.kube_emulator import KubeEmulator

NS = "agents"
LEASE = "agentkube-test"
FAST = {"lease_duration_s": 3, "renew_deadline_s": 2, "retry_period_s": 1}  # the client's smallest valid bounds


class Recorder:
    """The callbacks of one instance, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def start(self, leadership: Leadership) -> Leadership:
        leadership.start(lambda: self.events.append("started"), lambda: self.events.append("stopped"))
        return leadership


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[KubeEmulator]:
    emulator = kube_with_namespace(tmp_path / "kube", NS)
    yield emulator
    emulator.stop()


@pytest.fixture
def agent_kubeconfig(emu: KubeEmulator, tmp_path: Path) -> Path:
    """The agent's own identity on the parent, with only what leader election needs (get/create/update leases)."""
    grant_leader_election(emu, NS, "agentkube-leader-election", {"kind": "User", "name": "agentkube"})
    path = tmp_path / "agent.kubeconfig"
    path.write_text(emu.identity_kubeconfig("agentkube"))
    return path


def _lease(emu: KubeEmulator) -> dict:
    return emu.get("coordination.k8s.io/v1", "Lease", NS, LEASE) or {}


def _holder(emu: KubeEmulator) -> str | None:
    return (_lease(emu).get("spec") or {}).get("holderIdentity")


@pytest.fixture
def pair(agent_kubeconfig: Path) -> Iterator[tuple[list[LeaseLeadership], list[Recorder]]]:
    instances = [LeaseLeadership(agent_kubeconfig, NS, LEASE, identity=f"agent-{i}", **FAST) for i in range(2)]
    recorders = [Recorder(), Recorder()]
    yield instances, recorders
    for instance in instances:
        instance.stop()


def test_two_lease_instances_one_leads_and_a_stopped_leader_hands_over(emu: KubeEmulator, pair) -> None:
    instances, recorders = pair
    for instance, recorder in zip(instances, recorders, strict=True):
        recorder.start(instance)
    wait_for(lambda: any(i.is_leader for i in instances), timeout=30)
    leader = next(i for i in instances if i.is_leader)
    standby = next(i for i in instances if i is not leader)
    assert not standby.is_leader and _holder(emu) == leader.identity
    wait_for(lambda: standby.status().holder == leader.identity, timeout=30)  # the standby saw who leads
    assert standby.status().is_leader is False and leader.status().acquisitions == 1

    leader.stop()
    assert recorders[instances.index(leader)].events == ["started", "stopped"]
    assert _holder(emu) in ("", standby.identity)  # released (client-go ReleaseOnCancel), or already taken
    assert standby.wait_leader(timeout=30)
    assert _holder(emu) == standby.identity and not leader.is_leader
    assert _lease(emu)["spec"]["leaseTransitions"] >= 1
    assert recorders[instances.index(standby)].events == ["started"]


def test_an_abandoned_lease_is_taken_over_once_it_expires(emu: KubeEmulator, pair) -> None:
    instances, recorders = pair
    first, second = instances
    recorders[0].start(first)
    assert first.wait_leader(timeout=30)
    recorders[1].start(second)
    wait_for(lambda: second.status().holder == first.identity, timeout=30)
    transitions = _lease(emu)["spec"].get("leaseTransitions") or 0

    first.stop(release=False)  # a crash: renewals stop, the lease still names the dead leader
    assert _holder(emu) in (first.identity, second.identity)
    assert second.wait_leader(timeout=30)
    assert _holder(emu) == second.identity and _lease(emu)["spec"]["leaseTransitions"] == transitions + 1
    assert recorders[0].events == ["started", "stopped"] and recorders[1].events == ["started"]


def test_a_leader_that_cannot_renew_reports_the_loss_and_leads_again_later(emu: KubeEmulator, pair) -> None:
    instances, recorders = pair
    leader = recorders[0].start(instances[0])
    assert leader.wait_leader(timeout=30)
    emu.inject(rf"/leases/{LEASE}$", 503, times=None)  # the parent stops answering for the lease
    wait_for(lambda: recorders[0].events == ["started", "stopped"], timeout=30)
    assert not leader.is_leader
    emu.clear_faults()
    assert leader.wait_leader(timeout=30)
    assert recorders[0].events == ["started", "stopped", "started"] and leader.status().acquisitions == 2


def test_a_lease_held_by_another_holder_is_not_taken_before_it_expires(emu: KubeEmulator,
                                                                       agent_kubeconfig: Path) -> None:
    # someone else holds it and keeps renewing: the candidate stays a follower and reports the holder
    api = client.CoordinationV1Api(config.new_client_from_config(str(agent_kubeconfig)))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api.create_namespaced_lease(NS, {"metadata": {"name": LEASE},
                                     "spec": {"holderIdentity": "other", "leaseDurationSeconds": 3600,
                                              "acquireTime": now, "renewTime": now}})
    candidate = LeaseLeadership(agent_kubeconfig, NS, LEASE, identity="agent-0", **FAST)
    recorder = Recorder()
    try:
        recorder.start(candidate)
        wait_for(lambda: candidate.status().holder == "other", timeout=30)
        assert not candidate.is_leader and _holder(emu) == "other" and recorder.events == []
    finally:
        candidate.stop()
    assert _holder(emu) == "other"  # a follower never releases what it does not hold


@pytest.mark.parametrize("bounds", [
    {"lease_duration_s": 2, "renew_deadline_s": 2, "retry_period_s": 1},
    {"lease_duration_s": 15, "renew_deadline_s": 2, "retry_period_s": 2},
    {"lease_duration_s": 15.5, "renew_deadline_s": 10, "retry_period_s": 2},
    {"lease_duration_s": 15, "renew_deadline_s": 10, "retry_period_s": 0.5},
])
def test_lease_bounds_are_checked_instead_of_exiting(tmp_path: Path, bounds: dict) -> None:
    with pytest.raises(ValueError):
        LeaseLeadership(tmp_path / "unused", NS, LEASE, **bounds)


def test_file_lock_in_one_process_one_leads_then_the_other(tmp_path: Path) -> None:
    path = tmp_path / "state" / "leader.lock"
    a, b = (FileLockLeadership(path, identity=name, retry_period_s=0.05) for name in ("a", "b"))
    ra, rb = Recorder(), Recorder()
    try:
        ra.start(a)
        assert a.wait_leader(timeout=10)
        rb.start(b)
        wait_for(lambda: b.status().holder == "a", timeout=10)
        assert not b.is_leader and path.read_text().strip() == "a"
        a.stop()
        assert ra.events == ["started", "stopped"]
        assert b.wait_leader(timeout=10) and path.read_text().strip() == "b"
        path.unlink()  # a removed lock file no longer protects anything: the leader steps down
        wait_for(lambda: rb.events == ["started", "stopped", "started"], timeout=10)
        assert b.is_leader and path.read_text().strip() == "b"
    finally:
        a.stop()
        b.stop()


_CHILD = textwrap.dedent("""
    import sys, threading
    from agentkube.adapters.leadership import FileLockLeadership
    lock = FileLockLeadership(sys.argv[1], identity=sys.argv[2], retry_period_s=0.05)
    def seen():
        while not lock.is_leader:
            if lock.status().holder:
                print("STANDBY", lock.status().holder, flush=True)
                return
            threading.Event().wait(0.05)
    lock.start(lambda: print("LEADING", flush=True), lambda: None)
    seen()
    threading.Event().wait()
""")


class Child:
    def __init__(self, lock: Path, identity: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(lock), identity], stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float = 30) -> str:
        return self.lines.get(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_file_lock_across_processes_a_killed_leader_lets_the_standby_lead(tmp_path: Path) -> None:
    lock = tmp_path / "state" / "leader.lock"
    lock.parent.mkdir()
    first = Child(lock, "first")
    second = None
    try:
        assert first.next_line() == "LEADING"
        second = Child(lock, "second")
        assert second.next_line() == "STANDBY first"
        first.kill()  # SIGKILL: no stop(), no unlock; the kernel drops the flock with the process
        assert second.next_line() == "LEADING"
        assert lock.read_text().strip() == "second"
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_factory_and_names(tmp_path: Path, agent_kubeconfig: Path) -> None:
    common = {"state_dir": tmp_path / "state", "namespace": NS, "name": LEASE, **FAST}
    chosen = leadership_for("auto", kubeconfig=None, **common)
    assert isinstance(chosen, FileLockLeadership) and chosen.path == tmp_path / "state" / "leader.lock"
    lease = leadership_for("auto", kubeconfig=agent_kubeconfig, **common)
    assert isinstance(lease, LeaseLeadership) and (lease.namespace, lease.name) == (NS, LEASE)
    lease.stop()
    with pytest.raises(ValueError):
        leadership_for("lease", kubeconfig=None, **common)
    with pytest.raises(ValueError):
        leadership_for("etcd", kubeconfig=None, **common)
    sole = leadership_for("none", kubeconfig=None, **common)
    recorder = Recorder()
    recorder.start(sole)
    assert isinstance(sole, SoleLeadership) and sole.is_leader and sole.wait_leader(0)
    sole.stop()
    assert recorder.events == ["started", "stopped"] and not sole.is_leader
    assert isinstance(chosen, Leadership) and isinstance(lease, Leadership)
    assert lease_name_for("6F1C_8a9b/x") == "agentkube-6f1c-8a9b-x"
    assert lease_name_for("0d4a1c1e-2b7d-4f1e-9c55-5a0ab0bd4a11").startswith("agentkube-0d4a1c1e")
