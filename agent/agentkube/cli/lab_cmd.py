"""`agentkube lab`: start the lab's emulators on loopback and keep them up until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from agentkube.cli.lab_extra import LabMissing, load


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="run the lab (Fulcrum, Kubernetes/Kamaji and Proxmox emulators) on loopback")
    p.add_argument("--state-dir", type=Path, default=Path("lab-state"), help="lab state folder (default: lab-state)")
    p.add_argument("--service", default="Rehearsal", metavar="NAME",
                   help="create this service (with a Pending create job) for rehearsals; '' for none")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        Lab = load("agentkube_lab.lab").Lab
    except LabMissing as e:
        print(f"agentkube lab: {e}", file=sys.stderr)
        return 2
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # fakepve's per-request log
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Lab(args.state_dir) as lab:
        print(f"Fulcrum emulator: {lab.fulcrum.url} (admin token: {lab.fulcrum.admin_token})")
        print(f"agent configuration: {lab.config_file}")
        print(f"inventory for the playbooks: {lab.inventory_dir}")
        print(f"run the agent against it:  agentkube run --config {lab.config_file}")
        if args.service:
            svc = lab.create_rehearsal_service(args.service)
            print(f"service {args.service!r}: {svc['id']} (its create job is Pending)")
            print(f"break-glass: agentkube render job --service-id {svc['id']} --action create "
                  f"--config {lab.config_file} --out {lab.state_dir / 'job'}")
        print("Ctrl-C stops the lab.", flush=True)
        stop.wait()
    return 0
