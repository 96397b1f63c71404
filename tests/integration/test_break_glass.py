"""The README's "Running the playbooks by hand": `agentkube render job` prints the ansible-playbook command an
operator types; typed as printed, from any folder, it creates and deletes a tenant in the lab exactly as the agent
would."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from agent_harness import AGENTKUBE

from agentkube_lab.lab import Lab

NAMESPACE = "kamaji-tenants"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def rendered_command(lab: Lab, service_id: str, action: str, out: Path) -> tuple[list[str], dict]:
    """The command `agentkube render job` prints for the action, and the environment a shell would run it with
    (its leading NAME=value assignments applied)."""
    render = subprocess.run([*AGENTKUBE, "render", "job", "--service-id", service_id, "--action", action,
                             "--config", str(lab.config_file), "--out", str(out)],
                            capture_output=True, text=True, env=_env(), timeout=60)
    assert render.returncode == 0, render.stderr
    command = shlex.split(render.stdout.strip())
    env = _env()
    while "=" in command[0]:
        name, _, value = command.pop(0).partition("=")
        env[name] = value
    assert Path(command[0]).name == "ansible-playbook"
    return command, env


def _by_hand(lab: Lab, service_id: str, action: str, out: Path) -> subprocess.CompletedProcess:
    command, env = rendered_command(lab, service_id, action, out)
    elsewhere = out.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, env=env, timeout=900)


def test_create_and_delete_by_hand_against_the_lab(tmp_path):
    with Lab(tmp_path / "lab", emulated_workers=False) as lab:
        svc = lab.create_rehearsal_service("By Hand")
        created = _by_hand(lab, svc["id"], "create", tmp_path / "job")
        assert created.returncode == 0, created.stdout[-4000:]
        tcps = lab.kube.list("kamaji.clastix.io/v1alpha1", "TenantControlPlane", NAMESPACE)
        assert [t["metadata"]["labels"]["agentkube.io/service-id"] for t in tcps] == [svc["id"]]
        assert lab.leftovers(), "create by hand left nothing to find"
        deleted = _by_hand(lab, svc["id"], "delete", tmp_path / "job")
        assert deleted.returncode == 0, deleted.stdout[-4000:]
        again = _by_hand(lab, svc["id"], "delete", tmp_path / "job")
        assert again.returncode == 0, again.stdout[-4000:]
        assert lab.leftovers() == []
        assert lab.fulcrum.get_service(svc["id"])["status"] == "New"  # Fulcrum was never told: break-glass
