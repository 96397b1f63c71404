"""The agent against the Fulcrum emulator with trivial playbooks: jobs complete or fail as they should."""

from __future__ import annotations

import pytest
from agent_harness import (
    PLAYBOOKS,
    SPEC,
    AgentThread,
    job_done,
    new_service,
    service_type_with,
    settings_for,
    wait_for,
)

from agentkube.agent.loop import Agent
from agentkube_lab.lab import Lab


@pytest.fixture
def lab(tmp_path):
    custom = service_type_with(["frobnicate", "nap"])
    with Lab(tmp_path / "lab", groups=4, extra_service_types=[custom], kube=False, pve=False) as lab:
        lab.custom_type_id = lab.catalog.extra_service_type_ids[custom["name"]]
        yield lab


def test_create_completes_and_drives_the_lifecycle(lab):
    svc = new_service(lab)
    code = Agent(settings_for(lab)).run(once=True)
    assert code == 0
    job = lab.fulcrum.jobs[0]
    assert job["status"] == "Completed", job
    service = lab.fulcrum.get_service(svc["id"])
    assert service["status"] == "Stopped"  # canonical lifecycle: create -> Stopped
    assert service["agentInstanceId"].startswith("kamaji-tenants/cluster-one-")
    assert service["agentInstanceData"]["lastAction"] == "create"


def test_start_then_stop_follow_the_lifecycle(lab):
    svc = new_service(lab)
    settings = settings_for(lab)
    assert Agent(settings).run(once=True) == 0
    lab.fulcrum.request_action(svc["id"], "start")
    assert Agent(settings).run(once=True) == 0
    assert lab.fulcrum.get_service(svc["id"])["status"] == "Started"
    lab.fulcrum.request_action(svc["id"], "stop")
    assert Agent(settings).run(once=True) == 0
    assert lab.fulcrum.get_service(svc["id"])["status"] == "Stopped"


def test_unknown_action_is_claimed_then_failed(lab):
    svc = new_service(lab, service_type_id=lab.custom_type_id)
    settings = settings_for(lab)
    assert Agent(settings).run(once=True) == 0
    job = lab.fulcrum.request_action(svc["id"], "frobnicate")
    assert Agent(settings).run(once=True) == 0
    done = lab.fulcrum.get_job(job["id"])
    assert done["status"] == "Failed"
    assert done["errorMessage"] == "unsupported action 'frobnicate'"
    calls = [(r.method, r.path.split("?")[0]) for r in lab.fulcrum.request_log if job["id"] in r.path]
    assert calls == [("POST", f"/api/v1/jobs/{job['id']}/claim"), ("POST", f"/api/v1/jobs/{job['id']}/fail")]


def test_custom_action_maps_to_a_configured_playbook(lab):
    svc = new_service(lab, service_type_id=lab.custom_type_id)
    settings = settings_for(lab, runner={"actions": {"nap": str(PLAYBOOKS / "sleep.yml")}})
    assert Agent(settings).run(once=True) == 0
    job = lab.fulcrum.request_action(svc["id"], "nap")
    assert Agent(settings).run(once=True) == 0
    assert lab.fulcrum.get_job(job["id"])["status"] == "Completed"
    assert lab.fulcrum.get_service(svc["id"])["agentInstanceData"] == {"slept": True}


def test_failing_playbook_reports_the_failing_task(lab):
    svc = new_service(lab)
    settings = settings_for(lab, runner={"actions": {"create": str(PLAYBOOKS / "fail.yml")}})
    assert Agent(settings).run(once=True) == 0  # a failed job is not an agent failure
    job = lab.fulcrum.jobs[0]
    assert job["status"] == "Failed"
    assert job["errorMessage"] == (
        "action 'create' failed: task 'Clone the worker VMs' failed on localhost: storage vmstore is full")
    assert lab.fulcrum.get_service(svc["id"])["status"] == "New"


def test_invalid_spec_fails_before_any_playbook_runs(lab, tmp_path):
    # errors Fulcrum's property schema cannot see, so the agent is the one that must catch them
    bad = {**SPEC, "network": {"dnsServiceIP": "10.1.0.10"}, "controlPlane": {"serviceType": "NodePort"}}
    new_service(lab, spec=bad)
    settings = settings_for(lab)
    assert Agent(settings).run(once=True) == 0
    job = lab.fulcrum.jobs[0]
    assert job["status"] == "Failed"
    assert "params.network.dnsServiceIP: 10.1.0.10 must lie inside serviceCidr 10.96.0.0/16" in job["errorMessage"]
    assert "params.controlPlane.address: required when serviceType is NodePort" in job["errorMessage"]
    assert not (settings.agent.state_dir / "jobs" / job["id"]).exists()  # no playbook ran


def test_failed_claim_is_skipped(lab):
    new_service(lab)
    lab.fulcrum.inject(r"/jobs/[^/]+/claim$", status=400, times=1)
    settings = settings_for(lab)
    agent = Agent(settings)
    agent.connect()
    try:
        assert agent.poll_once() == 0  # claim refused: skipped, nothing run
        assert lab.fulcrum.jobs[0]["status"] == "Pending"
        assert agent.journal.state_of(lab.fulcrum.jobs[0]["id"]) is None
    finally:
        agent.shutdown()


def test_jobs_of_different_groups_run_concurrently_within_the_limit(lab):
    services = [new_service(lab, f"svc {i}", group=i, service_type_id=lab.custom_type_id) for i in range(4)]
    settings = settings_for(lab, runner={"actions": {"nap": str(PLAYBOOKS / "sleep.yml")}},
                            agent={"max_concurrent_jobs": 2})
    assert Agent(settings).run(once=True) == 0
    jobs = [lab.fulcrum.request_action(s["id"], "nap") for s in services]
    with AgentThread(settings) as runner:
        peak = 0
        def all_done():
            nonlocal peak
            peak = max(peak, runner.agent.stats.running)
            return all(job_done(lab, j["id"]) for j in jobs)
        wait_for(all_done, timeout=120, interval=0.05, what="4 jobs")
    assert peak == 2
    assert all(lab.fulcrum.get_job(j["id"])["status"] == "Completed" for j in jobs)


def test_rejected_token_stops_the_agent(lab, tmp_path):
    settings = settings_for(lab)
    settings.fulcrum.token = type(settings.fulcrum.token)("not-a-valid-token")
    agent = Agent(settings)
    assert agent.run(once=True) == 2
