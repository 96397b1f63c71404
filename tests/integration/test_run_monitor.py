"""The harness's RunMonitor, which the chaos and two-instance tests rely on to prove no job ever runs twice at
once: two guards of one job are an overlap, while a guard's own child between fork and exec (it still shows the
guard's command line) is not a second guard."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from agent_harness import RunMonitor, wait_for

pytestmark = pytest.mark.integration

# Looks like `python -m agentkube.adapters.run_guard --pid-file <dir>/guard.pid ...` in /proc; forks a child
# that keeps that command line (as between fork and exec) when asked to.
FAKE_GUARD = ("import os, sys, time\n"
              "if sys.argv[-1] == 'fork' and os.fork() == 0:\n"
              "    time.sleep(30); os._exit(0)\n"
              "time.sleep(30)\n")


def _fake_guard(run_dir, fork: bool) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FAKE_GUARD, "agentkube.adapters.run_guard", "--pid-file",
                             str(run_dir / "guard.pid"), "fork" if fork else "plain"])


def test_a_guards_forked_child_is_not_a_second_run_but_a_second_guard_is(tmp_path):
    run_dir = tmp_path / "jobs" / str(uuid.uuid4())
    procs = []
    try:
        monitor = RunMonitor(tmp_path)
        procs.append(_fake_guard(run_dir, fork=True))
        wait_for(lambda: len(_children(procs[0].pid)) == 1, 10, what="the forked child")
        assert monitor.guards() == {procs[0].pid: run_dir.name}
        procs.append(_fake_guard(run_dir, fork=False))
        wait_for(lambda: len(monitor.guards()) == 2, 10, what="the second guard")
        assert set(monitor.guards()) == {procs[0].pid, procs[1].pid}
    finally:
        for p in procs:
            for child in _children(p.pid):
                subprocess.run(["kill", "-9", str(child)], check=False)
            p.kill()
            p.wait()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]
