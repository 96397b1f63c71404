"""The proxmox_vm role's molecule scenario (converge + idempotence + verify against the lab's fakepve),
run as `molecule test` from the role directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROLE = Path(__file__).resolve().parents[2] / "roles" / "proxmox_vm"
BIN = Path(sys.executable).parent


def test_molecule_default_scenario_passes():
    molecule = shutil.which("molecule", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if molecule is None:
        pytest.skip("molecule is not installed (pip install molecule)")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", ANSIBLE_FORCE_COLOR="0",
               PY_COLORS="0", NO_COLOR="1")
    proc = subprocess.run([molecule, "test"], cwd=ROLE, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for step in ("converge", "idempotence", "verify"):
        assert f"{step}: Executed: Successful" in output, output[-6000:]
    assert "PVEAPIToken=" not in output  # the lab's token never reaches the log
