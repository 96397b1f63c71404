"""The agent's crash journal (SQLite, WAL). It only makes sure that claimed jobs and unreported results
survive a crash: a job is recorded as claimed *before* it runs, its result is recorded *before* it is
reported, and marked reported after Fulcrum accepted it. The infrastructure stays the source of truth.

States: claimed -> finished (result stored, not yet reported) -> reported.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from agentkube.core.jobs import Job, JobResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    job_json    TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('claimed', 'finished', 'reported')),
    result_json TEXT,
    attempts    INTEGER NOT NULL DEFAULT 1,
    claimed_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.path.chmod(0o600)  # results may carry the tenant kubeconfig
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
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

    def unreported(self) -> list[JobResult]:
        with self._lock:
            rows = self._db.execute(
                "SELECT result_json FROM jobs WHERE state = 'finished' ORDER BY updated_at"
            ).fetchall()
        return [JobResult.from_record(json.loads(r[0])) for r in rows]

    def state_of(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def prune(self, keep_days: float = 14.0) -> int:
        """Forget reported jobs older than keep_days."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE state = 'reported' AND updated_at < ?", (time.time() - keep_days * 86400,)
            )
            return cur.rowcount
