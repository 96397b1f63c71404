"""The agent's own overhead per job: the end-to-end time of a job through the agent (Fulcrum emulator: queued
-> claimed -> playbook -> reported) against the same playbook run directly with `ansible-playbook`, both
measured in this run, reported as a ratio (target: under 1.10x).

    python bench/bench_agent_overhead.py [--runs 3] [--stand-in]

The playbook is the real `playbooks/create.yml` in the full lab (a new tenant with one worker per run, through
the agent and directly). --stand-in uses the test playbook that sleeps 3 seconds instead: a job of known length.
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
from agentkube_lab.lab import Lab  # noqa: E402

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
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stand-in", action="store_true", help="the 3-second test playbook instead of create.yml")
    args = ap.parse_args()
    args.real = not args.stand_in
    playbook = REPO / "playbooks" / "create.yml" if args.real else REPO / "tests" / "playbooks" / "sleep.yml"
    lab_kwargs = {"emulated_workers": False} if args.real else {"kube": False, "pve": False}
    with tempfile.TemporaryDirectory() as d, Lab(Path(d) / "lab", groups=1, **lab_kwargs) as lab:
        cfg = lab.agent_config()
        if not args.real:
            cfg["runner"]["actions"] = {"create": str(playbook)}
        cfg["tenancy"] = {"validate_spec": args.real}
        cfg["agent"].update({"poll_interval_s": 0.5, "heartbeat_interval_s": 15})
        cfg["health"] = {"enabled": False}
        settings = load_settings(overrides=cfg)
        inventory = Path(cfg["runner"]["inventory"])
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
                # the same job for another service (a tenant of its own), run directly
                twin = dict(lab.fulcrum.get_job(job["id"]), id=f"direct-{i}", serviceId=f"direct-{i}")
                twin["service"] = dict(twin["service"], id=f"direct-service-{i}")
                variables = build_job_vars(Job.from_api(twin), validate_spec=args.real)
                directly.append(direct(playbook, inventory, variables, Path(d)))
        finally:
            agent.request_stop()
            thread.join(timeout=60)
    a, b = statistics.median(through_agent), statistics.median(directly)
    print(f"playbook: {playbook.relative_to(REPO)}")
    print(f"through the agent (queued -> reported), median of {args.runs}: {a:.2f}s")
    print(f"ansible-playbook directly, median of {args.runs}:            {b:.2f}s")
    print(f"agent overhead per job: {a - b:+.2f}s; ratio {a / b:.3f}x (target < 1.10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
