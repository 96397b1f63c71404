"""The agent against a Fulcrum emulator that behaves like Core (issue 12): a claimed job deleted since, a claim
whose answer was lost, and two agent processes on one token with Core's non-atomic claim switched on."""

from __future__ import annotations

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
    RunMonitor,
    agent_config,
    new_service,
    service_type_with,
    settings_for,
    wait_for,
)

from agentkube.agent.loop import Agent
from agentkube_lab.lab import Lab

pytestmark = pytest.mark.integration

ACTIONS = {"nap": str(PLAYBOOKS / "sleep.yml")}


def lab_with_naps(state_dir: Path, groups: int, kube: bool = False) -> Lab:
    custom = service_type_with(["nap"])
    lab = Lab(state_dir, groups=groups, extra_service_types=[custom], kube=kube, pve=False)
    lab.start()
    lab.custom_type_id = lab.catalog.extra_service_type_ids[custom["name"]]
    return lab


def services(lab: Lab, n: int) -> list[dict]:
    """n services of the custom type, created (their create jobs completed by an in-process agent)."""
    made = [new_service(lab, f"svc {i}", group=i, service_type_id=lab.custom_type_id) for i in range(n)]
    assert Agent(settings_for(lab, runner={"actions": ACTIONS}, health={"port": 0})).run(once=True) == 0
    return made


def config_file(lab: Lab, path: Path, **sections: dict) -> Path:
    cfg = agent_config(lab)
    cfg["runner"]["actions"].update(ACTIONS)
    cfg["health"] = {"port": 0}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def completes(lab: Lab, job_id: str) -> int:
    """Complete calls Core accepted for the job (answered or handled before a dropped answer)."""
    return sum(1 for r in lab.fulcrum.request_log
               if r.path.endswith(f"/jobs/{job_id}/complete") and 204 in (r.status, r.handled_status))


def test_run_once_drops_the_result_of_a_deleted_job_reports_the_others_and_says_so(tmp_path):
    """Acceptance: a result kept in the journal belongs to a job deleted in the meantime; Core answers 403 for it.
    `agentkube run --once` exits 0, reports the other jobs, and says what it dropped."""
    lab = lab_with_naps(tmp_path / "lab", groups=3)
    try:
        first, second, third = services(lab, 3)
        gone = lab.fulcrum.request_action(first["id"], "nap", {"sleep_s": 0})
        config = config_file(lab, tmp_path / "agent.yaml", agent={"shutdown_grace_s": 3, "report_max_refusals": 1000})
        lab.fulcrum.inject(rf"/jobs/{gone['id']}/complete", status=503, times=None)  # Core refuses it for a while
        kept = subprocess.run([*AGENTKUBE, "run", "--config", str(config), "--once"], capture_output=True,
                              text=True, timeout=180)
        assert kept.returncode == 3, kept.stderr  # --once gave up: the result stays in the journal
        lab.fulcrum.clear_faults()
        lab.fulcrum.delete_job(gone["id"])
        others = [lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 0}) for svc in (second, third)]
        done = subprocess.run([*AGENTKUBE, "run", "--config", str(config), "--once"], capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert f"job {gone['id']}: completed result dropped: Fulcrum no longer knows the job" in done.stderr
        for job in others:
            assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"
    finally:
        lab.stop()


def test_a_claim_whose_answer_was_lost_is_run_not_abandoned(tmp_path):
    """Core took the claim, the answer never came: the retry gets 400 ("cannot claim a job not in pending
    status"), and the job, Processing for this agent, is confirmed through GET /jobs/{id} and run."""
    lab = lab_with_naps(tmp_path / "lab", groups=1)
    try:
        (svc,) = services(lab, 1)
        job = lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 0})
        lab.fulcrum.inject(rf"/jobs/{job['id']}/claim", drop_after=True)
        assert Agent(settings_for(lab, runner={"actions": ACTIONS}, health={"port": 0})).run(once=True) == 0
        assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"
        claims = [r for r in lab.fulcrum.request_log if r.path.endswith(f"/jobs/{job['id']}/claim")]
        assert [(r.status, r.handled_status) for r in claims][:2] == [(None, 204), (400, None)]
        assert completes(lab, job["id"]) == 1
    finally:
        lab.stop()


def test_a_deleted_job_offered_then_gone_never_stops_the_agent(tmp_path):
    lab = lab_with_naps(tmp_path / "lab", groups=2)
    try:
        first, second = services(lab, 2)
        doomed = lab.fulcrum.request_action(first["id"], "nap", {"sleep_s": 0})
        fine = lab.fulcrum.request_action(second["id"], "nap", {"sleep_s": 0})
        lab.fulcrum.delete_job(doomed["id"])
        with AgentThread(settings_for(lab, runner={"actions": ACTIONS}, health={"port": 0})) as agent:
            wait_for(lambda: lab.fulcrum.get_job(fine["id"])["status"] == "Completed", 60, what="the other job")
            assert agent.thread.is_alive()
    finally:
        lab.stop()


def _holder(lab: Lab, name: str) -> str:
    lease = lab.kube.get("coordination.k8s.io/v1", "Lease", "kamaji-system", name) or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def test_two_instances_on_one_token_with_the_claim_race_never_run_a_job_twice(tmp_path, capsys):
    """Two `agentkube run` processes, each with its own state directory (as on two hosts), one token, and Core's
    non-atomic claim opened wide. Only the leader (a Lease on the Kamaji parent) claims; when it is killed with
    SIGKILL mid-run, the standby takes over within the configured time, takes over the job the dead leader held,
    and finishes the queue. No job ever has two runs at once, and each is completed once."""
    lab = lab_with_naps(tmp_path / "lab", groups=4, kube=True)
    procs: list[subprocess.Popen] = []
    try:
        lab.fulcrum.set_claim_race(True, 0.3)
        svcs = services(lab, 4)
        lease = {"lease_duration_s": 4, "renew_deadline_s": 3, "retry_period_s": 1}
        configs = [config_file(lab, tmp_path / f"agent-{i}.yaml", agent={"state_dir": str(tmp_path / f"state-{i}"),
                                                                         "max_concurrent_jobs": 2},
                               leadership=lease) for i in range(2)]
        jobs = [lab.fulcrum.request_action(svc["id"], "nap", {"sleep_s": 4}) for svc in svcs]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
        with RunMonitor(tmp_path) as monitor:
            for i, config in enumerate(configs):
                procs.append(subprocess.Popen([*AGENTKUBE, "run", "--config", str(config)], env=env,
                                              stdout=(tmp_path / f"agent-{i}.log").open("wb"),
                                              stderr=subprocess.STDOUT, start_new_session=True))
            name = f"agentkube-{lab.catalog.agent_id}"
            first = wait_for(lambda: _holder(lab, name), 60, what="a leader")
            wait_for(lambda: monitor.runs, 60, what="the leader's first run")
            leader = next(p for p in procs if f"_{p.pid}_" in first)
            os.killpg(leader.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            second = wait_for(lambda: (h := _holder(lab, name)) and h != first and h, 30, what="the standby")
            takeover_s = time.monotonic() - killed_at
            wait_for(lambda: all(lab.fulcrum.get_job(j["id"])["status"] == "Completed" for j in jobs), 120,
                     interval=0.5, what="the queue")
        with capsys.disabled():
            print(f"\n[two instances] jobs={len(jobs)} takeover={takeover_s:.1f}s "
                  f"(lease {lease['lease_duration_s']}s, retry {lease['retry_period_s']}s) "
                  f"runs={sum(len(p) for p in monitor.runs.values())} leader {first} -> {second}")
        assert monitor.overlaps == []
        assert all(completes(lab, j["id"]) == 1 for j in jobs)
        assert second != first
        wait_for(lambda: not monitor.guards(jobs_only=False), 30, what="every run to end")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        lab.stop()
