"""Wall time of the proxmox_vm role creating 1 worker VM vs 8, against the lab's fakepve (same time_scale).

    python bench/bench_proxmox_clone.py [--time-scale 0.01] [--clone-secs 100]

Each clone holds its storage for `clone-secs` PVE seconds (time_scale real seconds each); clones run
in parallel, bounded per storage (default 2), so 8 VMs must take well under 8x the time of 1.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from agentkube_lab.pve_lab import PveLab  # noqa: E402


def create(lab: PveLab, workdir: Path, tenant: str, count: int) -> float:
    inv = workdir / tenant
    inv.mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    settings = inv / "settings.json"
    fd = os.open(settings, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(dict(lab.group_vars(), agentkube_tenant_name=tenant,
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
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--clone-secs", type=float, default=100.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pve-") as tmp, \
            PveLab(Path(tmp) / "lab", time_scale=args.time_scale, clone_secs=args.clone_secs) as lab:
        one = create(lab, Path(tmp), "bench-one", 1)
        eight = create(lab, Path(tmp), "bench-eight", 8)
    print(f"time_scale={args.time_scale} clone={args.clone_secs} PVE s "
          f"({args.clone_secs * args.time_scale:.2f} s real per clone)")
    print(f"1 VM : {one:6.2f} s")
    print(f"8 VMs: {eight:6.2f} s")
    print(f"ratio 8/1: {eight / one:.2f} (serial would be ~8; must be well under)")


if __name__ == "__main__":
    main()
