"""A playbook run never outlives the agent that started it (agentkube.adapters.run_guard), and a restarted agent
stops a survivor it finds (stop_run); artifact rotation never removes a running job's folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from unit_support import wait_for

from agentkube.adapters.job_runner import JobRunner, PlaybookRun
from agentkube.adapters.run_guard import descendants, is_alive, start_ticks, stop_run
from agentkube.core.redaction import Redactor

REPO = Path(__file__).resolve().parents[2]
SLEEP = REPO / "tests" / "playbooks" / "sleep.yml"

AGENT_STAND_IN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from agentkube.adapters.job_runner import JobRunner, PlaybookRun
    from agentkube.core.redaction import Redactor
    jobs = Path(sys.argv[1])
    runner = JobRunner(Path(sys.argv[2]), jobs, Redactor())
    def started(pid, ticks):
        print(json.dumps({"pid": pid, "ticks": ticks}), flush=True)
    runner.run(PlaybookRun("job-orphan", sys.argv[3], {"agentkube_params": {"sleep_s": 300}}, on_started=started))
""")


def _vars(sleep_s: float) -> dict:
    return {"agentkube_job": {"id": "j"}, "agentkube_params": {"sleep_s": sleep_s}}


def test_a_run_dies_with_its_agent_even_on_sigkill(tmp_path):
    """The agent is killed with SIGKILL mid-run: the kernel tells the guard, which ends ansible-playbook and every
    process below it, the Ansible worker (a session leader of its own) and its task's `sleep 300` included."""
    agent = subprocess.Popen([sys.executable, "-c", AGENT_STAND_IN, str(tmp_path / "jobs"), str(REPO), str(SLEEP)],
                             stdout=subprocess.PIPE, text=True)
    try:
        guard = json.loads(agent.stdout.readline())
        assert is_alive(guard["pid"], guard["ticks"])
        task = wait_for(lambda: [p for p in descendants(guard["pid"]) if b"sleep\x00300" in _cmdline(p)], 60,
                        "the playbook's task to start")
        run = [(p, start_ticks(p)) for p in [guard["pid"], *descendants(guard["pid"])]]
        assert os.getsid(task[0]) != guard["pid"]  # the worker left the guard's session: killpg would miss it
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        wait_for(lambda: not any(is_alive(p, t) for p, t in run), 30, "every process of the orphaned run to end")
    finally:
        agent.kill()
        agent.wait(10)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_stop_run_ends_the_recorded_run_and_only_it(tmp_path):
    survivor = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"], start_new_session=True)
    try:
        tree = wait_for(lambda: len(descendants(survivor.pid)) == 2 and descendants(survivor.pid), 10, "the run")
        ticks = start_ticks(survivor.pid)
        assert not stop_run(survivor.pid, ticks + 1)  # another process that reuses the pid: left alone
        assert len(descendants(survivor.pid)) == 2
        assert stop_run(survivor.pid, ticks, timeout_s=5)
        wait_for(lambda: not any(Path(f"/proc/{p}").exists() and is_alive(p, start_ticks(p)) for p in tree), 10,
                 "the run's processes to end")
        assert not stop_run(survivor.pid, ticks)  # gone (a zombie at most): nothing to stop
    finally:
        survivor.kill()
        survivor.wait(10)


def test_the_runner_records_the_guard_and_rotation_spares_a_running_job(tmp_path):
    runner = JobRunner(REPO, tmp_path / "jobs", Redactor(), keep_artifacts=1)
    started: list[tuple[int, int | None]] = []
    outcome = {}
    long_run = threading.Thread(target=lambda: outcome.update(
        long=runner.run(PlaybookRun("job-long", str(SLEEP), _vars(8), on_started=lambda *a: started.append(a)))))
    try:
        long_run.start()
        wait_for(lambda: started, 60, "the long run's guard")
        pid, ticks = started[0]
        assert start_ticks(pid) == ticks and os.getpgid(pid) == pid  # the guard leads the run's process group
        for i in range(2):  # two short runs rotate with keep_artifacts=1 while the long one runs
            assert runner.run(PlaybookRun(f"job-short-{i}", str(SLEEP), _vars(0))).ok
            assert (tmp_path / "jobs" / "job-long").is_dir()
        long_run.join(120)
        assert outcome["long"].ok, outcome["long"].error
        assert not (tmp_path / "jobs" / "job-long" / "run-guard.json").exists()
    finally:
        long_run.join(120)
        runner.close()


def test_a_canceled_run_leaves_no_worker_behind(tmp_path):
    """ansible-runner's own cancel kills the guard's process group only; the Ansible worker, a session leader of
    its own, and its task must end too."""
    runner = JobRunner(REPO, tmp_path / "jobs", Redactor())
    cancel = threading.Event()
    started: list[tuple[int, int | None]] = []
    outcome = {}
    run = threading.Thread(target=lambda: outcome.update(out=runner.run(
        PlaybookRun("job-cancel", str(SLEEP), _vars(300), on_started=lambda *a: started.append(a)), cancel=cancel)))
    try:
        run.start()
        pid = wait_for(lambda: started, 60, "the guard")[0][0]
        wait_for(lambda: [p for p in descendants(pid) if b"sleep\x00300" in _cmdline(p)], 60, "the task")
        tree = [(p, start_ticks(p)) for p in [pid, *descendants(pid)]]
        cancel.set()
        run.join(60)
        assert outcome["out"].status == "canceled"
        assert not [p for p, t in tree if is_alive(p, t)]
    finally:
        cancel.set()
        run.join(60)
        runner.close()


def test_a_guard_left_by_a_dead_agent_is_found_in_its_folder(tmp_path):
    """The journal learns a run's guard at its first event; before that, only the pid file names it."""
    runner = JobRunner(REPO, tmp_path / "jobs", Redactor())
    try:
        (tmp_path / "jobs" / "job-x").mkdir()
        (tmp_path / "jobs" / "job-x" / "run-guard.json").write_text(json.dumps({"pid": 4242, "start_ticks": 7}))
        assert runner.guard_of("job-x") == (4242, 7)
        assert runner.guard_of("job-none") is None
        assert runner.guard_of("../escape") is None
    finally:
        runner.close()
