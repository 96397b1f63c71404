"""Every request the agent makes, and every answer it gets from the lab's Fulcrum emulator, validates
against Fulcrum Core's own openapi.yaml (skipped with a reason when ../shared/contracts is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

from openapi_contract import contracts_dir, validate_request, validate_response

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from agent_harness import PLAYBOOKS, new_service, service_type_with, settings_for

from agentkube.agent.loop import Agent
from agentkube_lab.lab import Lab


def test_agent_conversation_matches_the_openapi_contract(tmp_path):
    assert (contracts_dir() / "openapi.yaml").is_file() or validate_request("GET", "/agents/me")  # skips if absent
    custom = service_type_with(["nap", "frobnicate"])
    with Lab(tmp_path / "lab", groups=3, extra_service_types=[custom], kube=False, pve=False) as lab:
        custom_id = lab.catalog.extra_service_type_ids[custom["name"]]
        lab.fulcrum.put_secret("pw", "vault-value-123456")
        settings = settings_for(lab, runner={"actions": {"nap": str(PLAYBOOKS / "sleep.yml"),
                                                         "create": str(PLAYBOOKS / "succeed.yml")}})
        a = new_service(lab, "one", group=0, service_type_id=custom_id)
        b = new_service(lab, "two", group=1, service_type_id=custom_id)
        assert Agent(settings).run(once=True) == 0
        lab.fulcrum.request_action(a["id"], "nap")
        lab.fulcrum.request_action(b["id"], "frobnicate")
        lab.fulcrum.inject(r"/jobs/pending", status=503, times=1)  # a retried 5xx is part of the conversation
        assert Agent(settings).run(once=True) == 0
        agent = Agent(settings)
        agent.connect()
        agent.client.post_metric({"agentInstanceId": lab.fulcrum.get_service(a["id"])["agentInstanceId"],
                                  "resourceId": "one", "typeName": "tcp.status", "value": 1})
        agent.client.list_services()
        assert agent.client.resolve_secret("pw") == "vault-value-123456"
        agent.shutdown()
        log = list(lab.fulcrum.request_log)
    seen = {(r.method, r.path.split("?")[0].split("/")[3]) for r in log}
    for expected in [("GET", "agents"), ("PUT", "agents"), ("GET", "jobs"), ("POST", "jobs"), ("GET", "vault"),
                     ("POST", "metric-entries"), ("GET", "services")]:
        assert expected in seen, f"the conversation never made a {expected} call"
    assert any(r.status == 503 for r in log)
    for r in log:
        validate_request(r.method, r.path, r.body)
        if r.status is not None:
            validate_response(r.method, r.path, r.status, r.response)
