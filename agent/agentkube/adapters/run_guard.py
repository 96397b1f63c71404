"""`python -m agentkube.adapters.run_guard --parent PID --pid-file FILE [--env-file FILE] [--grace-s S] -- COMMAND...`

The process every playbook run starts as. ansible-runner spawns it through pexpect, in a session (and process
group) of its own, so a run would outlive an agent killed with SIGKILL or by the OOM killer: the restarted agent
would then run the same job a second time while the first run still acts on the tenant. The guard ties the run to
the agent:

- it asks the kernel for SIGTERM when its parent (the agent thread that spawned it) dies (PR_SET_PDEATHSIG), and it
  does the same when the agent is already gone by the time it runs (the race prctl cannot close);
- on SIGTERM it ends the whole run: SIGTERM to ansible-playbook, which passes it on to its workers
  (ansible/executor/task_queue_manager.py `_signal_handler`), then after a grace period SIGKILL to every process
  still below it. A process *group* is not enough: each Ansible worker makes itself a session or group leader
  (ansible/executor/process/worker.py `_detach`), so ansible-runner's own `killpg` on cancel and timeouts leaves
  the workers, and the commands they run, behind. The guard is a child subreaper (PR_SET_CHILD_SUBREAPER), so
  workers orphaned by a dead ansible-playbook still hang below it and are found;
- it writes its pid and kernel start time to the pid file first, so the agent's journal can name the run and a
  restarted agent can stop a survivor (stop_run);
- it adds the variables of a JSON env file to the command's environment and deletes the file (runner.extra_env:
  ansible-runner records the environment it was given in `artifacts/<ident>/command`, so secrets never go
  through it);
- otherwise it stays out of the way: COMMAND runs as its child with the same terminal, and the guard exits with
  COMMAND's status once nothing of the run is left.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, pgrp, ...), None when the process is gone. The command name
    (field 2) may hold spaces and parentheses: the fields are those after its last closing parenthesis."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid, it names one
    process for good, whatever pid reuse does later."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None else None


def descendants(root: int) -> list[int]:
    """Live processes (zombies excluded) below root, parents before children."""
    children: dict[int, list[int]] = {}
    live: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(entry.name)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            if fields[0] != "Z":
                live.add(int(entry.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return [pid for pid in out if pid in live]


def is_alive(pid: int, ticks: int | None) -> bool:
    """pid still names the process that started at `ticks` (and it is not a zombie)."""
    fields = _proc_stat(pid)
    return ticks is not None and fields is not None and fields[0] != "Z" and int(fields[19]) == ticks


def stop_run(pid: int, ticks: int | None, timeout_s: float = 30.0) -> bool:
    """Stop the run a guard with this pid and start time leads, if it is still alive: SIGTERM lets the guard end
    its whole run; whatever is left after timeout_s gets SIGKILL. True when a survivor was found. A pid now used by
    another process is left alone."""
    if not is_alive(pid, ticks):
        return False
    tree = [(p, start_ticks(p)) for p in descendants(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while is_alive(pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p, t in [(pid, ticks), *tree]:
        if is_alive(p, t):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    return True


class _Guard:
    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.child: int | None = None

    def end_run(self, *_: object) -> None:
        """SIGTERM (the agent died, or asked): end ansible-playbook and everything below the guard, then exit."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while self._reap() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill_rest()
        os._exit(128 + signal.SIGTERM)

    @staticmethod
    def _reap() -> list[int]:
        """Reap what has exited below the guard; the live descendants left."""
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        return descendants(os.getpid())

    def kill_rest(self) -> None:
        for _ in range(50):
            left = self._reap()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


def _read_env(env_file: str) -> dict[str, str]:
    try:
        with open(env_file, encoding="utf-8") as f:
            extra = json.load(f)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(env_file)
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError(f"{env_file}: not a JSON object of strings")
    return extra


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentkube.adapters.run_guard")
    parser.add_argument("--parent", type=int, required=True, help="the agent's pid")
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--env-file")
    parser.add_argument("--grace-s", type=float, default=10.0, help="SIGTERM to SIGKILL")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)

    guard = _Guard(args.grace_s)
    signal.signal(signal.SIGTERM, guard.end_run)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 or libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0):
        print(f"run_guard: prctl failed: errno {ctypes.get_errno()}", file=sys.stderr)
        return 126
    if os.getppid() != args.parent:  # the agent died before the kernel hook was set
        return 128 + signal.SIGTERM
    Path(args.pid_file).write_text(json.dumps({"pid": os.getpid(), "start_ticks": start_ticks(os.getpid())}))
    env = dict(os.environ)
    if args.env_file:
        try:
            env.update(_read_env(args.env_file))
        except ValueError as e:
            print(f"run_guard: {e}", file=sys.stderr)
            return 2
    try:
        guard.child = os.spawnvpe(os.P_NOWAIT, args.command[0], args.command, env)  # noqa: S606 - runner's command
    except OSError as e:
        print(f"run_guard: cannot run {args.command[0]}: {e}", file=sys.stderr)
        return 127
    _, status = os.waitpid(guard.child, 0)
    guard.kill_rest()  # nothing of the run outlives it
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
