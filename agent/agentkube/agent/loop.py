"""The agent loop: connects the Fulcrum client, the journal and the job runner through Job/JobResult.

start: GET /agents/me (verifies the token), then leader election among the instances that share the token
(agentkube.adapters.leadership): a standby waits, only the leader talks to Fulcrum beyond that. The leader: PUT
status Connected, heartbeat thread, recovery from the journal (report what was not reported, run again what was
claimed but not finished, after stopping a run that survived its agent), and a takeover of the jobs Core holds in
Processing for this agent that no run here knows (a lost state directory, an instance that died elsewhere, a claim
whose answer was lost), at start and every reconcile interval. Then: poll, claim before anything else (a refused
or unanswered claim settled by reading the job back), run jobs of different service groups concurrently
(bounded), journal each result before reporting it; each result has its own delivery backoff, and one Fulcrum
refuses for good is dropped, logged and counted. SIGTERM: stop claiming, let running jobs finish within the grace
period, then cancel them, report, PUT status Disconnected. Lost leadership cancels the running jobs at once (the
new leader takes them over) and stops the agent.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentkube.adapters.fulcrum_client import (
    FulcrumClient,
    FulcrumError,
    FulcrumUnavailable,
    JobForbidden,
    MalformedAnswer,
    TokenRejected,
)
from agentkube.adapters.job_runner import JobRunner, PlaybookRun
from agentkube.adapters.journal import Journal
from agentkube.adapters.leadership import (
    Leadership,
    SoleLeadership,
    default_identity,
    leadership_for,
    lease_name_for,
)
from agentkube.adapters.project_roles import role_variables
from agentkube.adapters.run_guard import stop_run
from agentkube.agent.health_server import AgentProbes, HealthServer
from agentkube.agent.heartbeat import Heartbeat
from agentkube.agent.job_stats import JobStats
from agentkube.agent.metrics_loop import MetricsLoop
from agentkube.core import shipped
from agentkube.core.job_vars import JobInputError, build_job_vars, job_secret_paths, resolve_vault
from agentkube.core.jobs import Job, JobResult
from agentkube.core.operator_config import ConfigurationError, operator_vars
from agentkube.core.playbook_result import PlaybookResultError, parse_playbook_result
from agentkube.core.redaction import Redactor, secret_values_in
from agentkube.core.settings import Settings

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """The agent's shutdown canceled the playbook: the job stays claimed in the journal and runs again at
    the next start (playbooks are idempotent)."""


class NotLeader(FulcrumError):
    """Another instance is the active one (or this one lost that role)."""


@dataclass
class LoopState:
    started_at: float
    last_loop: float
    stopping: bool = False


class Agent:
    def __init__(self, settings: Settings, client: FulcrumClient | None = None, redactor: Redactor | None = None):
        self.settings = settings
        self.redactor = redactor or Redactor()
        token = settings.fulcrum.token.get_secret_value() if settings.fulcrum.token else ""
        self.redactor.add(token)
        if settings.fulcrum.url.startswith("http://"):
            log.warning("fulcrum.url %s is plain http (allow_insecure_http): the agent token travels in clear",
                        settings.fulcrum.url)
        self._role_variables = role_variables(Path(settings.runner.project_dir))
        # vault:// references are resolved only where the shipped schemas mark a secret (never in names, ids,
        # agentInstanceData): properties under the job's raw params or validated spec
        self._job_secret_paths = job_secret_paths(shipped.property_schema())
        self._stop = threading.Event()       # stop claiming
        self._cancel = threading.Event()     # cancel running playbooks (grace period over)
        self._wake = threading.Event()       # a job finished: poll again now
        self.client = client or FulcrumClient(
            settings.fulcrum.url, token, verify=settings.fulcrum.verify, timeout_s=settings.fulcrum.timeout_s,
            retry_attempts=settings.fulcrum.retry_attempts, retry_max_s=settings.fulcrum.retry_max_s,
            stop_event=self._cancel,
        )
        state_dir = Path(settings.agent.state_dir).expanduser()
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.journal = Journal(state_dir / "journal.sqlite3")
        self.runner = JobRunner(
            settings.runner.project_dir, state_dir / "jobs", self.redactor,
            keep_artifacts=settings.runner.keep_artifacts, extra_env=settings.runner.extra_env,
        )
        self.heartbeat = Heartbeat(self.client, settings.agent.heartbeat_interval_s, self._token_rejected)
        self.stats = JobStats()
        self.pool = ThreadPoolExecutor(settings.agent.max_concurrent_jobs, thread_name_prefix="job")
        self._running: dict[str, str] = {}            # service group -> id of the job running for it
        self._running_lock = threading.Lock()
        self._report_lock = threading.Lock()  # one reporter at a time: no result is sent twice
        self._fatal: Exception | None = None
        self._next_reconcile = 0.0
        self.leadership: Leadership = SoleLeadership(default_identity())  # configured once the agent's id is known
        self.agent_info: dict[str, Any] = {}
        self.metrics: MetricsLoop | None = None   # tenant metrics (its own thread), see connect()
        self.health: HealthServer | None = None   # /healthz /readyz /metrics, see connect()
        now = time.monotonic()
        self.state = LoopState(started_at=now, last_loop=now)

    # -- lifecycle --------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Warm shutdown: stop claiming; running jobs get the grace period."""
        if not self._stop.is_set():
            log.info("stopping: no new jobs are claimed; running jobs get %.0fs",
                     self.settings.agent.shutdown_grace_s)
        self._stop.set()
        self.state.stopping = True
        self._wake.set()

    def request_cancel(self) -> None:
        """Cold shutdown: cancel running playbooks now."""
        self._stop.set()
        self._cancel.set()
        self._wake.set()

    def _token_rejected(self, e: Exception) -> None:
        self._fatal = e
        self.request_cancel()

    def connect(self) -> None:
        self.agent_info = self.client.get_me()
        log.info("connected to Fulcrum as agent %s (%s)", self.agent_info.get("name"), self.agent_info.get("id"))
        self._start_health()
        self.leadership = self._leadership()
        self.leadership.start(on_started_leading=lambda: log.info("leading: this instance is the active one"),
                              on_stopped_leading=self._lost_leadership)

    def _leadership(self) -> Leadership:
        s = self.settings.leadership
        return leadership_for(
            s.mode, state_dir=Path(self.settings.agent.state_dir).expanduser(), kubeconfig=s.kubeconfig,
            namespace=s.namespace, name=s.lease_name or lease_name_for(str(self.agent_info.get("id") or "agent")),
            lease_duration_s=s.lease_duration_s, renew_deadline_s=s.renew_deadline_s,
            retry_period_s=s.retry_period_s, context=s.context)

    def _lost_leadership(self) -> None:
        if self._stop.is_set():
            return  # our own shutdown released it
        self._fatal = NotLeader("lost leadership: running jobs canceled (the active instance takes them over)")
        self.request_cancel()

    def await_leadership(self, once: bool) -> bool:
        """A standby waits here (its loop kept alive for /healthz). False when stopped, or when `run --once`
        gave up waiting for another active instance."""
        waited_since = time.monotonic()
        while not self.leadership.wait_leader(0.5):
            self.state.last_loop = time.monotonic()
            if self._stop.is_set():
                return False
            if once and time.monotonic() - waited_since > self.settings.leadership.once_wait_s:
                holder = self.leadership.status().holder or "another instance"
                raise NotLeader(f"{holder} is the active instance for this agent token; not leading after "
                                f"{self.settings.leadership.once_wait_s:.0f}s")
        return not self._stop.is_set()

    def activate(self) -> None:
        """The leader's part of the conversation with Fulcrum."""
        self.client.set_status("Connected")
        self.heartbeat.start()
        self._start_metrics()

    def _start_metrics(self) -> None:
        s = self.settings
        if s.metrics.enabled and s.runner.inventory:
            self.metrics = MetricsLoop(
                self.client, self.runner, s.metrics, inventory=str(s.runner.inventory),
                operator_vars=self.operator_vars,
            )
            self.metrics.start()

    def _start_health(self) -> None:
        s = self.settings
        if s.health.enabled:
            probes = AgentProbes(self, s.health.loop_max_age_s,
                                 s.health.heartbeat_max_age_s or 3 * s.agent.heartbeat_interval_s,
                                 s.health.fulcrum_max_age_s)
            try:
                self.health = HealthServer(probes, s.health.host, s.health.port).start()
            except OSError as e:  # the agent works without it; say why it is missing
                log.warning("health endpoint not started on %s:%d: %s", s.health.host, s.health.port, e)

    def run(self, once: bool = False) -> int:
        """Returns the process exit status: 0 when the agent worked (even if jobs failed)."""
        try:
            self.connect()
            if self.await_leadership(once):
                self.activate()
                self.recover()
                self._work(once)
            self._drain()
        except FulcrumError as e:  # token rejected, never connected, --once gave up, not the leader, bad answer
            self._fatal = self._fatal or e
        finally:
            self.shutdown()
        if isinstance(self._fatal, TokenRejected):
            log.error("token rejected: %s. Check AGENTKUBE_FULCRUM__TOKEN / fulcrum.token.", self._fatal)
            return 2
        if self._fatal is not None:
            log.error("agent stopped: %s", self._fatal)
            return 3
        return 0

    def _work(self, once: bool) -> None:
        while not self._stop.is_set():
            self.state.last_loop = time.monotonic()
            if time.monotonic() >= self._next_reconcile:
                self.reconcile()
            self.flush_reports()
            claimed = self.poll_once()
            if once and not claimed and not self._busy():
                if not self.journal.unreported():
                    break
                stuck = self.journal.undelivered_for_s()
                if stuck > self.settings.agent.shutdown_grace_s:
                    raise FulcrumUnavailable(
                        f"Fulcrum has not taken a result for {stuck:.0f}s; undelivered results stay in the "
                        "journal and are reported at the next start")
            self._wake.wait(self.settings.agent.poll_interval_s if not once else 0.2)
            self._wake.clear()

    def _drain(self) -> None:
        """Wait for running jobs within the grace period, then cancel the rest; report what can be."""
        deadline = time.monotonic() + self.settings.agent.shutdown_grace_s
        while self._busy() and time.monotonic() < deadline and not self._cancel.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
        if self._busy():
            log.warning("grace period over: canceling running jobs")
            self._cancel.set()
        self.pool.shutdown(wait=True)
        if self._fatal is None:
            self.flush_reports()

    def shutdown(self) -> None:
        self._stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.leadership.stop()
        self.heartbeat.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.health is not None:
            self.health.stop()
        if self.heartbeat.started and not isinstance(self._fatal, TokenRejected):
            try:
                self.client.set_status("Disconnected", attempts=2)
            except FulcrumError as e:
                log.warning("could not report Disconnected: %s", e)
        self.runner.close()
        self.journal.close()

    # -- recovery and reporting -------------------------------------------------------------------
    def recover(self) -> None:
        for result in self.journal.unreported():
            log.info("job %s: reporting the %s result kept from before a restart", result.job_id, result.outcome)
        self.flush_reports()
        for job in self.journal.unfinished():
            log.info("job %s (%s): claimed before a restart but not finished; running it again",
                     job.id, job.action)
            self._take_over(job)

    def reconcile(self) -> None:
        """Take over the jobs Core holds in Processing for this agent that no run here knows: a claim whose answer
        was lost, a lost state directory, an instance that died on another host. Playbooks converge, so running
        such a job again is safe; a job whose result is kept (reported or not) is never run again."""
        self._next_reconcile = time.monotonic() + self.settings.agent.reconcile_interval_s
        try:
            jobs = self.client.processing_jobs(str(self.agent_info.get("id")))
        except (FulcrumUnavailable, MalformedAnswer, JobForbidden) as e:
            log.warning("could not list this agent's jobs in Processing: %s", e)
            return
        for job in jobs:
            with self._running_lock:
                running = job.id in self._running.values()
            state = self.journal.state_of(job.id)
            if running or state in ("finished", "reported", "dropped"):
                continue
            log.warning("job %s (%s): Fulcrum holds it in Processing for this agent, but no run here knows it "
                        "(%s); taking it over", job.id, job.action, "claimed by an earlier instance"
                        if state == "claimed" else "not in this instance's journal")
            self.stats.count("jobs_taken_over")
            self._take_over(job)

    def _take_over(self, job: Job) -> None:
        """Run a job claimed earlier again, after stopping a run of it that survived its agent."""
        # the journal learns the guard at the run's first event; a run killed before that left only its pid file
        run = self.journal.run_of(job.id) or self.runner.guard_of(job.id)
        if run is not None and stop_run(*run):
            log.warning("job %s: stopped a run (guard pid %d) that outlived the agent that started it", job.id, run[0])
        self.journal.record_claim(job)
        self._submit(job)

    def flush_reports(self) -> None:
        with self._report_lock:
            self._flush_reports()

    def _flush_reports(self) -> None:
        """Deliver the results whose backoff is over, each on its own: a result Fulcrum refuses never holds back
        the next one."""
        agent = self.settings.agent
        for result in self.journal.unreported(due_only=True):
            try:
                self.client.report(result)
            except TokenRejected:
                raise
            except JobForbidden as e:
                self._drop(result, "forbidden", f"Fulcrum no longer knows the job, or it is not this agent's ({e})")
                continue
            except FulcrumError as e:
                attempts = self.journal.report_failed(
                    result.job_id, lambda n: min(agent.report_retry_max_s, self.client.backoff(n)))
                answered = e.status is not None  # Fulcrum answered, and refused; an outage never drops a result
                if answered and attempts >= agent.report_max_refusals:
                    self._drop(result, "refused", f"Fulcrum refused it {attempts} times, last: {e}")
                    continue
                log.warning("job %s: result not delivered yet (%s); kept in the journal, retried later",
                            result.job_id, e)
                if not answered:
                    return  # Fulcrum is unreachable: the others wait for the next round
                continue
            self.journal.mark_reported(result.job_id)
            log.info("job %s: reported %s", result.job_id, result.outcome)

    def _drop(self, result: JobResult, reason: str, why: str) -> None:
        self.journal.mark_dropped(result.job_id, f"{reason}: {why}")
        self.stats.count(f"results_dropped_{reason}")
        log.error("job %s: %s result dropped: %s", result.job_id, result.outcome, why)

    # -- polling and dispatch ---------------------------------------------------------------------
    def _busy(self) -> bool:
        with self._running_lock:
            return bool(self._running)

    def poll_once(self) -> int:
        free = self.settings.agent.max_concurrent_jobs - len(self._running)
        if free <= 0 or self._stop.is_set():
            return 0
        try:
            jobs = self.client.pending_jobs(limit=max(free * 2, 10))
        except (FulcrumUnavailable, MalformedAnswer) as e:
            log.warning("polling failed: %s", e)
            return 0
        claimed = 0
        for job in jobs:
            if self._stop.is_set() or claimed >= free:
                break
            with self._running_lock:
                if self._slot(job) in self._running:
                    continue  # Core serialises a group; never run two of its jobs here either
            if not self.leadership.is_leader:
                break
            try:
                mine = self.client.claim(job.id, str(self.agent_info.get("id")))
            except JobForbidden as e:
                log.warning("job %s: gone before it could be claimed (%s); skipped", job.id, e)
                continue
            except (FulcrumUnavailable, MalformedAnswer) as e:
                log.warning("job %s: claim not settled (%s); if it took effect, the job is taken over at the next "
                            "reconcile", job.id, e)
                self._next_reconcile = min(self._next_reconcile, time.monotonic() + self.settings.agent.poll_interval_s)
                continue
            if not mine:
                log.info("job %s: claimed by someone else; skipped", job.id)
                continue
            self.journal.record_claim(job)
            claimed += 1
            self._submit(job)
        return claimed

    @staticmethod
    def _slot(job: Job) -> str:
        """Jobs of one service group run one at a time (Core serialises them too)."""
        return job.service.group_id or job.id

    def _submit(self, job: Job) -> None:
        with self._running_lock:
            self.stats.started()
            self._running[self._slot(job)] = job.id
            self.pool.submit(self._process, job)

    def _process(self, job: Job) -> None:
        try:
            self._run_and_record(job)
        finally:
            with self._running_lock:
                self._running.pop(self._slot(job), None)
            self._wake.set()

    def _run_and_record(self, job: Job) -> None:
        started = time.monotonic()
        try:
            result = self.execute(job)
        except JobCanceled:
            log.warning("job %s (%s) canceled by shutdown; it runs again at the next start", job.id, job.action)
            self.stats.finished(job.action, False, time.monotonic() - started)
            return
        except Exception as e:  # never lose a claimed job: whatever happens, it gets a result
            log.exception("job %s: unexpected error", job.id)
            result = JobResult.failed(job, f"agent error while running action '{job.action}': "
                                           f"{type(e).__name__}: {self.redactor.scrub_text(str(e))}")
        duration = time.monotonic() - started
        result = JobResult(**{**result.to_record(), "duration_s": duration, "action": job.action})
        self.journal.record_result(result)
        self.stats.finished(job.action, result.outcome == "completed", duration)
        log.info("job %s (%s) %s in %.1fs%s", job.id, job.action, result.outcome, duration,
                 f": {result.error_message}" if result.error_message else "")
        try:
            self.flush_reports()
        except TokenRejected as e:
            self._token_rejected(e)

    # -- one job ----------------------------------------------------------------------------------
    def execute(self, job: Job) -> JobResult:
        playbook = self.settings.runner.action_map().get(job.action)
        if playbook is None:
            return JobResult.failed(job, f"unsupported action '{job.action}'")
        tenancy = self.settings.tenancy
        try:
            variables = build_job_vars(job, tenancy.validate_spec, tenancy.limits)
        except JobInputError as e:
            return JobResult.failed(job, f"invalid input for action '{job.action}': {e}")
        try:
            variables = self._resolve_secrets(variables, self._job_secret_paths)
            operator = self.operator_vars()
        except ConfigurationError as e:
            return JobResult.failed(job, f"invalid agent configuration for action '{job.action}': {e}")
        except FulcrumError as e:
            if isinstance(e, TokenRejected):
                raise
            return JobResult.failed(job, f"could not resolve a vault secret for action '{job.action}': {e}")
        run = PlaybookRun(
            ident=job.id, playbook=playbook, variables=variables, operator_vars=operator,
            inventory=str(self.settings.runner.inventory) if self.settings.runner.inventory else None,
            timeout_s=self.settings.runner.timeout_for(job.action),
            idle_timeout_s=self.settings.runner.idle_timeout_s,
            on_started=lambda pid, ticks: self.journal.record_run(job.id, pid, ticks),
        )
        outcome = self.runner.run(run, cancel=self._cancel)
        if outcome.status == "canceled":
            raise JobCanceled(job.id)
        if not outcome.ok:
            return JobResult.failed(job, f"action '{job.action}' failed: {outcome.error}", outcome.duration_s)
        try:  # its secrets joined the redactor before any artifact was written
            result = parse_playbook_result(outcome.result)
        except PlaybookResultError as e:
            return JobResult.failed(job, f"action '{job.action}' returned a malformed result: "
                                         f"{self.redactor.scrub_text(str(e))}", outcome.duration_s)
        return JobResult(
            job_id=job.id, outcome="completed", action=job.action, duration_s=outcome.duration_s,
            agent_instance_id=result.agentInstanceId or job.service.agent_instance_id,
            agent_instance_data=result.agentInstanceData,
            properties=result.properties or None,
        )

    def operator_vars(self) -> dict[str, Any]:
        """Fulcrum's agent configuration, checked against the shipped configurationSchema and the roles' public
        variables (ConfigurationError otherwise), its vault:// references resolved."""
        config = operator_vars(self.agent_info.get("configuration"), shipped.configuration_schema(),
                               self._role_variables)
        return self._resolve_secrets(config, {(key,) for key in config})

    def _resolve_secrets(self, doc: dict[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
        """Resolve the vault:// refs standing at the given paths just before use; every secret value joins the
        redactor. A reference anywhere else stays a literal string."""
        def resolve(ref: str) -> str:
            value = self.client.resolve_secret(ref)
            self.redactor.add(value)
            return value

        out = resolve_vault(doc, paths, resolve)
        self.redactor.add(*secret_values_in(out))
        return out
