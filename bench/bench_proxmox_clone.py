"""Wall time of the proxmox_vm role creating 1 worker VM vs 8, against the lab's Proxmox as a real cluster behaves.

    python bench/bench_proxmox_clone.py [--time-scale 1] [--clone-secs 60] [--concurrency N]

The lab is PveLab(realistic=True), as `make demo` runs it: pvestatd's lag, two-step clones (a cloning VM has only
`lock: clone` until its disk is copied), HA-managed VMs, the least-privileged token. Each clone's disk copy takes
`clone-secs` PVE seconds (default 60: a 20 GiB full clone at ~350 MB/s), and by default the lab runs in real time
(time_scale 1), so the role's own pace (Ansible, the API round trips, HA and guest-agent waits) keeps its real
proportion to the copies. The role clones in parallel, bounded per storage by
`proxmox_vm_clone_concurrency_per_storage` (the role default unless --concurrency). Both runs share one lab, so the
ratio is measured against a baseline taken in the same run; the goal is 8/1 <= 2.0. Takes ~7 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from agentkube_lab.pve_lab import PveLab  # noqa: E402

GOAL = 2.0


def role_default_concurrency() -> int:
    defaults = yaml.safe_load((REPO / "roles/proxmox_vm/defaults/main.yml").read_text())
    return int(defaults["proxmox_vm_clone_concurrency_per_storage"])


def create(lab: PveLab, workdir: Path, tenant: str, count: int, concurrency: int) -> float:
    inv = workdir / tenant
    inv.mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    settings = inv / "settings.json"
    fd = os.open(settings, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(dict(lab.group_vars(), agentkube_tenant_name=tenant,
                       proxmox_vm_clone_concurrency_per_storage=concurrency,
                       agentkube_service={"id": str(uuid.uuid4()), "name": tenant},
                       agentkube_tenant={"kubernetesVersion": "v1.35.1", "nodePools": [
                           {"name": "default", "count": count, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}]}), fh)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_PIPELINING="True",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    started = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inv / "hosts.yml"), "tests/integration/playbooks/proxmox_vm.yml",
         "-e", f"@{settings}"], cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"creating {count} VM(s) failed:\n{proc.stdout[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0, help="real seconds per PVE second")
    parser.add_argument("--clone-secs", type=float, default=60.0, help="PVE seconds one clone's disk copy takes")
    parser.add_argument("--concurrency", type=int, default=role_default_concurrency(),
                        help="proxmox_vm_clone_concurrency_per_storage (default: the role's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pve-") as tmp, \
            PveLab(Path(tmp) / "lab", time_scale=args.time_scale, clone_secs=args.clone_secs,
                   realistic=True) as lab:
        lab.fake.max_requests = 10**7
        one = create(lab, Path(tmp), "bench-one", 1, args.concurrency)
        eight = create(lab, Path(tmp), "bench-eight", 8, args.concurrency)
        realism = lab.realism.describe()
    ratio = eight / one
    print(f"lab: {realism}")
    print(f"clone time: {args.clone_secs:g} PVE s = {args.clone_secs * args.time_scale:.2f} s real "
          f"(time_scale {args.time_scale:g}); clones per storage: {args.concurrency} (one storage)")
    print(f"1 VM : {one:6.2f} s")
    print(f"8 VMs: {eight:6.2f} s")
    print(f"ratio 8/1: {ratio:.2f} (goal <= {GOAL}; serial would be ~8) {'OK' if ratio <= GOAL else 'OVER GOAL'}")


if __name__ == "__main__":
    main()
