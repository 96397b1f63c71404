"""One active agent instance at a time: leader election among the processes that share one Fulcrum token.

Three implementations of one interface (`Leadership`), picked by `leadership_for`:
- `LeaseLeadership`: a coordination.k8s.io/v1 Lease on the Kamaji parent cluster, through the official kubernetes
  client's leader election (kubernetes.leaderelection: LeaderElection, electionconfig.Config, LeaseLock), with the
  semantics of client-go's staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go (acquire every
  retry period; a follower takes an expired lease, one whose record it has not seen change for leaseDuration; the
  leader renews every retry period and gives up when it could not renew within renewDeadline; release on stop).
- `FileLockLeadership`: an exclusive flock(2) on <state_dir>/leader.lock, tried every retry period; the kernel
  drops the lock when the holding process dies, however it dies.
- `SoleLeadership`: always the leader (a single instance, or tests of other parts).

Callbacks run on the election's thread (or on the thread calling stop()) and must return quickly: they should
only set flags. `on_stopped_leading` is called exactly once after each `on_started_leading`, before the lease
or lock is released. `is_leader` is the value to consult before claiming a job: for a Lease it turns False on
its own once renewDeadline has passed since the last successful renewal, even while a renewal request hangs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from kubernetes import client as k8s_client

log = logging.getLogger(__name__)

Callback = Callable[[], None]
KINDS = ("auto", "lease", "file", "none")
LOCK_FILE_NAME = "leader.lock"


@dataclass(frozen=True)
class LeadershipStatus:
    """What /readyz and /metrics show: the mechanism, this instance's identity, whether it leads, the holder it
    last saw ("" when unknown or free), how many times it became leader, when its state last changed
    (time.monotonic())."""

    kind: str
    identity: str
    is_leader: bool
    holder: str
    acquisitions: int
    since: float


@runtime_checkable
class Leadership(Protocol):
    kind: str

    @property
    def identity(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    def start(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None: ...

    def wait_leader(self, timeout: float | None = None) -> bool: ...

    def status(self) -> LeadershipStatus: ...

    def stop(self, release: bool = True) -> None: ...


def default_identity() -> str:
    """hostname, pid and a random suffix: unique per process, readable in `kubectl get lease -o yaml`."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(4)}"


_NOT_DNS = re.compile(r"[^a-z0-9.-]+")


def lease_name_for(agent_id: str, prefix: str = "agentkube") -> str:
    """A Lease name (a DNS-1123 subdomain, pkg/apis/coordination/validation ValidateLease: NameIsDNSSubdomain)
    from the agent's Fulcrum id: every instance of one agent derives the same name."""
    name = _NOT_DNS.sub("-", f"{prefix}-{agent_id}".lower()).strip("-.")[:253].strip("-.")
    if not name:
        raise ValueError(f"no lease name can be made of {agent_id!r}")
    return name


class _Base:
    """State and callback bookkeeping shared by the implementations."""

    kind = "base"

    def __init__(self, identity: str | None) -> None:
        self._identity = identity or default_identity()
        self._stop = threading.Event()
        self._leader_event = threading.Event()
        self._state_lock = threading.RLock()
        self._leading = False
        self._acquisitions = 0
        self._since = time.monotonic()
        self._holder = ""
        self._on_started: Callback = lambda: None
        self._on_stopped: Callback = lambda: None
        self._thread: threading.Thread | None = None

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def is_leader(self) -> bool:
        return self._leading

    def wait_leader(self, timeout: float | None = None) -> bool:
        """Blocks until this instance leads (True), or the timeout passes or stop() is called (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set() and not self.is_leader:
            remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if remaining <= 0:
                break
            # the event wakes a waiter as soon as leadership begins; once set (a lease past its renew deadline
            # that the election thread has not yet declared lost) poll instead of spinning on it
            (self._stop if self._leader_event.is_set() else self._leader_event).wait(remaining)
        return self.is_leader

    def status(self) -> LeadershipStatus:
        with self._state_lock:
            return LeadershipStatus(self.kind, self._identity, self.is_leader,
                                    self._identity if self.is_leader else self._holder, self._acquisitions,
                                    self._since)

    def _start_thread(self, target: Callable[[], None], on_started: Callback, on_stopped: Callback) -> None:
        if self._thread is not None:
            raise RuntimeError("leadership already started")
        self._on_started, self._on_stopped = on_started, on_stopped
        self._thread = threading.Thread(target=target, name=f"leadership-{self.kind}", daemon=True)
        self._thread.start()

    def _join(self, timeout: float) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _became_leader(self) -> None:
        with self._state_lock:
            if self._leading:
                return
            self._leading = True
            self._acquisitions += 1
            self._since = time.monotonic()
            self._holder = self._identity
            self._leader_event.set()
        log.info("leadership (%s): %s is the leader", self.kind, self._identity)
        self._call(self._on_started, "on_started_leading")

    def _lost_leader(self, why: str) -> None:
        with self._state_lock:
            if not self._leading:
                return
            self._leading = False
            self._leader_event.clear()
            self._since = time.monotonic()
        log.log(logging.INFO if self._stop.is_set() else logging.WARNING,
                "leadership (%s): %s is no longer the leader: %s", self.kind, self._identity, why)
        self._call(self._on_stopped, "on_stopped_leading")

    @staticmethod
    def _call(callback: Callback, name: str) -> None:
        try:
            callback()
        except Exception:
            log.exception("leadership: the %s callback raised", name)


# ------------------------------------------------------------------------------------------------ Lease
def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a call through the kubernetes client may raise besides a refusal: an API error, a connection or TLS
    failure, a timeout, an undecodable answer."""
    import urllib3
    from kubernetes.client.rest import ApiException

    return ApiException, urllib3.exceptions.HTTPError, OSError, ValueError


def _election_classes() -> tuple[type, type]:
    """The official client's classes, imported on first use (the file lock needs none of them)."""
    from kubernetes import client
    from kubernetes.leaderelection.leaderelection import LeaderElection

    class _TimedCoordinationApi(client.CoordinationV1Api):
        """CoordinationV1Api with a timeout on the three calls LeaseLock makes (it passes none, and a request
        hanging on a dead connection would otherwise stall the renew loop for good)."""

        def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
            super().__init__(api_client)
            self._timeout = timeout

        def read_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("_request_timeout", self._timeout)
            return super().read_namespaced_lease(*args, **kwargs)

        def create_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("_request_timeout", self._timeout)
            return super().create_namespaced_lease(*args, **kwargs)

        def replace_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("_request_timeout", self._timeout)
            return super().replace_namespaced_lease(*args, **kwargs)

    class _StoppableElection(LeaderElection):
        """kubernetes.leaderelection.LeaderElection with what the agent needs and its run() lacks: run() blocks
        in time.sleep() loops that nothing can stop, returns for good after one lost term, lets any exception
        other than ApiException (a refused connection, a timeout) end the thread, never releases the lease, and
        leaves leaseTransitions alone. This keeps its try_acquire_or_renew() and LeaseLock (the record, the
        expiry rule, the optimistic update with the read resourceVersion) and replaces only the loops around
        them, with client-go's timing (tools/leaderelection/leaderelection.go acquire/renew), waiting on an
        Event so that stop() ends them at once."""

        owner: LeaseLeadership

        def attempt(self) -> bool:
            try:
                return bool(self.try_acquire_or_renew())
            except _transport_errors() as e:  # the client lets these escape; count them as a failed attempt
                log.info("leadership (lease): %s could not reach the lease: %s", self.election_config.lock.identity,
                         e.__class__.__name__)
                return False

        def observed_holder(self) -> str:
            record = self.observed_record
            return (record.holder_identity or "") if record is not None else ""

        def update_lock(self, leader_election_record: Any) -> bool:
            # client-go tryAcquireOrRenew: a new holder counts one more leaderTransition (LeaseLock keeps the
            # spec it read, so the count is carried over otherwise)
            lock = self.election_config.lock
            spec = getattr(lock.lease_reference, "spec", None)
            if spec is not None and spec.holder_identity != lock.identity:
                spec.lease_transitions = (spec.lease_transitions or 0) + 1
            return bool(super().update_lock(leader_election_record))

    return _TimedCoordinationApi, _StoppableElection


class LeaseLeadership(_Base):
    """Leader election on the Lease `namespace/name` of the cluster `kubeconfig` points at (the Kamaji parent).
    The kubeconfig's identity needs get, create and update on leases in that namespace.

    Bounds (client-go's): lease_duration_s > renew_deadline_s > 1.2 * retry_period_s, each >= 1 s (the client's
    electionconfig.Config exits the process otherwise; they are checked here first and raise ValueError);
    lease_duration_s is whole seconds (LeaseLock writes int(str(duration))). A standby takes over at most
    lease_duration_s + retry_period_s after the leader's last renewal when the leader dies, and within one retry
    period when the leader stops (the lease is released as client-go's ReleaseOnCancel does: holderIdentity
    cleared, leaseDurationSeconds 1)."""

    kind = "lease"

    def __init__(self, kubeconfig: str | Path, namespace: str, name: str, *, identity: str | None = None,
                 lease_duration_s: float = 15, renew_deadline_s: float = 10, retry_period_s: float = 2,
                 context: str | None = None, request_timeout_s: float | None = None) -> None:
        super().__init__(identity)
        if float(lease_duration_s) != math.floor(lease_duration_s):
            raise ValueError(f"lease_duration_s must be whole seconds, not {lease_duration_s}")
        if min(lease_duration_s, renew_deadline_s, retry_period_s) < 1:
            raise ValueError("lease_duration_s, renew_deadline_s and retry_period_s must each be at least 1 s")
        if not lease_duration_s > renew_deadline_s > 1.2 * retry_period_s:
            raise ValueError("leader election needs lease_duration_s > renew_deadline_s > 1.2 * retry_period_s "
                             f"(got {lease_duration_s}, {renew_deadline_s}, {retry_period_s})")
        from kubernetes import config
        from kubernetes.leaderelection import electionconfig
        from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

        timed_api, election_cls = _election_classes()
        self.namespace, self.name = namespace, name
        self.lease_duration_s, self.renew_deadline_s = int(lease_duration_s), float(renew_deadline_s)
        self.retry_period_s = float(retry_period_s)
        self._request_timeout = request_timeout_s or self.retry_period_s
        self._api_client: k8s_client.ApiClient = config.new_client_from_config(
            config_file=str(kubeconfig), context=context, persist_config=False)
        lock = LeaseLock(name, namespace, self._identity)
        # LeaseLock builds a CoordinationV1Api on the process-wide default configuration; use this kubeconfig's
        lock.api_instance.api_client.close()
        lock.api_instance = timed_api(self._api_client, self._request_timeout)
        self._lock = lock
        self._election = election_cls(electionconfig.Config(
            lock, self.lease_duration_s, self.renew_deadline_s, self.retry_period_s,
            onstarted_leading=lambda: None, onstopped_leading=lambda: None))
        self._last_renew = 0.0

    @property
    def is_leader(self) -> bool:
        # not beyond the renew deadline, even while a renewal is still in flight
        return self._leading and time.monotonic() < self._last_renew + self.renew_deadline_s

    def start(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        self._start_thread(self._run, on_started_leading, on_stopped_leading)

    def _run(self) -> None:
        election = self._election
        while not self._stop.is_set():
            # follower: client-go acquire(), every retry period until it succeeds
            if not election.attempt():
                self._holder = election.observed_holder()
                self._stop.wait(self.retry_period_s)
                continue
            self._last_renew = time.monotonic()
            self._became_leader()
            self._renew_until_lost()
        # stop() handles the release

    def _renew_until_lost(self) -> None:
        """client-go renew(): every retry period; the term ends when no attempt succeeded within renew deadline
        (counted here from the last successful renewal, which is stricter than client-go's count from the start
        of the failing round) or as soon as the lease shows another holder."""
        election = self._election
        while not self._stop.wait(self.retry_period_s):
            deadline = self._last_renew + self.renew_deadline_s
            while not self._stop.is_set():
                if election.attempt():
                    self._last_renew = time.monotonic()
                    break
                holder = election.observed_holder()
                if holder and holder != self._identity:
                    self._holder = holder
                    self._lost_leader(f"the lease is held by {holder}")
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._lost_leader(f"not renewed within {self.renew_deadline_s:g}s")
                    return
                self._stop.wait(min(self.retry_period_s, remaining))

    def stop(self, release: bool = True) -> None:
        """Stops the election. A leader calls on_stopped_leading, then (release=True) releases the lease so that
        a standby takes it at its next retry; release=False leaves it to expire, as a crash would."""
        self._stop.set()
        self._join(self._request_timeout + self.retry_period_s + 5)
        was_leader = self._leading
        self._lost_leader("stopped")
        if release and was_leader:
            self._release()
        self._api_client.close()

    def _release(self) -> None:
        """client-go release(): the lease's holder cleared, leaseDurationSeconds 1, times now; only when the
        lease (read again for its resourceVersion) still names this instance."""
        from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord

        try:
            found, record = self._lock.get(self.name, self.namespace)
            if not found or getattr(record, "holder_identity", None) != self._identity:
                return
            # the record's time format is str(datetime) of local time, as LeaderElection writes it; a whole second
            # would go out without the six fractional digits a MicroTime needs (and be refused), so never send one
            moment = dt.datetime.now()
            now = str(moment if moment.microsecond else moment.replace(microsecond=1))
            if self._lock.update(self.name, self.namespace, LeaderElectionRecord("", "1", now, now)):
                log.info("leadership (lease): %s released %s/%s", self._identity, self.namespace, self.name)
        except _transport_errors() as e:  # the lease then expires on its own
            log.warning("leadership (lease): could not release %s/%s: %s", self.namespace, self.name,
                        e.__class__.__name__)


# ------------------------------------------------------------------------------------------------ file lock
class FileLockLeadership(_Base):
    """An exclusive, non-blocking flock(2) on `path`, tried every retry period. The lock belongs to the open file
    description: it is released on stop() and by the kernel when the process dies (SIGKILL, OOM), so a standby on
    the same host (or the same state directory on a file system with working flock) takes over within one retry
    period. The descriptor is close-on-exec: playbook runs never inherit it. The file is never removed (a removed
    lock file would let two processes lock two different files); it holds the leader's identity, for operators."""

    kind = "file"

    def __init__(self, path: str | Path, *, identity: str | None = None, retry_period_s: float = 1.0) -> None:
        super().__init__(identity)
        if retry_period_s <= 0:
            raise ValueError("retry_period_s must be positive")
        self.path = Path(path)
        self.retry_period_s = float(retry_period_s)
        self._fd: int | None = None

    def start(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._start_thread(self._run, on_started_leading, on_stopped_leading)

    def _try_lock(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self._identity}\n".encode(), 0)
        self._fd = fd
        return True

    def _still_ours(self) -> bool:
        """The path still names the locked file (someone may have removed or replaced it)."""
        if self._fd is None:
            return False
        try:
            here, locked = os.stat(self.path), os.fstat(self._fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino)

    def _read_holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def _unlock(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor of the open file description drops the flock

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._leading:
                    if self._try_lock():
                        self._became_leader()
                    else:
                        self._holder = self._read_holder()
                elif not self._still_ours():
                    self._lost_leader(f"{self.path} was removed or replaced")
                    self._unlock()
            except OSError as e:
                log.warning("leadership (file): %s: %s", self.path, e)
            self._stop.wait(self.retry_period_s)

    def stop(self, release: bool = True) -> None:
        """Stops trying; a leader calls on_stopped_leading, then unlocks. release=False keeps the lock held until
        the process exits (what a crash does: the kernel then releases it)."""
        self._stop.set()
        self._join(self.retry_period_s + 5)
        self._lost_leader("stopped")
        if release:
            self._unlock()


# ------------------------------------------------------------------------------------------------ no election
class SoleLeadership(_Base):
    """No election: this instance leads from start() to stop(). For a deployment that runs one instance."""

    kind = "none"

    def start(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        if self._thread is not None or self._leading:
            raise RuntimeError("leadership already started")
        self._on_started, self._on_stopped = on_started_leading, on_stopped_leading
        self._became_leader()

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        self._lost_leader("stopped")


def leadership_for(kind: str, *, state_dir: Path, kubeconfig: str | Path | None, namespace: str, name: str,
                   lease_duration_s: float = 15, renew_deadline_s: float = 10, retry_period_s: float = 2,
                   identity: str | None = None, context: str | None = None) -> Leadership:
    """The configured mechanism: "lease" (needs `kubeconfig`), "file" (<state_dir>/leader.lock), "none", or
    "auto": a Lease when a kubeconfig is given, else the file lock."""
    if kind not in KINDS:
        raise ValueError(f"leadership kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = "lease" if kubeconfig else "file"
    if kind == "lease":
        if not kubeconfig:
            raise ValueError("leadership kind 'lease' needs a kubeconfig (the Kamaji parent cluster's)")
        return LeaseLeadership(kubeconfig, namespace, name, identity=identity, lease_duration_s=lease_duration_s,
                               renew_deadline_s=renew_deadline_s, retry_period_s=retry_period_s, context=context)
    if kind == "file":
        return FileLockLeadership(Path(state_dir) / LOCK_FILE_NAME, identity=identity,
                                  retry_period_s=retry_period_s)
    return SoleLeadership(identity)
