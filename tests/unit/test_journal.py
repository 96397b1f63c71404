"""The crash journal (SQLite): claimed -> finished -> reported, what survives a reopen, the file's mode, and
pruning. A crash is simulated by opening the same file again without marking anything."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentkube.adapters import journal as journal_module
from agentkube.adapters.journal import Journal
from agentkube.core.jobs import Job, JobResult, Service


def job(job_id: str, action: str = "create", group: str = "g1") -> Job:
    return Job(
        id=job_id, action=action, priority=2,
        service=Service(id=f"svc-{job_id}", name="Clüster ☃ One", group_id=group, status="New",
                        properties={"kubernetesVersion": "v1.35.7"}, agent_instance_id=None,
                        agent_instance_data={"endpoint": "https://10.0.0.5:6443"}),
        params={"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "default", "count": 1}]},
    )


def completed(job_id: str, **kw) -> JobResult:
    return JobResult(job_id=job_id, outcome="completed", agent_instance_id="kamaji-tenants/t-1",
                     agent_instance_data={"kubeconfig": "apiVersion: v1"}, properties={"endpoint": "x"},
                     duration_s=1.5, action="create", **kw)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    j = Journal(path)
    yield j
    j.close()


def attempts_of(path: Path, job_id: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT attempts FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]


def test_a_job_goes_claimed_finished_reported(journal):
    j = job("j1")
    assert journal.state_of("j1") is None
    journal.record_claim(j)
    assert journal.state_of("j1") == "claimed"
    assert journal.unfinished() == [j]
    assert journal.unreported() == []
    assert journal.result_for("j1") is None

    result = completed("j1")
    journal.record_result(result)
    assert journal.state_of("j1") == "finished"
    assert journal.unfinished() == []
    assert journal.unreported() == [result]
    assert journal.result_for("j1") == result

    journal.mark_reported("j1")
    assert journal.state_of("j1") == "reported"
    assert journal.unreported() == []
    assert journal.result_for("j1") == result  # kept until pruned


def test_a_second_result_never_replaces_the_first(journal):
    journal.record_claim(job("j1"))
    first = JobResult(job_id="j1", outcome="failed", error_message="task 'clone': storage full", action="create")
    journal.record_result(first)
    journal.record_result(completed("j1"))
    assert journal.result_for("j1") == first
    journal.mark_reported("j1")
    journal.record_result(completed("j1"))
    assert journal.result_for("j1") == first
    assert journal.state_of("j1") == "reported"


def test_a_result_without_a_claim_is_not_recorded(journal):
    journal.record_result(completed("ghost"))
    assert journal.state_of("ghost") is None
    assert journal.unreported() == []


def test_claiming_again_counts_attempts_but_never_reopens_a_finished_job(journal, path):
    j = job("j1")
    journal.record_claim(j)
    journal.record_claim(j)  # run again after a restart
    assert attempts_of(path, "j1") == 2
    journal.record_result(completed("j1"))
    journal.record_claim(j)
    assert journal.state_of("j1") == "finished"
    assert attempts_of(path, "j1") == 2
    assert journal.unfinished() == []


def test_claimed_and_unreported_jobs_survive_a_crash(path):
    first = Journal(path)
    a, b, c = job("a"), job("b", "delete", "g2"), job("c", "stop", "g3")
    for j in (a, b, c):
        first.record_claim(j)
    first.record_result(completed("b"))
    first.record_result(JobResult.failed(c, "action 'stop' failed: unreachable"))
    first.mark_reported("c")
    # the agent dies here: no close, nothing marked; a new process opens the same file
    second = Journal(path)
    assert second.unfinished() == [a]
    assert second.unreported() == [completed("b")]
    assert second.state_of("c") == "reported"
    first.close()
    second.close()

    third = Journal(path)  # and once more after a clean close
    assert third.unfinished() == [a]
    assert [r.job_id for r in third.unreported()] == ["b"]
    third.close()


def test_unfinished_and_unreported_keep_their_order(journal, monkeypatch):
    clock = iter(float(t) for t in range(1000, 2000))
    monkeypatch.setattr(journal_module.time, "time", lambda: next(clock))
    for name in ("z", "a", "m"):
        journal.record_claim(job(name))
    assert [j.id for j in journal.unfinished()] == ["z", "a", "m"]
    for name in ("m", "z"):
        journal.record_result(completed(name))
    assert [r.job_id for r in journal.unreported()] == ["m", "z"]


def test_the_file_is_private(path):
    Journal(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_file_is_made_private(path):
    path.parent.mkdir(parents=True)
    path.touch(mode=0o644)
    path.chmod(0o644)
    Journal(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_prune_forgets_only_old_reported_jobs(journal, monkeypatch):
    now = 10_000_000.0
    clock = {"t": now - 20 * 86400}
    monkeypatch.setattr(journal_module.time, "time", lambda: clock["t"])
    for name in ("old-reported", "old-finished", "old-claimed", "new-reported"):
        journal.record_claim(job(name))
    journal.record_result(completed("old-reported"))
    journal.mark_reported("old-reported")
    journal.record_result(completed("old-finished"))
    clock["t"] = now - 86400
    journal.record_result(completed("new-reported"))
    journal.mark_reported("new-reported")
    clock["t"] = now

    assert journal.prune(keep_days=14) == 1
    assert journal.state_of("old-reported") is None
    assert journal.state_of("old-finished") == "finished"  # never reported: kept whatever its age
    assert journal.state_of("old-claimed") == "claimed"
    assert journal.state_of("new-reported") == "reported"
    assert journal.prune(keep_days=0.5) == 1
    assert journal.state_of("new-reported") is None
    assert journal.prune() == 0


def test_a_journal_written_before_runs_and_backoff_were_recorded_is_migrated(tmp_path):
    path = tmp_path / "journal.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript("""
        CREATE TABLE jobs (job_id TEXT PRIMARY KEY, job_json TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('claimed', 'finished', 'reported')), result_json TEXT,
            attempts INTEGER NOT NULL DEFAULT 1, claimed_at REAL NOT NULL, updated_at REAL NOT NULL);
        CREATE INDEX jobs_state ON jobs (state);
    """)
    job = {"id": "j1", "action": "create", "serviceId": "s1", "service": {"id": "s1", "groupId": "g1"}}
    old.execute("INSERT INTO jobs VALUES ('j1', ?, 'finished', ?, 1, 1.0, 2.0)",
                (json.dumps(job), json.dumps({"job_id": "j1", "outcome": "completed"})))
    old.close()
    j = Journal(path)
    try:
        assert [r.job_id for r in j.unreported(due_only=True)] == ["j1"]
        assert j.report_failed("j1", lambda n: 3600) == 1
        assert j.unreported(due_only=True) == [] and [r.job_id for r in j.unreported()] == ["j1"]
        j.mark_dropped("j1", "forbidden: gone")
        assert j.state_of("j1") == "dropped" and j.unreported() == []
    finally:
        j.close()
