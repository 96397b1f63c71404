"""The agent's own overhead per job: the end-to-end time of a job through the agent (Fulcrum emulator: queued
-> claimed -> playbook -> reported) against the same playbook run directly with `ansible-playbook`, both
measured in this run, reported as a ratio (target: under 1.10x).

    python bench/bench_agent_overhead.py [--runs 5] [--playbook PATH --inventory PATH]

The default playbook is the test stand-in that sleeps 3 seconds, so the ratio shows the agent's overhead on a
job of known length; pass a real playbook and its inventory to measure on it instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from agentkube.agent.loop import Agent  # noqa: E402
from agentkube.core.job_vars import build_job_vars  # noqa: E402
from agentkube.core.jobs import Job  # noqa: E402
from agentkube.core.settings import load_settings  # noqa: E402
from agentkube.lab.lab import Lab  # noqa: E402

SPEC = {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "default", "count": 1}]}


def direct(playbook: Path, inventory: Path, variables: dict, workdir: Path) -> float:
    vars_file = workdir / "direct-vars.json"
    fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(variables, f)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.monotonic()
    subprocess.run(["ansible-playbook", "-i", str(inventory), str(playbook), "-e", f"@{vars_file}"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--playbook", type=Path, default=REPO / "tests" / "playbooks" / "sleep.yml")
    ap.add_argument("--inventory", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, Lab(Path(d) / "lab", groups=1) as lab:
        cfg = lab.agent_config()
        cfg["runner"]["actions"] = {"create": str(args.playbook)}
        cfg["tenancy"] = {"validate_spec": False}
        cfg["agent"].update({"poll_interval_s": 0.5, "heartbeat_interval_s": 15})
        settings = load_settings(overrides=cfg)
        inventory = args.inventory or Path(cfg["runner"]["inventory"])
        agent = Agent(settings)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        through_agent, directly = [], []
        try:
            for i in range(args.runs):
                svc = lab.fulcrum.create_service(f"bench {i}", lab.catalog.service_type_id,
                                                 lab.catalog.group_ids[0], lab.catalog.agent_id, SPEC)
                job = next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"])
                t0 = time.monotonic()
                while lab.fulcrum.get_job(job["id"])["status"] not in ("Completed", "Failed"):
                    time.sleep(0.01)
                through_agent.append(time.monotonic() - t0)
                assert lab.fulcrum.get_job(job["id"])["status"] == "Completed", lab.fulcrum.get_job(job["id"])
                variables = build_job_vars(Job.from_api(lab.fulcrum.get_job(job["id"])), validate_spec=False)
                directly.append(direct(args.playbook, inventory, variables, Path(d)))
        finally:
            agent.request_stop()
            thread.join(timeout=60)
    a, b = statistics.median(through_agent), statistics.median(directly)
    print(f"playbook: {args.playbook.relative_to(REPO) if args.playbook.is_relative_to(REPO) else args.playbook}")
    print(f"through the agent (queued -> reported), median of {args.runs}: {a:.2f}s")
    print(f"ansible-playbook directly, median of {args.runs}:            {b:.2f}s")
    print(f"agent overhead per job: {a - b:+.2f}s; ratio {a / b:.3f}x (target < 1.10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
