"""Run the lab's Kamaji parent cluster (KubeEmulator) as a process, for molecule scenarios and operators:

    python -m agentkube_lab.kube_emulator_main --state-dir DIR --kubeconfig FILE --pidfile FILE [--daemon]

It writes the parent kubeconfig (0600; the admin, in system:masters), with --identity-kubeconfig also one for a
non-admin identity that RBAC authorizes (the agent's own ServiceAccount by default), then the pidfile (its
presence means "ready"), and serves on 127.0.0.1 until SIGTERM/SIGINT. With --daemon it detaches (logs in
DIR/emulator.log) and returns once ready, so an Ansible task can start it; stop it with `kill $(cat PIDFILE)`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from agentkube_lab.kube_emulator import KubeEmulator
from agentkube_lab.kube_kubeconfig import write_private

READY_WAIT = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agentkube_lab.kube_emulator_main", description=__doc__)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--kubeconfig", required=True, type=Path, help="where to write the parent kubeconfig")
    parser.add_argument("--pidfile", required=True, type=Path, help="written once the API server is ready")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--ready-delay", type=float, default=1.0, help="seconds from Provisioning to Ready")
    parser.add_argument("--max-version", default="v1.36", help="Kamaji's maximum Kubernetes version")
    parser.add_argument("--daemon", action="store_true", help="detach and return once ready")
    parser.add_argument("--identity-kubeconfig", type=Path,
                        help="also write a kubeconfig for --identity-user (RBAC-authorized, not an admin)")
    parser.add_argument("--identity-user", default="system:serviceaccount:agentkube:agentkube",
                        help="the user of --identity-kubeconfig (default: the agent's ServiceAccount)")
    parser.add_argument("--identity-groups", default="system:serviceaccounts,system:serviceaccounts:agentkube",
                        help="comma-separated groups of --identity-user")
    return parser.parse_args(argv)


def serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    emulator = KubeEmulator(args.state_dir, port=args.port, ready_delay=args.ready_delay,
                            max_version=args.max_version)
    emulator.start()
    try:
        emulator.write_kubeconfig(args.kubeconfig)
        if args.identity_kubeconfig is not None:
            groups = tuple(g for g in args.identity_groups.split(",") if g)
            write_private(args.identity_kubeconfig, emulator.identity_kubeconfig(args.identity_user, groups))
        tmp = args.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(args.pidfile)
        logging.getLogger(__name__).info("Kamaji parent emulator at %s (pid %d)", emulator.url, os.getpid())
        stop.wait()
    finally:
        emulator.stop()
        args.pidfile.unlink(missing_ok=True)
    return 0


def daemonize(args: argparse.Namespace) -> int:
    """Fork a detached server; the parent returns 0 once the pidfile appears, 1 if the child died first."""
    args.pidfile.unlink(missing_ok=True)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    child = os.fork()
    if child:
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            if args.pidfile.exists():
                return 0
            if child and os.waitpid(child, os.WNOHANG)[0]:
                child = 0  # the intermediate child exits right after the second fork; wait for the pidfile
            time.sleep(0.1)
        print(f"emulator not ready after {READY_WAIT}s; see {args.state_dir / 'emulator.log'}", file=sys.stderr)
        return 1
    os.setsid()
    if os.fork():
        os._exit(0)
    log = open(args.state_dir / "emulator.log", "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = serve(args)
    except BaseException:  # the log is the only witness of a detached process
        logging.getLogger(__name__).exception("emulator failed")
        code = 1
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.daemon:
        return daemonize(args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
