"""The agent loop with a fake Fulcrum client (duck-typed FulcrumClient) and a fake job runner: claiming,
dispatch per service group, recovery from the journal, and that no claimed job is ever lost."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentkube.adapters.fulcrum_client import (
    FulcrumError,
    FulcrumUnavailable,
    JobForbidden,
    MalformedAnswer,
    TokenRejected,
)
from agentkube.adapters.job_runner import PlaybookOutcome, PlaybookRun
from agentkube.adapters.journal import Journal
from agentkube.adapters.run_guard import start_ticks
from agentkube.agent.loop import Agent
from agentkube.core.jobs import Job, JobResult
from agentkube.core.redaction import MASK
from agentkube.core.settings import load_settings

TOKEN = "agent-token-c0ffee-42"
SPEC = {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "default", "count": 1}]}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("AGENTKUBE_"):
            monkeypatch.delenv(key)


def raw_job(job_id: str, action: str = "create", group: str = "g1", params: Any = SPEC) -> dict[str, Any]:
    raw = {"id": job_id, "action": action, "priority": 1, "serviceId": f"svc-{job_id}",
           "service": {"id": f"svc-{job_id}", "name": f"Cluster {job_id}", "groupId": group, "status": "New",
                       "properties": SPEC, "agentInstanceId": f"kamaji-tenants/{job_id}"}}
    if params is not None:
        raw["params"] = params
    return raw


class FakeClient:
    """Stands in for FulcrumClient; every call joins one ordered event log shared with the fake runner."""

    def __init__(self, events: list[tuple[str, str]], polls: list[list[dict[str, Any]]] | None = None,
                 configuration: dict[str, Any] | None = None, secrets: dict[str, str] | None = None):
        self.events = events
        self.polls = list(polls or [])
        self.configuration = configuration or {}
        self.secrets = secrets or {}
        self.refuse: set[str] = set()
        self.reports: list[JobResult] = []
        self.statuses: list[str] = []
        self.me_error: Exception | None = None
        self.poll_error: Exception | None = None
        self.report_errors: list[Exception] = []
        self.processing: list[dict[str, Any]] = []  # what GET /jobs?status=Processing answers
        self.claim_errors: dict[str, Exception] = {}

    def get_me(self) -> dict[str, Any]:
        if self.me_error:
            raise self.me_error
        return {"id": "agent-1", "name": "test-agent", "configuration": self.configuration}

    def set_status(self, status: str, *, attempts: int | None = None) -> None:
        self.statuses.append(status)

    def pending_jobs(self, limit: int = 10) -> list[Job]:
        self.events.append(("poll", ""))
        if self.poll_error:
            raise self.poll_error
        return [Job.from_api(raw) for raw in (self.polls.pop(0) if self.polls else [])]

    def claim(self, job_id: str, agent_id: str) -> bool:
        self.events.append(("claim", job_id))
        if job_id in self.claim_errors:
            raise self.claim_errors.pop(job_id)
        return job_id not in self.refuse

    def processing_jobs(self, agent_id: str) -> list[Job]:
        self.events.append(("processing", ""))
        return [Job.from_api(raw) for raw in self.processing]

    def report(self, result: JobResult) -> None:
        self.events.append(("report", result.job_id))
        errors = self.report_errors
        if isinstance(errors, dict):  # per job: the next error for this job, if any
            errors = errors.get(result.job_id) or []
        if errors:
            raise errors.pop(0)
        self.reports.append(result)

    def backoff(self, attempt: int) -> float:
        return 0.0

    def resolve_secret(self, ref: str) -> str:
        self.events.append(("secret", ref))
        if ref not in self.secrets:
            raise FulcrumError(f"GET /vault/secrets/{ref} -> 404: not found", 404)
        return self.secrets[ref]

    def claims(self) -> list[str]:
        return [job_id for kind, job_id in self.events if kind == "claim"]


def succeed(run: PlaybookRun, cancel: threading.Event | None) -> PlaybookOutcome:
    return PlaybookOutcome("successful", 0, {"agentInstanceData": {"endpoint": "https://10.0.0.5:6443"}},
                           duration_s=0.01)


class FakeRunner:
    def __init__(self, events: list[tuple[str, str]],
                 behave: Callable[[PlaybookRun, threading.Event | None], PlaybookOutcome] = succeed):
        self.events = events
        self.behave = behave
        self.runs: list[PlaybookRun] = []

    def run(self, run: PlaybookRun, cancel: threading.Event | None = None) -> PlaybookOutcome:
        self.events.append(("run", run.ident))
        self.runs.append(run)
        return self.behave(run, cancel)

    def close(self) -> None:
        pass

    def guard_of(self, ident: str) -> tuple[int, int | None] | None:
        return None


def make_agent(state_dir: Path, client: FakeClient, runner: FakeRunner, **agent: Any) -> Agent:
    settings = load_settings(overrides={
        "fulcrum": {"url": "https://127.0.0.1:9/api/v1", "token": TOKEN},
        "agent": {"state_dir": str(state_dir), "poll_interval_s": 0.05, "heartbeat_interval_s": 3600,
                  "shutdown_grace_s": 5, **agent},
        "health": {"port": 0},
    })
    a = Agent(settings, client=client)  # type: ignore[arg-type]
    a.runner.close()
    a.runner = runner  # type: ignore[assignment]
    return a


def leading(agent: Agent) -> Agent:
    """An agent set up as run() leaves it before its loop: connected as agent-1, the active instance."""
    agent.agent_info = {"id": "agent-1"}
    agent.leadership.start(lambda: None, lambda: None)
    return agent


def journal_states(state_dir: Path, *job_ids: str) -> list[str | None]:
    j = Journal(state_dir / "journal.sqlite3")
    try:
        return [j.state_of(i) for i in job_ids]
    finally:
        j.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def events() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


# -- one job ----------------------------------------------------------------------------------------------
def test_a_job_is_claimed_run_and_reported(state_dir, events):
    client = FakeClient(events, [[raw_job("j1")]])
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    assert [e for e in events if e[0] not in ("poll", "processing")] == [
        ("claim", "j1"), ("run", "j1"), ("report", "j1")]
    (run,) = runner.runs
    assert (run.ident, run.playbook, run.timeout_s) == ("j1", "playbooks/create.yml", 3600)
    assert run.variables["agentkube_tenant"]["kubernetesVersion"] == "v1.35.7"
    (result,) = client.reports
    assert (result.outcome, result.action) == ("completed", "create")
    assert result.agent_instance_id == "kamaji-tenants/j1"  # the playbook gave none: the service's is kept
    assert result.agent_instance_data == {"endpoint": "https://10.0.0.5:6443"}
    assert journal_states(state_dir, "j1") == ["reported"]
    assert client.statuses[0] == "Connected"
    assert client.statuses[-1] == "Disconnected"


def test_an_unknown_action_is_claimed_then_failed(state_dir, events):
    client = FakeClient(events, [[raw_job("j1", action="x", params=None)]])
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    assert [e for e in events if e[0] not in ("poll", "processing")] == [("claim", "j1"), ("report", "j1")]
    (result,) = client.reports
    assert (result.outcome, result.error_message) == ("failed", "unsupported action 'x'")
    assert runner.runs == []
    assert journal_states(state_dir, "j1") == ["reported"]


def test_invalid_input_fails_the_job_before_the_playbook(state_dir, events):
    client = FakeClient(events, [[raw_job("j1", params={"kubernetesVersion": "v1.20.0", "flavour": "L"})]])
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    (result,) = client.reports
    assert result.outcome == "failed"
    assert result.error_message.startswith("invalid input for action 'create': ")
    assert "params.flavour: unknown field" in result.error_message
    assert runner.runs == []


def test_a_refused_claim_is_skipped(state_dir, events):
    client = FakeClient(events, [[raw_job("j1"), raw_job("j2", group="g2")]])
    client.refuse = {"j1"}
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    assert [r.ident for r in runner.runs] == ["j2"]
    assert [r.job_id for r in client.reports] == ["j2"]
    assert journal_states(state_dir, "j1", "j2") == [None, "reported"]


def test_a_failed_playbook_is_reported_failed(state_dir, events):
    def fail(run, cancel):
        return PlaybookOutcome("failed", 2, None, error="task 'Clone the VM template': storage full")

    client = FakeClient(events, [[raw_job("j1", action="delete", params=None)]])
    assert make_agent(state_dir, client, FakeRunner(events, fail)).run(once=True) == 0
    (result,) = client.reports
    assert result.error_message == "action 'delete' failed: task 'Clone the VM template': storage full"


# -- never lose a job -------------------------------------------------------------------------------------
def test_a_runner_that_raises_still_gets_a_failed_result(state_dir, events):
    def explode(run, cancel):
        raise RuntimeError(f"boom near {TOKEN}")

    client = FakeClient(events, [[raw_job("j1")]])
    assert make_agent(state_dir, client, FakeRunner(events, explode)).run(once=True) == 0
    (result,) = client.reports
    assert result.outcome == "failed"
    assert result.error_message == f"agent error while running action 'create': RuntimeError: boom near {MASK}"
    assert journal_states(state_dir, "j1") == ["reported"]


def test_a_canceled_playbook_leaves_the_job_claimed_and_it_runs_at_the_next_start(state_dir, events):
    def canceled(run, cancel):
        return PlaybookOutcome("canceled", None, None)

    client = FakeClient(events, [[raw_job("j1")]])
    assert make_agent(state_dir, client, FakeRunner(events, canceled)).run(once=True) == 0
    assert client.reports == []
    assert journal_states(state_dir, "j1") == ["claimed"]

    events.clear()
    client = FakeClient(events)
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    assert client.claims() == []  # already ours: not claimed again
    assert [r.ident for r in runner.runs] == ["j1"]
    assert [(r.job_id, r.outcome) for r in client.reports] == [("j1", "completed")]
    assert journal_states(state_dir, "j1") == ["reported"]


def test_recover_reports_kept_results_before_running_unfinished_jobs(state_dir, events):
    journal = Journal(state_dir / "journal.sqlite3")
    kept, unfinished = Job.from_api(raw_job("kept")), Job.from_api(raw_job("unfinished", group="g2"))
    journal.record_claim(kept)
    journal.record_result(JobResult(job_id="kept", outcome="completed", agent_instance_id="kamaji-tenants/kept",
                                    action="create"))
    journal.record_claim(unfinished)
    journal.close()  # the agent died here

    client = FakeClient(events)
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    assert events.index(("report", "kept")) < events.index(("run", "unfinished"))
    assert client.claims() == []
    assert [r.ident for r in runner.runs] == ["unfinished"]
    assert [(r.job_id, r.outcome) for r in client.reports] == [("kept", "completed"), ("unfinished", "completed")]
    assert client.reports[0].agent_instance_id == "kamaji-tenants/kept"
    assert journal_states(state_dir, "kept", "unfinished") == ["reported", "reported"]


def test_a_result_fulcrum_did_not_take_is_kept_and_delivered_later(state_dir, events):
    client = FakeClient(events, [[raw_job("j1")]])
    client.report_errors = [FulcrumUnavailable("POST /jobs/j1/complete failed after 8 attempt(s)")]
    assert make_agent(state_dir, client, FakeRunner(events)).run(once=True) == 0
    assert events.count(("report", "j1")) == 2
    assert [r.job_id for r in client.reports] == ["j1"]
    assert journal_states(state_dir, "j1") == ["reported"]


# -- service groups ---------------------------------------------------------------------------------------
def test_a_group_already_running_is_not_claimed_twice(state_dir, events):
    release = threading.Event()

    def blocked(run, cancel):
        assert release.wait(10), "the test never released the job"
        return succeed(run, cancel)

    client = FakeClient(events, [
        [raw_job("a", group="g1"), raw_job("b", group="g1"), raw_job("c", group="g2")],
        [raw_job("b", group="g1")],
        [raw_job("b", group="g1")],
    ])
    runner = FakeRunner(events, blocked)
    agent = leading(make_agent(state_dir, client, runner))
    try:
        assert agent.poll_once() == 2
        assert client.claims() == ["a", "c"]
        assert agent.poll_once() == 0  # g1 is still busy with a
        assert client.claims() == ["a", "c"]
        release.set()
        wait_until(lambda: not agent._busy(), "jobs a and c to finish")
        assert agent.poll_once() == 1
        wait_until(lambda: not agent._busy(), "job b to finish")
    finally:
        release.set()
        agent.request_stop()
        agent.shutdown()
    assert client.claims() == ["a", "c", "b"]
    assert sorted(r.job_id for r in client.reports) == ["a", "b", "c"]


def test_no_more_jobs_are_claimed_than_the_concurrency_allows(state_dir, events):
    release = threading.Event()

    def blocked(run, cancel):
        assert release.wait(10)
        return succeed(run, cancel)

    client = FakeClient(events, [[raw_job(f"j{i}", group=f"g{i}") for i in range(5)]])
    agent = leading(make_agent(state_dir, client, FakeRunner(events, blocked), max_concurrent_jobs=2))
    try:
        assert agent.poll_once() == 2
        assert client.claims() == ["j0", "j1"]
        assert agent.poll_once() == 0
    finally:
        release.set()
        agent.request_stop()
        agent.shutdown()
    assert sorted(r.job_id for r in client.reports) == ["j0", "j1"]


# -- tokens, outages and secrets --------------------------------------------------------------------------
def test_a_token_rejected_while_polling_stops_the_agent_with_2(state_dir, events):
    client = FakeClient(events, [[raw_job("j1")]])
    client.poll_error = TokenRejected("Fulcrum rejected the agent token (401 on GET /jobs/pending)", 401)
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 2
    assert client.claims() == []
    assert runner.runs == []
    assert "Disconnected" not in client.statuses  # the token is no good: nothing more is sent


def test_a_token_rejected_at_connect_returns_2_and_an_unreachable_fulcrum_3(state_dir, events):
    client = FakeClient(events)
    client.me_error = TokenRejected("Fulcrum rejected the agent token (403 on GET /agents/me)", 403)
    assert make_agent(state_dir, client, FakeRunner(events)).run(once=True) == 2
    client = FakeClient(events)
    client.me_error = FulcrumUnavailable("GET /agents/me failed after 8 attempt(s): ConnectionError")
    assert make_agent(state_dir, client, FakeRunner(events)).run(once=True) == 3
    assert client.statuses == []


def test_vault_refs_in_the_agent_configuration_are_resolved_and_redacted(state_dir, events):
    client = FakeClient(events, [[raw_job("j1")]], configuration={
        "proxmox_vm_api_token_secret": "vault://pve-token", "proxmox_vm_api_host": "pve.example"},
        secrets={"pve-token": "pve-secret-value-1"})
    runner = FakeRunner(events)
    agent = make_agent(state_dir, client, runner)
    assert agent.run(once=True) == 0
    (run,) = runner.runs
    assert run.operator_vars == {"proxmox_vm_api_token_secret": "pve-secret-value-1",
                                 "proxmox_vm_api_host": "pve.example"}
    assert events.index(("secret", "pve-token")) < events.index(("run", "j1"))
    assert agent.redactor.scrub_text("x pve-secret-value-1 y") == f"x {MASK} y"


def test_an_unresolvable_vault_ref_fails_the_job_before_the_playbook(state_dir, events):
    client = FakeClient(events, [[raw_job("j1")]], configuration={"proxmox_vm_api_token_secret": "vault://gone"})
    runner = FakeRunner(events)
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    (result,) = client.reports
    assert result.error_message.startswith("could not resolve a vault secret for action 'create': ")
    assert runner.runs == []


def test_a_malformed_agent_answer_stops_the_agent_with_a_message_not_a_traceback(state_dir, events, caplog):
    client = FakeClient(events, [])
    client.me_error = MalformedAnswer("GET /agents/me: the answer is not JSON (ValueError)")
    with caplog.at_level("ERROR"):
        assert make_agent(state_dir, client, FakeRunner(events)).run(once=True) == 3
    assert "agent stopped: GET /agents/me: the answer is not JSON" in caplog.text


# -- Fulcrum as it really behaves: gone jobs, stuck results, takeovers (issue 12) ---------------------------
def kept_results(state_dir: Path, *job_ids: str) -> None:
    """Results journaled but not reported (the agent stopped before Fulcrum took them)."""
    journal = Journal(state_dir / "journal.sqlite3")
    for job_id in job_ids:
        journal.record_claim(Job.from_api(raw_job(job_id, group=f"g-{job_id}")))
        journal.record_result(JobResult(job_id=job_id, outcome="completed", action="create"))
    journal.close()


def test_a_result_for_a_deleted_job_is_dropped_and_the_others_are_reported(state_dir, events, caplog):
    """Core answers 403 for a job it no longer knows while the token works: the agent drops that result, says so,
    counts it, and goes on (it used to take the 403 for a rejected token and exit at every start)."""
    kept_results(state_dir, "gone", "other")
    client = FakeClient(events, [[raw_job("j1", group="g9")]])
    client.report_errors = {"gone": [JobForbidden("POST /jobs/gone/complete -> 403: forbidden", 403)]}
    agent = make_agent(state_dir, client, FakeRunner(events))
    assert agent.run(once=True) == 0
    assert sorted(r.job_id for r in client.reports) == ["j1", "other"]
    assert journal_states(state_dir, "gone", "other", "j1") == ["dropped", "reported", "reported"]
    assert agent.stats.snapshot()["events"] == {"results_dropped_forbidden": 1}
    assert any("job gone: completed result dropped: Fulcrum no longer knows the job" in r.getMessage()
               for r in caplog.records)


def test_one_stuck_result_never_blocks_the_others_and_is_dropped_after_its_bound(state_dir, events):
    kept_results(state_dir, "stuck", "next")
    refusal = FulcrumUnavailable("POST /jobs/stuck/complete failed after 3 attempt(s): 500: duplicate key", 500)
    client = FakeClient(events)
    client.report_errors = {"stuck": [refusal] * 10}
    agent = make_agent(state_dir, client, FakeRunner(events), report_max_refusals=3)
    assert agent.run(once=True) == 0
    assert [r.job_id for r in client.reports] == ["next"]
    assert events.index(("report", "next")) < len(events) - 1  # delivered while "stuck" was still being retried
    assert events.count(("report", "stuck")) == 3
    assert journal_states(state_dir, "stuck", "next") == ["dropped", "reported"]
    assert agent.stats.snapshot()["events"] == {"results_dropped_refused": 1}


def test_an_outage_never_drops_a_result(state_dir, events):
    kept_results(state_dir, "j1")
    outage = FulcrumUnavailable("POST /jobs/j1/complete failed after 3 attempt(s): ConnectionError", None)
    client = FakeClient(events)
    client.report_errors = {"j1": [outage] * 4}
    assert make_agent(state_dir, client, FakeRunner(events), report_max_refusals=2).run(once=True) == 0
    assert [r.job_id for r in client.reports] == ["j1"]
    assert journal_states(state_dir, "j1") == ["reported"]


def test_jobs_core_holds_in_processing_that_no_run_knows_are_taken_over_once(state_dir, events):
    """A lost state directory, an instance that died elsewhere: Core shows the jobs Processing for this agent.
    The unknown one runs again; one whose result the journal keeps is reported, never run again."""
    kept_results(state_dir, "kept")
    client = FakeClient(events)
    client.processing = [raw_job("lost", group="g1"), raw_job("kept", group="g-kept")]
    runner = FakeRunner(events)
    agent = make_agent(state_dir, client, runner)
    assert agent.run(once=True) == 0
    assert [r.ident for r in runner.runs] == ["lost"]
    assert client.claims() == []
    assert sorted(r.job_id for r in client.reports) == ["kept", "lost"]
    assert agent.stats.snapshot()["events"] == {"jobs_taken_over": 1}


def test_an_unsettled_claim_is_taken_over_at_the_next_reconcile(state_dir, events):
    """The claim outlasted its retries and reading the job back failed too: if Core did take it, the next
    reconcile finds it Processing for this agent and runs it: a claimed job is never abandoned."""
    client = FakeClient(events, [[raw_job("j1")]])
    client.claim_errors = {"j1": FulcrumUnavailable("POST /jobs/j1/claim failed after 3 attempt(s)", None)}
    runner = FakeRunner(events)
    agent = leading(make_agent(state_dir, client, runner))
    try:
        agent.reconcile()
        assert agent.poll_once() == 0
        client.processing = [raw_job("j1")]
        agent.reconcile()
        wait_until(lambda: not agent._busy(), "j1 to run")
    finally:
        agent.request_stop()
        agent.shutdown()
    assert [r.ident for r in runner.runs] == ["j1"]
    assert [r.job_id for r in client.reports] == ["j1"]


@pytest.mark.parametrize(("result", "field"), [
    ({"agentInstanceId": 7}, "agentInstanceId: Input should be a valid string"),
    ({"agentInstanceData": ["a"]}, "agentInstanceData: Input should be a valid dictionary"),
    ({"agentInstanceData": {}, "extra": 1}, "extra: Extra inputs are not permitted"),
])
def test_a_malformed_playbook_result_fails_the_job_naming_the_field(state_dir, events, result, field):
    client = FakeClient(events, [[raw_job("j1")]])
    runner = FakeRunner(events, lambda run, cancel: PlaybookOutcome("successful", 0, result))
    assert make_agent(state_dir, client, runner).run(once=True) == 0
    (report,) = client.reports
    assert report.outcome == "failed"
    assert report.error_message == f"action 'create' returned a malformed result: {field}"


def test_a_run_that_survived_its_agent_is_stopped_before_the_job_runs_again(state_dir, events):
    survivor = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        journal = Journal(state_dir / "journal.sqlite3")
        journal.record_claim(Job.from_api(raw_job("j1")))
        journal.record_run("j1", survivor.pid, start_ticks(survivor.pid))
        journal.close()  # the agent died here; its run did not

        client = FakeClient(events)
        runner = FakeRunner(events, lambda run, cancel: (events.append(("survivor", str(survivor.poll() is None))),
                                                         succeed(run, cancel))[1])
        assert make_agent(state_dir, client, runner).run(once=True) == 0
        assert ("survivor", "False") in events  # it was gone before the job ran again
        assert [r.job_id for r in client.reports] == ["j1"]
    finally:
        survivor.kill()
        survivor.wait(10)
