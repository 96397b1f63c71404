"""`agentkube render job` writes exactly the vars file the agent writes for the same job (break-glass)."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from agent_harness import AGENTKUBE, SPEC, new_service

from agentkube.core.job_vars import build_job_vars
from agentkube.core.jobs import Job
from agentkube.core.project import project_dir
from agentkube.core.untrusted_yaml import load_untrusted
from agentkube_lab.lab import Lab


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}


def test_render_job_from_the_service_matches_the_agents_vars(tmp_path):
    with Lab(tmp_path / "lab") as lab:
        svc = new_service(lab, "Break Glass")
        out = tmp_path / "out"
        r = subprocess.run([*AGENTKUBE, "render", "job", "--service-id", svc["id"], "--action", "create",
                            "--config", str(lab.config_file), "--out", str(out)],
                           capture_output=True, text=True, env=_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        job = Job.from_api(lab.fulcrum.jobs[0])
    vars_file = out / "job-vars.yml"
    assert stat.S_IMODE(vars_file.stat().st_mode) == 0o600
    assert "--- !unsafe" in vars_file.read_text()  # the agent's own writer: every value is data
    written = load_untrusted(vars_file.read_text())
    expected = build_job_vars(job)
    assert {k: v for k, v in written.items() if k != "agentkube_job"} == \
        {k: v for k, v in expected.items() if k != "agentkube_job"}
    assert written["agentkube_tenant"]["kubernetesVersion"] == SPEC["kubernetesVersion"]
    command = shlex.split(r.stdout)
    assert command[0] == f"ANSIBLE_CONFIG={project_dir() / 'ansible.cfg'}"
    assert command[1] == str(Path(sys.executable).parent / "ansible-playbook")
    assert command[-1] == str(project_dir() / "playbooks" / "create.yml")  # absolute: works from any folder
    assert command[-3:-1] == ["-e", f"@{vars_file}"]
    # Fulcrum's agent configuration: an inventory source before the operator's, so the operator's inventory wins
    assert command[2:6] == ["-i", str(out / "fulcrum-config" / "hosts.yml"), "-i", str(lab.inventory_dir / "hosts.yml")]


def test_render_job_from_job_json_without_fulcrum(tmp_path):
    job = {"id": "j1", "action": "delete", "serviceId": "s1",
           "service": {"id": "s1", "name": "Offline", "groupId": "g", "properties": SPEC,
                       "agentInstanceData": {"endpoint": "https://10.0.0.50:6443"}}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    r = subprocess.run([*AGENTKUBE, "render", "job", "--job-json", str(tmp_path / "job.json"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    written = load_untrusted((tmp_path / "o" / "job-vars.yml").read_text())
    assert written["agentkube_job"] == {"id": "j1", "action": "delete"}
    assert written["agentkube_previous"] == {"endpoint": "https://10.0.0.50:6443"}
    assert str(project_dir() / "playbooks" / "delete.yml") in r.stdout
    assert f"-i {project_dir() / 'inventories' / 'example'} " in r.stdout


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[" * 50_000, b"[1, 2]"])
def test_render_job_with_a_bad_file_says_so_in_one_line(tmp_path, content):
    (tmp_path / "job.json").write_bytes(content)
    r = subprocess.run([*AGENTKUBE, "render", "job", "--job-json", str(tmp_path / "job.json"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("agentkube render job: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_render_job_names_the_bad_field(tmp_path):
    job = {"id": "j1", "action": "create", "serviceId": "s1", "params": {"kubernetesVersion": "1.35"},
           "service": {"id": "s1", "name": "Bad", "groupId": "g"}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    r = subprocess.run([*AGENTKUBE, "render", "job", "--job-json", str(tmp_path / "job.json"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 1
    assert "params.kubernetesVersion" in r.stderr
    assert not (tmp_path / "o").exists()
