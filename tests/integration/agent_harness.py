"""Shared setup for the agent's integration tests: a lab (Fulcrum emulator with the shipped catalog) and
agent settings that point at it, with the trivial test playbooks of tests/playbooks."""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentkube.agent.loop import Agent
from agentkube.core.job_vars import is_core_id
from agentkube.core.settings import Settings, load_settings
from agentkube_lab.fulcrum_catalog import load_shipped
from agentkube_lab.lab import Lab

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "tests" / "playbooks"
SPEC = {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "default", "count": 1}]}
# The agent's own tests run against a Fulcrum-only lab: the lifecycle actions use a stand-in playbook.
STUB_ACTIONS = {a: str(PLAYBOOKS / "lifecycle_stub.yml") for a in ("create", "start", "stop", "update", "delete")}


def agent_config(lab: Lab) -> dict[str, Any]:
    """The lab's agent configuration with fast test timings and the stand-in lifecycle playbooks."""
    cfg = lab.agent_config()
    cfg["agent"].update({"heartbeat_interval_s": 0.5, "poll_interval_s": 0.2, "shutdown_grace_s": 30})
    cfg["fulcrum"].update({"retry_attempts": 3, "retry_max_s": 0.3, "timeout_s": 5})
    cfg["runner"]["actions"] = dict(STUB_ACTIONS)
    return cfg


def settings_for(lab: Lab, **sections: dict[str, Any]) -> Settings:
    cfg = agent_config(lab)
    for name, values in sections.items():
        if name == "runner" and "actions" in values:
            values = {**values, "actions": {**cfg["runner"]["actions"], **values["actions"]}}
        cfg.setdefault(name, {}).update(values)
    return load_settings(overrides=cfg)


def service_type_with(extra_actions: list[str]) -> dict:
    """The shipped ServiceType plus custom actions (Started/Stopped -> same state), for custom-action tests."""
    st = copy.deepcopy(load_shipped("service-type"))
    st["name"] = "kubernetes-cluster-" + "-".join(extra_actions)
    for action in extra_actions:
        st["lifecycleSchema"]["actions"].append({"name": action, "transitions": [
            {"from": s, "to": s} for s in ("New", "Stopped", "Started")] + [
            {"from": s, "to": s, "onError": True} for s in ("New", "Stopped", "Started")]})
    return st


def new_service(lab: Lab, name: str = "Cluster One", group: int = 0, spec: dict | None = None,
                service_type_id: str | None = None) -> dict:
    assert lab.catalog is not None
    return lab.fulcrum.create_service(name, service_type_id or lab.catalog.service_type_id,
                                      lab.catalog.group_ids[group], lab.catalog.agent_id, spec or SPEC)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_done(lab: Lab, job_id: str) -> bool:
    return lab.fulcrum.get_job(job_id)["status"] in ("Completed", "Failed")


@contextlib.contextmanager
def lifecycle_lab(state_dir: Path, **lab_kwargs: Any) -> Iterator[Lab]:
    """A full lab (Fulcrum, Kamaji/Kubernetes, Proxmox) with an in-process agent running the real action
    playbooks, for the lifecycle tests."""
    with Lab(state_dir, **lab_kwargs) as lab:
        cfg = agent_config(lab)
        cfg["runner"]["actions"] = {}  # the real action playbooks
        with AgentThread(load_settings(overrides=cfg)):
            yield lab


class AgentThread:
    """Runs an in-process agent (run loop on a thread) and stops it cleanly."""

    def __init__(self, settings: Settings):
        self.agent = Agent(settings)
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.agent.run()

    def __enter__(self) -> AgentThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.request_stop()
        self.thread.join(timeout=60)


AGENTKUBE = [sys.executable, "-m", "agentkube.cli"]


class RunMonitor:
    """Watches playbook runs from outside the agent: every run starts as an agentkube.adapters.run_guard process
    whose --pid-file lies in <state dir>/jobs/<ident>/. Samples /proc until stopped and records, per job id (the
    ident of a job run), the guard pids seen, and every moment two guards of one job were alive at once. Only runs
    whose folder lies under `root` count: other agents on this machine (other tests) are not this test's."""

    def __init__(self, root: Path, interval: float = 0.05):
        self.root = Path(root).resolve()
        self.interval = interval
        self.runs: dict[str, set[int]] = {}          # job id -> guard pids seen
        self.overlaps: list[tuple[str, tuple[int, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def guards(self, jobs_only: bool = True) -> dict[int, str]:
        """Live run guards under root (of job runs only, or of every run: metrics too): pid -> ident. A guard's
        child between fork and exec still shows the guard's command line: a process whose parent is a guard is
        its ansible-playbook being started, not a second guard."""
        found: dict[int, tuple[str, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if b"agentkube.adapters.run_guard" in argv and b"--pid-file" in argv:
                run_dir = Path(argv[argv.index(b"--pid-file") + 1].decode()).parent
                if run_dir.is_relative_to(self.root) and (is_core_id(run_dir.name) or not jobs_only):
                    found[int(entry.name)] = (run_dir.name, ppid)
        return {pid: ident for pid, (ident, ppid) in found.items() if ppid not in found}

    def _watch(self) -> None:
        while not self._stop.is_set():
            by_job: dict[str, list[int]] = {}
            for pid, job in self.guards().items():
                by_job.setdefault(job, []).append(pid)
                self.runs.setdefault(job, set()).add(pid)
            self.overlaps += [(job, tuple(sorted(pids))) for job, pids in by_job.items() if len(pids) > 1]
            self._stop.wait(self.interval)

    def __enter__(self) -> RunMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
