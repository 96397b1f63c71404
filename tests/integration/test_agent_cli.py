"""`agentkube run --once` as an operator starts it: configured by environment alone, or by file."""

from __future__ import annotations

import json
import os
import subprocess

from agent_harness import AGENTKUBE, STUB_ACTIONS, new_service

from agentkube_lab.lab import Lab


def _env(lab: Lab, tmp_path, token: str) -> dict:
    """Environment alone; the stand-in lifecycle playbooks come in as JSON, as any nested setting can."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    env.update({
        "AGENTKUBE_FULCRUM__URL": lab.fulcrum.url,
        "AGENTKUBE_FULCRUM__TOKEN": token,
        "AGENTKUBE_FULCRUM__CA_FILE": str(lab.ca.ca_file),
        "AGENTKUBE_AGENT__STATE_DIR": str(tmp_path / "state"),
        "AGENTKUBE_AGENT__POLL_INTERVAL_S": "0.2",
        "AGENTKUBE_RUNNER__ACTIONS": json.dumps(STUB_ACTIONS),
    })
    return env


def test_environment_alone_is_enough_and_failed_jobs_still_exit_0(tmp_path):
    with Lab(tmp_path / "lab", groups=2) as lab:
        ok = new_service(lab, "fine", group=0)
        bad = new_service(lab, "broken", group=1,
                          spec={"kubernetesVersion": "v1.35.7", "controlPlane": {"serviceType": "NodePort"}})
        r = subprocess.run([*AGENTKUBE, "run", "--once"], env=_env(lab, tmp_path, lab.token_file.read_text()),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert lab.fulcrum.get_service(ok["id"])["status"] == "Stopped"
        failed = next(j for j in lab.fulcrum.jobs if j["serviceId"] == bad["id"])
        assert failed["status"] == "Failed"
        assert "controlPlane.address" in failed["errorMessage"]


def test_rejected_token_exits_non_zero_and_says_so(tmp_path):
    with Lab(tmp_path / "lab") as lab:
        r = subprocess.run([*AGENTKUBE, "run", "--once"], env=_env(lab, tmp_path, "wrong-token-123456"),
                           capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "token rejected" in r.stderr
    assert "wrong-token-123456" not in r.stderr + r.stdout


def test_invalid_configuration_names_the_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    env.update({"AGENTKUBE_FULCRUM__URL": "fulcrum.example", "AGENTKUBE_AGENT__MAX_CONCURRENT_JOBS": "0"})
    r = subprocess.run([*AGENTKUBE, "run", "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "fulcrum.url (AGENTKUBE_FULCRUM__URL): must start with http:// or https://" in r.stderr
    assert "agent.max_concurrent_jobs (AGENTKUBE_AGENT__MAX_CONCURRENT_JOBS)" in r.stderr
