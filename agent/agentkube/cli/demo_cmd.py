"""`agentkube demo`: the whole tenant lifecycle in the lab, with progress a person can follow."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from agentkube.cli.lab_extra import LabMissing, load


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a tenant's lifecycle end to end in the lab")
    p.add_argument("--state-dir", type=Path, help="where the lab keeps its state (default: a temp folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        Demo = load("agentkube_lab.demo").Demo
    except LabMissing as e:
        print(f"agentkube demo: {e}", file=sys.stderr)
        return 2
    if not args.verbose:  # the demo's own progress is on stdout; keep the per-task event log out of the way
        logging.getLogger("agentkube.events").setLevel(logging.WARNING)
    if args.state_dir:
        return Demo(args.state_dir).run()
    with tempfile.TemporaryDirectory(prefix="agentkube-demo-") as d:
        return Demo(Path(d)).run()
