"""The Fulcrum emulator speaks Fulcrum Core's contract: a full admin setup and agent conversation over
HTTPS, every request and every answer validated against ../shared/contracts/fulcrum/openapi.yaml, with
the real ServiceType of the contract's example file. Also shows the validator rejects what it should."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import requests
from openapi_contract import contracts_dir, validate_request, validate_response

from agentkube_lab.certs import LabCA
from agentkube_lab.fulcrum_emulator import FulcrumEmulator

pytestmark = pytest.mark.contract

ADMIN = "contract-admin-token"


def _example() -> dict:
    path = contracts_dir() / "example-service-type-and-agent-type.json"
    if not path.is_file():
        pytest.skip(f"Fulcrum contract example not available: {path} is absent")
    return json.loads(path.read_text())


class CheckedClient:
    """Sends calls and validates each request and answer against the contract as it goes."""

    def __init__(self, url: str, token: str | None, ca_file: str):
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the lab CA
        self.session.verify = ca_file
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.calls = 0

    def __call__(self, method: str, path: str, body: object = None, expect: int | None = None) -> object:
        validate_request(method, path, body)
        r = self.session.request(method, self.url + path, json=body, timeout=5)
        answer = r.json() if r.content else None
        validate_response(method, path, r.status_code, answer)
        self.calls += 1
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return answer


@pytest.fixture
def emu(tmp_path: Path):
    with FulcrumEmulator(cert=LabCA(tmp_path).issue("fulcrum"), admin_token=ADMIN) as emulator:
        yield emulator


def test_agent_conversation_follows_the_contract(emu: FulcrumEmulator):
    example = _example()
    admin = CheckedClient(emu.url, ADMIN, emu.ca_file)

    # --- the admin side, all over HTTP
    provider = admin("POST", "/participants", {"name": "provider", "status": "Enabled"}, 201)
    consumer = admin("POST", "/participants", {"name": "consumer", "status": "Enabled"}, 201)
    service_type = admin(
        "POST", "/service-types", copy.deepcopy(example["serviceType_POST_/api/v1/service-types"]), 201
    )
    agent_type_body = copy.deepcopy(example["agentType_POST_/api/v1/agent-types"])
    agent_type_body["serviceTypeIds"] = [service_type["id"]]
    agent_type = admin("POST", "/agent-types", agent_type_body, 201)
    agent = admin(
        "POST",
        "/agents",
        {
            "name": "vm-agent-1",
            "providerId": provider["id"],
            "agentTypeId": agent_type["id"],
            "tags": ["lab"],
            "configuration": {"hypervisorEndpoint": "https://hv.example", "hypervisorUsername": "agent",
                              "hypervisorPassword": "hv-pass-1", "unknown": "dropped"},
        },
        201,
    )
    token = admin("POST", "/tokens", {"name": "agent token", "role": "agent", "scopeId": agent["id"]}, 201)
    group = admin("POST", "/service-groups", {"name": "web", "consumerId": consumer["id"]}, 201)
    admin("POST", "/metric-types", {"name": "vm.cpu.usage", "entityType": "Service"}, 201)
    properties = {"cpu": 2, "memory": 2048, "disk": 32, "image": "ubuntu-24.04", "password": "hunter2"}
    service = admin(
        "POST",
        "/services",
        {
            "name": "vm-1",
            "serviceTypeId": service_type["id"],
            "groupId": group["id"],
            "agentId": agent["id"],
            "properties": properties,
        },
        201,
    )
    emu.put_secret("hv-pass", "hypervisor-secret")

    # --- the agent side (validated twice: inline here and again from the emulator's log below)
    api = CheckedClient(emu.url, token["value"], emu.ca_file)
    me = api("GET", "/agents/me", expect=200)
    # Core's config engine ran at creation (pkg/domain/agent.go): secret to the vault, defaults filled, unknown gone
    assert me["configuration"]["hypervisorPassword"].startswith("vault://")
    assert me["configuration"]["maxConcurrentJobs"] == 5 and "unknown" not in me["configuration"]
    assert api("GET", "/vault/secrets/hv-pass", expect=200) == {"value": "hypervisor-secret"}
    api("PUT", "/agents/me/status", {"status": "Connected"}, 200)

    (create,) = api("GET", "/jobs/pending?limit=5", expect=200)
    assert create["action"] == "create" and create["service"]["id"] == service["id"]
    api("POST", f"/jobs/{create['id']}/claim", expect=204)
    api("POST", f"/jobs/{create['id']}/claim", expect=400)  # no longer Pending
    password_ref = create["params"]["password"].removeprefix("vault://")
    assert api("GET", f"/vault/secrets/{password_ref}", expect=200) == {"value": "hunter2"}
    api(
        "POST",
        f"/jobs/{create['id']}/complete",
        {
            "agentInstanceId": "vm-100",
            "agentInstanceData": {"vmid": 100, "node": "pve1"},
            "properties": {"internalIp": "10.0.0.10"},
        },
        204,
    )
    api(
        "POST",
        "/metric-entries",
        {"agentInstanceId": "vm-100", "resourceId": "cpu-0", "value": 12.5, "typeName": "vm.cpu.usage"},
        201,
    )
    api(
        "POST",
        "/metric-entries",
        {"serviceId": service["id"], "resourceId": "cpu-1", "value": 3, "typeName": "vm.cpu.usage"},
        201,
    )
    listed = api("GET", "/services?page=1&pageSize=10", expect=200)
    assert [s["status"] for s in listed["items"]] == ["Stopped"]
    assert api("GET", f"/services/{service['id']}", expect=200)["properties"]["internalIp"] == "10.0.0.10"

    # start fails once (error transition back to Stopped), then succeeds
    admin("POST", f"/services/{service['id']}/start", None, 200)
    (start,) = api("GET", "/jobs/pending", expect=200)
    api("POST", f"/jobs/{start['id']}/claim", expect=204)
    api("POST", f"/jobs/{start['id']}/fail", {"errorMessage": "proxmox: VM 100 is locked (backup)"}, 204)
    assert admin("GET", f"/jobs/{start['id']}", expect=200)["status"] == "Failed"
    admin("POST", f"/services/{service['id']}/start", None, 200)
    (start,) = api("GET", "/jobs/pending", expect=200)
    api("POST", f"/jobs/{start['id']}/claim", expect=204)
    api("POST", f"/jobs/{start['id']}/complete", {}, 204)
    api("PUT", "/agents/me/status", {"status": "Connected"}, 200)

    # stop, update (merged params), delete
    admin("POST", f"/services/{service['id']}/stop", None, 200)
    (stop,) = api("GET", "/jobs/pending", expect=200)
    api("POST", f"/jobs/{stop['id']}/claim", expect=204)
    api("POST", f"/jobs/{stop['id']}/complete", {"agentInstanceData": {"vmid": 100, "node": "pve1"}}, 204)
    admin("PATCH", f"/services/{service['id']}", {"properties": {"cpu": 4}}, 200)
    (update,) = api("GET", "/jobs/pending", expect=200)
    assert update["params"]["cpu"] == 4 and update["params"]["memory"] == 2048
    api("POST", f"/jobs/{update['id']}/claim", expect=204)
    api("POST", f"/jobs/{update['id']}/complete", {}, 204)
    admin("DELETE", f"/services/{service['id']}", None, 204)
    (delete,) = api("GET", "/jobs/pending", expect=200)
    api("POST", f"/jobs/{delete['id']}/claim", expect=204)
    api("POST", f"/jobs/{delete['id']}/complete", {}, 204)
    final = admin("GET", f"/services/{service['id']}", expect=200)
    assert final["status"] == "Deleted" and "agentInstanceId" not in final  # cleared; ServiceRes omits it
    assert api("GET", "/jobs/pending", expect=200) == []
    assert admin("GET", "/metric-entries", expect=200)["totalItems"] == 2

    # --- errors are contract-shaped too
    CheckedClient(emu.url, None, emu.ca_file)("GET", "/agents/me", expect=401)
    CheckedClient(emu.url, "wrong", emu.ca_file)("GET", "/jobs/pending", expect=403)

    # --- the emulator's own log of agent calls validates call by call
    assert len(emu.request_log) >= api.calls
    for record in emu.request_log:
        validate_request(record.method, record.path, record.body)
        validate_response(record.method, record.path, record.status, record.response)


# --------------------------------------------------------------------------- the validator itself
def test_validator_rejects_bodies_that_break_the_contract():
    with pytest.raises(AssertionError, match=r"status.*is not one of"):
        validate_request("PUT", "/api/v1/agents/me/status", {"status": "Online"})
    with pytest.raises(AssertionError, match="errorMessage"):
        validate_request("POST", "/jobs/123e4567-e89b-12d3-a456-426614174000/fail", {})
    with pytest.raises(AssertionError, match="a JSON body is required"):
        validate_request("POST", "/metric-entries", None)
    with pytest.raises(AssertionError, match="no request body"):
        validate_request("POST", "/jobs/123e4567-e89b-12d3-a456-426614174000/claim", {"x": 1})
    with pytest.raises(AssertionError, match="is not a 'uuid'"):
        validate_request("POST", "/jobs/42/claim")
    with pytest.raises(AssertionError, match="not in the contract"):
        validate_request("GET", "/jobs/pending?agentId=x")


def test_validator_rejects_answers_that_break_the_contract():
    with pytest.raises(AssertionError, match="is not a 'date-time'"):
        validate_response(
            "GET", "/agents/me", 200, {"id": "123e4567-e89b-12d3-a456-426614174000", "createdAt": "yesterday"}
        )
    with pytest.raises(AssertionError, match="is not of type 'array'"):
        validate_response("GET", "/jobs/pending", 200, {"items": []})
    with pytest.raises(AssertionError, match="status 202 is not in the contract"):
        validate_response("POST", "/jobs/123e4567-e89b-12d3-a456-426614174000/claim", 202, None)
    with pytest.raises(AssertionError, match="defines no response body"):
        validate_response("POST", "/jobs/123e4567-e89b-12d3-a456-426614174000/claim", 204, {"ok": True})
    with pytest.raises(AssertionError, match="no such path"):
        validate_response("GET", "/api/v1/nowhere", 200, {})
    with pytest.raises(AssertionError, match="not with method"):
        validate_request("DELETE", "/jobs/pending")
