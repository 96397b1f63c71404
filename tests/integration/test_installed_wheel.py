"""The wheel carries everything the agent needs: installed outside the checkout, its `agentkube` reports its
version, and break-glass prints a command that uses only the installed project and works from any folder."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (without dependencies: this virtualenv has them) into a
    folder of its own, which comes first on PYTHONPATH."""
    root = tmp_path_factory.mktemp("wheel")
    leftover = not (REPO / "build").exists()  # setuptools builds in the source tree: leave it as it was
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    if leftover:
        shutil.rmtree(REPO / "build", ignore_errors=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = (root / "dist").glob("agentkube_kamaji-*.whl")
    target = root / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    return target


def _run(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    env["PYTHONPATH"] = str(installed)
    return subprocess.run([sys.executable, "-m", "agentkube.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_installed_agent_knows_its_version_and_its_project(installed, tmp_path):
    import agentkube

    r = _run(installed, tmp_path, "--version")
    assert r.returncode == 0 and r.stdout == f"agentkube {agentkube.__version__}\n", r.stderr
    project = installed / "ansible_collections" / "agentkube" / "kamaji"
    for part in ("ansible.cfg", "playbooks/create.yml", "roles/kamaji_tcp/defaults/main.yml",
                 "templates/tenant-control-plane.yaml.j2", "plugins/modules/proxmox_vm_clone.py",
                 "plugins/module_utils/proxmox_api.py", "plugins/filter/agentkube_filters.py",
                 "inventories/example"):
        assert (project / part).exists() and not (project / part).is_symlink(), part


def test_break_glass_from_the_installed_agent_uses_only_the_installed_project(installed, tmp_path):
    job = {"id": "j1", "action": "delete", "serviceId": "s1",
           "service": {"id": "s1", "name": "Offline", "groupId": "g",
                       "properties": {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "d", "count": 1}]}}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    r = _run(installed, tmp_path, "render", "job", "--job-json", "job.json", "--out", "out")
    assert r.returncode == 0, r.stderr
    command = shlex.split(r.stdout)
    assert str(REPO) not in r.stdout.replace(sys.prefix, "<venv>")  # nothing of the checkout (the venv may be in it)
    assert command[0] == f"ANSIBLE_CONFIG={installed / 'ansible_collections' / 'agentkube' / 'kamaji' / 'ansible.cfg'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    env.update(dict([command[0].split("=", 1)]), PYTHONPATH=str(installed))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = subprocess.run([*command[1:], "--syntax-check"], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
