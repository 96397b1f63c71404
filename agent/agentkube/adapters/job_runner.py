"""Runs one playbook for one job through ansible-runner. Knows ansible-runner, nothing about Fulcrum.

Per run: a fresh private data directory (ident = job id, checked to stay inside the jobs directory), the
variables in 0600 vars files passed as `-e @file` (never as values on the command line), written as data that
Ansible never templates (agentkube.core.untrusted_yaml), `suppress_env_files`, every run started through
agentkube.adapters.run_guard (the run dies with the agent; `extra_env` reaches the child through a file the guard
deletes, never recorded in `artifacts/<ident>/command`), secrets scrubbed from
events before they are written (the result's secrets learnt first) and from every artifact afterwards, a job
timeout, an idle timeout and cancellation, events streamed to JSON logs through a non-blocking queue, and the
result read from `set_stats`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import ansible_runner.interface

from agentkube.adapters.run_guard import stop_run
from agentkube.core.redaction import Redactor, secret_values_in
from agentkube.core.untrusted_yaml import dump_untrusted

log = logging.getLogger(__name__)
event_log = logging.getLogger("agentkube.events")

RESULT_KEY = "agentkube_result"
GUARD_PID_FILE = "run-guard.json"
CONFIG_INVENTORY = "fulcrum-config"  # the run's inventory source of Fulcrum's agent configuration
STOP_GRACE_S = 15.0  # a canceled run's SIGTERM-to-SIGKILL grace
IDENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a job id (UUID) or the agent's own run names
VARS_HEADER = "Written by the agentkube job runner; every value is data (never templated)."


class UnsafeIdent(ValueError):
    """A run identifier that would not name a folder inside the jobs directory."""


@dataclass
class PlaybookRun:
    ident: str
    playbook: str                      # relative to project_dir (or absolute)
    variables: dict[str, Any]
    operator_vars: dict[str, Any] = field(default_factory=dict)
    inventory: str | None = None
    timeout_s: int = 3600
    idle_timeout_s: int = 900
    # called once the run's guard process is up, with its pid and kernel start time (agentkube.adapters.run_guard)
    on_started: Callable[[int, int | None], None] | None = None


@dataclass
class PlaybookOutcome:
    status: str                        # successful | failed | timeout | idle | canceled | error
    rc: int | None
    result: dict[str, Any] | None      # set_stats data under RESULT_KEY
    error: str = ""                    # a descriptive message when not successful
    duration_s: float = 0.0
    artifact_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "successful"


class JobRunner:
    def __init__(
        self,
        project_dir: Path,
        jobs_dir: Path,
        redactor: Redactor,
        *,
        keep_artifacts: int = 20,
        extra_env: dict[str, str] | None = None,
        event_queue_size: int = 10000,
    ):
        self.project_dir = Path(project_dir)
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.redactor = redactor
        self.keep_artifacts = keep_artifacts
        self.extra_env = dict(extra_env or {})
        self.redactor.add(*self.extra_env.values())
        self._active: set[str] = set()   # folders of the runs in progress (never rotated away)
        self._active_lock = threading.Lock()
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=event_queue_size)
        self.events_dropped = 0
        self._logger = threading.Thread(target=self._drain_events, name="runner-events", daemon=True)
        self._logger.start()

    # -- events -----------------------------------------------------------------------------------
    def _drain_events(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            event_log.info(json.dumps(item, default=str, sort_keys=True))

    def close(self) -> None:
        self._events.put(None)
        self._logger.join(timeout=5)

    def _enqueue(self, item: dict[str, Any]) -> None:
        try:
            self._events.put_nowait(item)
        except queue.Full:
            self.events_dropped += 1

    # -- the run ----------------------------------------------------------------------------------
    def private_dir(self, ident: str) -> Path:
        """The run's folder: directly inside the jobs directory, whatever the ident holds."""
        if not isinstance(ident, str) or not IDENT_RE.fullmatch(ident):
            raise UnsafeIdent(f"run ident {ident!r} is not a safe folder name")
        root = self.jobs_dir.resolve()
        pdir = (root / ident).resolve()
        if pdir.parent != root:
            raise UnsafeIdent(f"run ident {ident!r} leaves the jobs directory")
        return pdir

    def run(self, run: PlaybookRun, cancel: threading.Event | None = None) -> PlaybookOutcome:
        started = time.monotonic()
        pdir = self.private_dir(run.ident)
        if pdir.is_symlink():
            pdir.unlink()
        elif pdir.exists():
            shutil.rmtree(pdir)  # a re-run after a crash starts clean
        pdir.mkdir(parents=True, mode=0o700)
        cmdline = shlex.join(playbook_arguments(
            write_vars_file(pdir / "job-vars.yml", run.variables), run.inventory,
            write_config_inventory(pdir / CONFIG_INVENTORY, run.operator_vars) if run.operator_vars else None))

        state = _RunState(started, run.timeout_s, run.idle_timeout_s, cancel)
        ident = run.ident

        def on_event(event: dict[str, Any]) -> bool:
            state.last_event = time.monotonic()
            if state.guard is None and (guard := _read_guard(pid_file)) is not None:
                state.guard = guard
                if run.on_started is not None:
                    run.on_started(*guard)
            # the raw event first: the set_stats result must reach Fulcrum whole (a kubeconfig the agent already
            # knows as a secret too); failure texts from it are scrubbed when the message is built
            state.observe(event)
            # the result's secrets (a first create's kubeconfig) join the redactor before this event, or any
            # artifact, is written: from the set_stats task's own event on
            self.redactor.add(*secret_values_in(_stats_data(event)))
            scrubbed = self.redactor.scrub(event)  # new containers: what observe kept stays raw
            event.clear()
            event.update(scrubbed)  # what ansible-runner writes to job_events is the scrubbed event
            summary = _summarise(ident, event)
            if summary:
                self._enqueue(summary)
            return True

        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "ANSIBLE_CONFIG": str(self.project_dir / "ansible.cfg"), "PYTHONUNBUFFERED": "1",
               # ansible-runner turns host key checking off unless the environment says otherwise
               # (ansible_runner/config/_base.py _prepare_env); Ansible would then put StrictHostKeyChecking=no
               # ahead of the workers' pinned known_hosts.
               "ANSIBLE_HOST_KEY_CHECKING": "True"}
        playbook = run.playbook if os.path.isabs(run.playbook) else str(self.project_dir / run.playbook)
        kwargs: dict[str, Any] = dict(
            private_data_dir=str(pdir), project_dir=str(self.project_dir), playbook=playbook, ident=ident,
            cmdline=cmdline, envvars=env, suppress_env_files=True, quiet=True,
            event_handler=on_event, cancel_callback=state.should_cancel,
            settings={"suppress_ansible_output": True},
        )
        self._enqueue({"job": ident, "event": "run_start", "playbook": run.playbook})
        env_file = pdir / "exec-env.json"
        pid_file = pdir / GUARD_PID_FILE
        try:
            r = ansible_runner.interface.init_runner(**kwargs)
            guard = [sys.executable, "-m", "agentkube.adapters.run_guard", "--parent", str(os.getpid()),
                     "--pid-file", str(pid_file)]
            if self.extra_env:  # through a file the guard deletes: never in artifacts/<ident>/command
                _write_private(env_file, json.dumps(self.extra_env))
                guard += ["--env-file", str(env_file)]
            r.config.command = [*guard, "--", *r.config.command]
            with self._active_lock:
                self._active.add(pdir.name)
            r.run()
            status, rc = r.status, r.rc
        except Exception as e:  # the runner itself blew up: report it, never lose the job
            log.exception("job %s: ansible-runner raised", ident)
            status, rc = "error", None
            state.runner_error = f"{type(e).__name__}: {self.redactor.scrub_text(str(e))}"
        finally:
            with self._active_lock:
                self._active.discard(pdir.name)
            for f in (*pdir.glob("*-vars.yml"), env_file, pid_file):
                f.unlink(missing_ok=True)
            shutil.rmtree(pdir / CONFIG_INVENTORY, ignore_errors=True)
            _drop_recorded_env(pdir)
            self._scrub_artifacts(pdir)
            self._rotate()
        duration = time.monotonic() - started
        if status == "canceled" and state.cancel_reason:
            status = state.cancel_reason
        outcome = PlaybookOutcome(status=status, rc=rc, result=state.result, duration_s=duration,
                                  artifact_dir=pdir / "artifacts" / ident)
        if not outcome.ok:
            outcome.error = self.redactor.scrub_text(state.describe_failure(status, run))
        self._enqueue({"job": ident, "event": "run_end", "status": outcome.status, "rc": rc,
                       "duration_s": round(duration, 3)})
        return outcome

    def guard_of(self, ident: str) -> tuple[int, int | None] | None:
        """The guard a run of this ident recorded in its folder and never cleaned up (its agent died)."""
        try:
            return _read_guard(self.private_dir(ident) / GUARD_PID_FILE)
        except UnsafeIdent:
            return None

    # -- artifacts --------------------------------------------------------------------------------
    def _scrub_artifacts(self, pdir: Path) -> None:
        if not len(self.redactor):
            return
        for path in pdir.rglob("*"):
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            clean = self.redactor.scrub_text(text)
            if clean != text:
                path.write_text(clean, encoding="utf-8")

    def _rotate(self) -> None:
        """Keep the newest keep_artifacts job folders; a running job's folder is never removed."""
        with self._active_lock:
            active = set(self._active)
        dirs = sorted((d for d in self.jobs_dir.iterdir() if d.is_dir() and d.name not in active),
                      key=lambda d: d.stat().st_mtime)
        for d in dirs[: max(0, len(dirs) - self.keep_artifacts)]:
            shutil.rmtree(d, ignore_errors=True)


class _RunState:
    """What the event stream tells about a run: the failure, the set_stats result, timeouts."""

    def __init__(self, started: float, timeout_s: int, idle_s: int, cancel: threading.Event | None):
        self.started = started
        self.last_event = started
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self.cancel = cancel
        self.cancel_reason = ""
        self.result: dict[str, Any] | None = None
        self.failures: list[tuple[str, str, str]] = []  # (task, host, message)
        self.last_task = ""
        self.runner_error = ""
        self.guard: tuple[int, int | None] | None = None  # the run guard's pid and start time

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if self.cancel is not None and self.cancel.is_set():
            self.cancel_reason = "canceled"
        elif now - self.started > self.timeout_s:
            self.cancel_reason = "timeout"
        elif now - self.last_event > self.idle_s:
            self.cancel_reason = "idle"
        if self.cancel_reason and self.guard is not None:
            # ansible-runner's own kill (SIGKILL to the guard's process group) would leave Ansible's workers, which
            # lead groups of their own, running: the guard ends the whole run first
            stop_run(*self.guard, timeout_s=STOP_GRACE_S)
        return bool(self.cancel_reason)

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start":
            self.last_task = data.get("task") or self.last_task
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            msg = res.get("msg") or res.get("stderr") or res.get("reason") or "failed"
            if res.get("censored"):
                msg = "output hidden by no_log"
            self.failures.append((data.get("task") or "?", data.get("host") or "?", str(msg).strip()))
        elif kind == "playbook_on_stats":
            artifact = data.get("artifact_data") or {}
            if isinstance(artifact.get(RESULT_KEY), dict):
                self.result = artifact[RESULT_KEY]

    def describe_failure(self, status: str, run: PlaybookRun) -> str:
        if status == "timeout":
            return f"playbook {run.playbook} timed out after {run.timeout_s}s (last task: {self.last_task or '-'})"
        if status == "idle":
            return (f"playbook {run.playbook} produced no event for {run.idle_timeout_s}s "
                    f"(last task: {self.last_task or '-'})")
        if status == "canceled":
            return f"playbook {run.playbook} was canceled by agent shutdown (last task: {self.last_task or '-'})"
        if status == "error":
            return f"playbook {run.playbook} could not run: {self.runner_error}"
        if self.failures:
            # the last failure ended the play: earlier ones may have been handled by a block's rescue,
            # which then fails with the role's own, clearer message
            task, host, msg = self.failures[-1]
            first = msg.splitlines()[0][:500] if msg else "failed"
            return f"task '{task}' failed on {host}: {first}"
        return f"playbook {run.playbook} failed (status {status})"


def _stats_data(event: dict[str, Any]) -> Any:
    """The set_stats data an event carries: the set_stats task's result, or the final stats."""
    data = event.get("event_data") or {}
    res = data.get("res") if isinstance(data.get("res"), dict) else {}
    return [(res.get("ansible_stats") or {}).get("data"), (data.get("artifact_data") or {}).get(RESULT_KEY)]


def _read_guard(pid_file: Path) -> tuple[int, int | None] | None:
    """The run guard's pid and start time, once it has written them."""
    try:
        info = json.loads(pid_file.read_text(encoding="utf-8"))
        return int(info["pid"]), info.get("start_ticks")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def playbook_arguments(job_vars: Path, inventory: str | Path | None, config_inventory: Path | None) -> list[str]:
    """ansible-playbook's arguments for a job, in precedence order: role defaults < Fulcrum's agent configuration
    (an inventory source of its own, group `all`) < the operator's inventory (a later source wins) < the job's
    variables (extra vars)."""
    args = ["-i", str(config_inventory)] if config_inventory is not None else []
    if inventory:
        args += ["-i", str(inventory)]
    return [*args, "-e", f"@{job_vars}"]


def write_config_inventory(folder: Path, settings: dict[str, Any]) -> Path:
    """An inventory source carrying Fulcrum's agent configuration as group_vars/all (0600, data never templated),
    so that the operator's inventory, given after it, overrides it. Returns the inventory file."""
    (folder / "group_vars").mkdir(parents=True, exist_ok=True, mode=0o700)
    write_vars_file(folder / "group_vars" / "all.yml", settings)
    hosts = folder / "hosts.yml"
    _write_private(hosts, "# Fulcrum's agent configuration for this run; the hosts come from the operator's inventory\n"
                          "all: {}\n")
    return hosts


def write_vars_file(path: Path, variables: dict[str, Any]) -> Path:
    """The one writer of a vars file for `-e @file` (the agent's runs and `agentkube render job`): 0600, every
    value data that Ansible never templates."""
    _write_private(path, dump_untrusted(variables, VARS_HEADER))
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _drop_recorded_env(pdir: Path) -> None:
    """ansible-runner records the child's whole environment in artifacts/<ident>/command: keep the command."""
    for path in pdir.glob("artifacts/*/command"):
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if isinstance(recorded, dict) and "env" in recorded:
            recorded.pop("env")
            _write_private(path, json.dumps(recorded))


_LOGGED_EVENTS = {
    "playbook_on_play_start", "playbook_on_task_start", "runner_on_ok", "runner_on_failed",
    "runner_on_unreachable", "runner_on_skipped", "playbook_on_stats",
}


def _summarise(ident: str, event: dict[str, Any]) -> dict[str, Any] | None:
    kind = event.get("event")
    if kind not in _LOGGED_EVENTS:
        return None
    data = event.get("event_data") or {}
    out: dict[str, Any] = {"job": ident, "event": kind}
    for key in ("play", "task", "host", "changed"):
        if data.get(key) not in (None, ""):
            out[key] = data[key]
    if kind == "runner_on_failed":
        res = data.get("res") or {}
        out["msg"] = "output hidden by no_log" if res.get("censored") else str(res.get("msg", ""))[:500]
    if kind == "playbook_on_stats":
        out["changed"] = data.get("changed")
        out["failures"] = data.get("failures")
    return out


