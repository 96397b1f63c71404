"""Crashes, outages, signals and secrets: the agent as a real process (`agentkube run`) against the lab."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from agent_harness import (
    AGENTKUBE,
    PLAYBOOKS,
    AgentThread,
    agent_config,
    job_done,
    new_service,
    service_type_with,
    settings_for,
    wait_for,
)

from agentkube.agent.loop import Agent
from agentkube_lab.lab import Lab

CANARY = "CANARY-9f8e7d6c5b4a-secret"
VAULT_CANARY = "VAULT-CANARY-0a1b2c3d4e5f"


@pytest.fixture
def lab(tmp_path):
    custom = service_type_with(["nap", "leak"])
    with Lab(tmp_path / "lab", groups=6, extra_service_types=[custom], kube=False, pve=False) as lab:
        lab.custom_type_id = lab.catalog.extra_service_type_ids[custom["name"]]
        yield lab


ACTIONS = {"nap": str(PLAYBOOKS / "sleep.yml"), "leak": str(PLAYBOOKS / "leak.yml")}


def settings(lab: Lab):
    return settings_for(lab, runner={"actions": ACTIONS})


def write_config(lab: Lab, tmp_path: Path, **agent) -> Path:
    cfg = agent_config(lab)
    cfg["agent"].update(agent)
    cfg["runner"]["actions"].update(ACTIONS)
    path = tmp_path / "agent-test.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_agent(config: Path, *extra: str, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    return subprocess.Popen([*AGENTKUBE, "run", "--config", str(config), *extra], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def created(lab: Lab, n: int = 1) -> list[dict]:
    """n services of the custom type whose create jobs already completed (in-process agent)."""
    services = [new_service(lab, f"svc {i}", group=i, service_type_id=lab.custom_type_id) for i in range(n)]
    assert Agent(settings(lab)).run(once=True) == 0
    return services


def test_kill_9_mid_job_then_restart_loses_nothing(lab, tmp_path):
    (svc,) = created(lab)
    job = lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 4})
    config, log = write_config(lab, tmp_path), tmp_path / "agent.log"
    proc = start_agent(config, log=log)
    wait_for(lambda: lab.fulcrum.get_job(job["id"])["status"] == "Processing", 30, what="claim")
    time.sleep(1.0)  # the playbook is running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lab.fulcrum.get_job(job["id"])["status"] == "Processing"  # Core still waits for it
    restarted = subprocess.run([*AGENTKUBE, "run", "--config", str(config), "--once"], capture_output=True,
                               text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    assert "claimed before a restart but not finished; running it again" in restarted.stderr
    assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"
    completes = [r for r in lab.fulcrum.request_log if r.path.endswith(f"{job['id']}/complete")]
    fails = [r for r in lab.fulcrum.request_log if r.path.endswith(f"{job['id']}/fail")]
    assert len(completes) == 1 and not fails


def test_result_kept_through_outage_and_kill_is_reported_after_restart(lab, tmp_path):
    (svc,) = created(lab)
    job = lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 2})
    config, log = write_config(lab, tmp_path), tmp_path / "agent.log"
    proc = start_agent(config, log=log)
    wait_for(lambda: lab.fulcrum.get_job(job["id"])["status"] == "Processing", 30, what="claim")
    lab.fulcrum.set_down(True)  # Fulcrum goes away while the job runs
    wait_for(lambda: "result not delivered yet" in log.read_text(), 60, what="a failed report")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lab.fulcrum.set_down(False)
    assert lab.fulcrum.get_job(job["id"])["status"] == "Processing"
    restarted = subprocess.run([*AGENTKUBE, "run", "--config", str(config), "--once"], capture_output=True,
                               text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    assert "reporting the completed result kept from before a restart" in restarted.stderr
    assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"
    # the playbook ran once: the kept result was reported, the job was not run again
    assert "running it again" not in restarted.stderr


def test_fulcrum_outage_during_a_job_is_survived(lab):
    (svc,) = created(lab)
    job = lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 2})
    with AgentThread(settings(lab)) as runner:
        wait_for(lambda: lab.fulcrum.get_job(job["id"])["status"] == "Processing", 30, what="claim")
        lab.fulcrum.set_down(True)
        wait_for(lambda: runner.agent.stats.processed >= 1, 60, what="the playbook to finish")
        time.sleep(1.5)  # heartbeats and the report fail for a while
        lab.fulcrum.set_down(False)
        wait_for(lambda: job_done(lab, job["id"]), 60, what="the report after the outage")
    assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"


def test_once_gives_up_on_a_lasting_outage_and_keeps_the_result(lab):
    (svc,) = created(lab)
    job = lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 1})
    agent = Agent(settings_for(lab, runner={"actions": ACTIONS}, agent={"shutdown_grace_s": 1}))
    lab.fulcrum.inject(r"/jobs/[^/]+/complete$", status=503, times=None)  # Fulcrum never takes the result
    assert agent.run(once=True) == 3  # the agent could not finish its work: non-zero, not a hang
    assert lab.fulcrum.get_job(job["id"])["status"] == "Processing"
    lab.fulcrum.clear_faults()
    assert Agent(settings(lab)).run(once=True) == 0  # the kept result is delivered at the next start
    assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"


def test_heartbeats_keep_their_interval_while_4_jobs_run(lab):
    services = created(lab, 4)
    jobs = [lab.fulcrum.request_action(s["id"], "nap", {"sleep_s": 4}) for s in services]
    agent_id = lab.catalog.agent_id
    with AgentThread(settings(lab)) as runner:
        wait_for(lambda: runner.agent.stats.running == 4, 30, what="4 running jobs")
        t0 = len(lab.fulcrum.status_history_of(agent_id))
        wait_for(lambda: all(job_done(lab, j["id"]) for j in jobs), 120, what="4 jobs")
        beats = [ts for ts, status in lab.fulcrum.status_history_of(agent_id)[t0:] if status == "Connected"]
    assert len(beats) >= 4
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 2 * 0.5, gaps  # never a missed beat while the jobs ran


def test_sigterm_lets_the_running_job_finish_then_disconnects(lab, tmp_path):
    svc, other = created(lab, 2)
    job = lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 3})
    config, log = write_config(lab, tmp_path), tmp_path / "agent.log"
    proc = start_agent(config, log=log)
    wait_for(lambda: lab.fulcrum.get_job(job["id"])["status"] == "Processing", 30, what="claim")
    later = lab.fulcrum.request_action(other["id"], "nap", {"sleep_s": 1})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"
    assert lab.fulcrum.get_job(later["id"])["status"] in ("Pending", "Completed")  # never left half-done
    history = lab.fulcrum.status_history_of(lab.catalog.agent_id)
    assert history[-1][1] == "Disconnected"


def leaky_service_type() -> dict:
    """A service type with a secret property (Core stores its value in its vault and puts a vault:// ref in the
    job params) and a plain property under a secret-looking name, served by an agent with custom playbooks."""
    st = service_type_with([])
    st["name"] = "leaky"
    st["propertySchema"] = {"properties": {
        "registryPassword": {"type": "string", "label": "Registry password", "secret": {"type": "persistent"}},
        "password": {"type": "string", "label": "Plain password"},
    }}
    return st


def test_no_secret_in_logs_artifacts_or_process_arguments(tmp_path):
    with Lab(tmp_path / "lab", extra_service_types=[leaky_service_type()], kube=False, pve=False) as lab:
        svc = lab.fulcrum.create_service("leaky one", lab.catalog.extra_service_type_ids["leaky"],
                                         lab.catalog.group_ids[0], lab.catalog.agent_id,
                                         {"registryPassword": VAULT_CANARY, "password": CANARY})
        job = lab.fulcrum.jobs[0]
        assert job["params"]["registryPassword"].startswith("vault://")  # Core keeps the value in its vault
        config, log = write_config(lab, tmp_path), tmp_path / "agent.log"
        cfg = yaml.safe_load(config.read_text())
        cfg["runner"]["actions"] = {"create": str(PLAYBOOKS / "leak.yml")}
        cfg["tenancy"] = {"validate_spec": False}
        config.write_text(yaml.safe_dump(cfg))
        token = lab.token_file.read_text()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
        env["AGENTKUBE_FULCRUM__TOKEN"] = token  # the token by environment too: must not reach the children
        proc = subprocess.Popen([*AGENTKUBE, "-v", "run", "--config", str(config), "--once"], env=env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        cmdlines = []
        while proc.poll() is None:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    with contextlib.suppress(OSError):
                        cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
            time.sleep(0.05)
        assert proc.returncode == 0, log.read_text()
        assert lab.fulcrum.get_job(job["id"])["status"] == "Completed", lab.fulcrum.get_job(job["id"])
        assert lab.fulcrum.get_service(svc["id"])["agentInstanceData"] == {"leaked": True}
        state_dir = Path(lab.agent_config()["agent"]["state_dir"])
    artifacts = [p for p in (state_dir / "jobs" / job["id"]).rglob("*") if p.is_file()]
    stdout = state_dir / "jobs" / job["id"] / "artifacts" / job["id"] / "stdout"
    assert stdout in artifacts, "the runner kept no stdout artifact"
    assert stdout.read_text().count("********") >= 2  # both secrets were printed by the playbook, and masked
    texts = {str(p): p.read_text(errors="replace") for p in artifacts}
    texts["agent log"] = log.read_text()
    texts["process arguments"] = "\n".join(cmdlines)
    assert any("ansible-playbook" in c for c in cmdlines)  # we did watch the playbook run
    for secret in (CANARY, VAULT_CANARY, token):
        for where, text in texts.items():
            assert secret not in text, f"secret leaked into {where}"
