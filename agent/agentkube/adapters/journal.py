"""The agent's crash journal (SQLite, WAL). It only makes sure that claimed jobs and unreported results
survive a crash: a job is recorded as claimed *before* it runs, its result is recorded *before* it is
reported, and marked reported after Fulcrum accepted it. The infrastructure stays the source of truth.

States: claimed -> finished (result stored, not yet reported) -> reported, or dropped when Fulcrum refused the
result for good (the job is gone, or it kept failing past the bound). A claimed job also records the guard of its
playbook run (pid and kernel start time), so a restarted agent can stop a run that survived its predecessor. Each
unreported result keeps its own delivery backoff: one stuck result never holds back the others.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agentkube.core.jobs import Job, JobResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    job_json    TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('claimed', 'finished', 'reported', 'dropped')),
    result_json TEXT,
    attempts    INTEGER NOT NULL DEFAULT 1,
    claimed_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    run_pid     INTEGER,
    run_ticks   INTEGER,
    report_attempts INTEGER NOT NULL DEFAULT 0,
    next_report_at  REAL NOT NULL DEFAULT 0,
    first_report_failure REAL,
    dropped_reason TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""
# journals written before runs and report backoff were recorded: their rows move into the current table
_MIGRATE_V1 = "\n".join([
    "BEGIN;",
    "ALTER TABLE jobs RENAME TO jobs_v1;",
    "DROP INDEX IF EXISTS jobs_state;",
    SCHEMA,
    "INSERT INTO jobs (job_id, job_json, state, result_json, attempts, claimed_at, updated_at)",
    "    SELECT job_id, job_json, state, result_json, attempts, claimed_at, updated_at FROM jobs_v1;",
    "DROP TABLE jobs_v1;",
    "COMMIT;",
])


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.path.chmod(0o600)  # results may carry the tenant kubeconfig
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if columns and "run_pid" not in columns:
            self._db.executescript(_MIGRATE_V1)
        else:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record_claim(self, job: Job) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (job_id, job_json, state, claimed_at, updated_at) VALUES (?, ?, 'claimed', ?, ?)"
                " ON CONFLICT(job_id) DO UPDATE SET attempts = attempts + 1, updated_at = excluded.updated_at"
                " WHERE state = 'claimed'",
                (job.id, json.dumps(job.to_api()), now, now),
            )

    def record_result(self, result: JobResult) -> None:
        """Store the result once; a second result for the same job never replaces the first."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'finished', result_json = ?, updated_at = ? "
                "WHERE job_id = ? AND state = 'claimed'",
                (json.dumps(result.to_record()), time.time(), result.job_id),
            )

    def record_run(self, job_id: str, pid: int, ticks: int | None) -> None:
        """The guard of the job's playbook run (agentkube.adapters.run_guard)."""
        with self._lock:
            self._db.execute("UPDATE jobs SET run_pid = ?, run_ticks = ? WHERE job_id = ? AND state = 'claimed'",
                             (pid, ticks, job_id))

    def run_of(self, job_id: str) -> tuple[int, int | None] | None:
        with self._lock:
            row = self._db.execute("SELECT run_pid, run_ticks FROM jobs WHERE job_id = ? AND run_pid IS NOT NULL",
                                   (job_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def report_failed(self, job_id: str, backoff: Callable[[int], float]) -> int:
        """Count a failed delivery and schedule the next one backoff(failures so far) seconds from now; returns the
        failures counted."""
        now = time.time()
        with self._lock:
            (attempts,) = self._db.execute("SELECT report_attempts FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            self._db.execute(
                "UPDATE jobs SET report_attempts = ?, next_report_at = ?, "
                "first_report_failure = COALESCE(first_report_failure, ?) WHERE job_id = ?",
                (attempts + 1, now + backoff(attempts), now, job_id))
        return attempts + 1

    def mark_dropped(self, job_id: str, reason: str) -> None:
        """Fulcrum will never take this result: keep it (for an operator), but stop delivering it."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'dropped', dropped_reason = ?, updated_at = ? WHERE job_id = ?",
                             (reason, time.time(), job_id))

    def mark_reported(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'reported', updated_at = ? WHERE job_id = ?", (time.time(), job_id)
            )

    def result_for(self, job_id: str) -> JobResult | None:
        with self._lock:
            row = self._db.execute(
                "SELECT result_json FROM jobs WHERE job_id = ? AND result_json IS NOT NULL", (job_id,)
            ).fetchone()
        return JobResult.from_record(json.loads(row[0])) if row else None

    def unfinished(self) -> list[Job]:
        """Jobs claimed but never finished (the agent died while running them): to run again."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_json FROM jobs WHERE state = 'claimed' ORDER BY claimed_at"
            ).fetchall()
        return [Job.from_api(json.loads(r[0])) for r in rows]

    def unreported(self, due_only: bool = False) -> list[JobResult]:
        """Results not delivered yet, oldest first; with due_only, those whose backoff has run out."""
        with self._lock:
            rows = self._db.execute(
                "SELECT result_json FROM jobs WHERE state = 'finished' AND next_report_at <= ? ORDER BY updated_at",
                (time.time() if due_only else float("inf"),),
            ).fetchall()
        return [JobResult.from_record(json.loads(r[0])) for r in rows]

    def undelivered_for_s(self) -> float:
        """How long the oldest undelivered result has been failing (0 when none is)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(first_report_failure) FROM jobs WHERE state = 'finished'").fetchone()
        return time.time() - row[0] if row and row[0] is not None else 0.0

    def state_of(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def prune(self, keep_days: float = 14.0) -> int:
        """Forget reported jobs older than keep_days."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE state IN ('reported', 'dropped') AND updated_at < ?",
                (time.time() - keep_days * 86400,),
            )
            return cur.rowcount
