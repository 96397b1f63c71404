"""The Fulcrum Core emulator, exercised through real HTTP(S) with requests: auth, heartbeats, the job
queue's rules, lifecycle transitions, properties and secrets, metrics, job timeout and fault injection."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from agentkube_lab.certs import LabCA
from agentkube_lab.fulcrum_emulator import FulcrumEmulator

ADMIN = "admin-secret"

SERVICE_TYPE = {
    "name": "kubernetes-cluster",
    "propertySchema": {
        "properties": {
            "nodes": {
                "type": "integer",
                "required": True,
                "validators": [{"type": "min", "config": {"value": 1}}],
                "authorizers": [{"type": "state", "config": {"allowedStates": ["Stopped"]}}],
            },
            "version": {"type": "string", "default": "1.30"},
            "endpoint": {"type": "string", "authorizers": [{"type": "actor", "config": {"actors": ["agent"]}}]},
            "clusterUid": {
                "type": "string",
                "immutable": True,
                "authorizers": [{"type": "actor", "config": {"actors": ["agent"]}}],
            },
            "adminPassword": {"type": "string", "secret": {"type": "ephemeral"}},
            "apiKey": {"type": "string", "secret": {"type": "persistent"}},
            "network": {
                "type": "object",
                "properties": {
                    "podCidr": {"type": "string", "default": "10.244.0.0/16"},
                    "mtu": {"type": "integer", "default": 1450},
                },
            },
        }
    },
    "lifecycleSchema": {
        "states": [{"name": n} for n in ("New", "Stopped", "Started", "QuotaExceeded", "Failed", "Deleted")],
        "actions": [
            {
                "name": "create",
                "requestSchemaType": "properties",
                "transitions": [
                    {"from": "New", "to": "Stopped"},
                    {"from": "New", "to": "QuotaExceeded", "onError": True, "onErrorRegexp": "quota.*exceeded"},
                    {"from": "New", "to": "Failed", "onError": True},
                ],
            },
            {
                "name": "start",
                "transitions": [
                    {"from": "Stopped", "to": "Started"},
                    {"from": "Stopped", "to": "Stopped", "onError": True},
                ],
            },
            {"name": "stop", "transitions": [{"from": "Started", "to": "Stopped"}]},
            {
                "name": "update",
                "requestSchemaType": "properties",
                "transitions": [{"from": "Stopped", "to": "Stopped"}, {"from": "Started", "to": "Started"}],
            },
            {
                "name": "delete",
                "transitions": [{"from": s, "to": "Deleted"} for s in ("Stopped", "Started", "Failed")],
            },
        ],
        "initialState": "New",
        "terminalStates": ["Deleted"],
        "runningStates": ["Started"],
    },
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Client:
    """A tiny Fulcrum HTTP client for the tests. `trust_env=False` so REQUESTS_CA_BUNDLE cannot
    replace the lab CA."""

    def __init__(self, url: str, token: str | None, ca_file: str | None):
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = ca_file if ca_file else True
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, json: object = None, **kw) -> requests.Response:
        kw.setdefault("timeout", 5)
        return self.session.request(method, self.url + path, json=json, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.call("GET", path, **kw)

    def post(self, path: str, json: object = None, **kw) -> requests.Response:
        return self.call("POST", path, json=json, **kw)

    def put(self, path: str, json: object = None, **kw) -> requests.Response:
        return self.call("PUT", path, json=json, **kw)


@dataclass
class World:
    emu: FulcrumEmulator
    clock: FakeClock
    provider: dict
    consumer: dict
    service_type: dict
    agent_type: dict
    agent: dict
    token: str
    group: dict
    api: Client  # the agent
    admin: Client

    def client(self, token: str | None) -> Client:
        return Client(self.emu.url, token, self.emu.ca_file)

    def service(self, name: str = "c1", group: dict | None = None, **props) -> dict:
        properties = {"nodes": 1, **props}
        return self.emu.create_service(
            name, self.service_type["id"], (group or self.group)["id"], self.agent["id"], properties
        )

    def pending(self, limit: int | None = None) -> list[dict]:
        r = self.api.get("/jobs/pending", params={"limit": limit} if limit else None)
        assert r.status_code == 200, r.text
        return r.json()

    def claim(self, job_id: str) -> None:
        r = self.api.post(f"/jobs/{job_id}/claim")
        assert r.status_code == 204, r.text

    def run(self, job: dict, **result) -> None:
        """Claim and complete a job."""
        self.claim(job["id"])
        r = self.api.post(f"/jobs/{job['id']}/complete", json=result)
        assert r.status_code == 204, r.text

    def created(self, name: str = "c1", group: dict | None = None, **result) -> dict:
        """A service whose create job completed (status Stopped)."""
        svc = self.service(name, group=group)
        job = next(j for j in self.emu.jobs if j["serviceId"] == svc["id"])
        self.run(job, **result)
        return self.emu.get_service(svc["id"])


@pytest.fixture(scope="module")
def lab_cert(tmp_path_factory: pytest.TempPathFactory):
    return LabCA(Path(tmp_path_factory.mktemp("ca"))).issue("fulcrum")


def _world(emu: FulcrumEmulator, clock: FakeClock) -> World:
    provider = emu.create_provider("provider")
    consumer = emu.create_provider("consumer")
    st = emu.create_service_type(copy.deepcopy(SERVICE_TYPE))
    at = emu.create_agent_type("kamaji-agent", [st["id"]], {"properties": {
        "proxmoxToken": {"type": "string"}, "port": {"type": "integer", "default": 8006}}})
    agent = emu.create_agent("agent-1", provider["id"], at["id"], {"proxmoxToken": "vault://pve-token", "x": 1})
    token = emu.create_agent_token(agent["id"])
    group = emu.create_service_group("team-a", consumer["id"])
    return World(
        emu,
        clock,
        provider,
        consumer,
        st,
        at,
        agent,
        token,
        group,
        Client(emu.url, token, emu.ca_file),
        Client(emu.url, ADMIN, emu.ca_file),
    )


@pytest.fixture
def world(lab_cert):
    clock = FakeClock()
    emu = FulcrumEmulator(
        cert=lab_cert,
        admin_token=ADMIN,
        clock=clock,
        job_timeout=300,
        agent_health_timeout=30,
        job_maintenance_interval=60,
    )
    emu.start()
    try:
        yield _world(emu, clock)
    finally:
        emu.stop()


# --------------------------------------------------------------------------- server
def test_serves_https_verified_by_the_lab_ca(world):
    assert world.emu.url.startswith("https://127.0.0.1:") and world.emu.url.endswith("/api/v1")
    assert world.api.get("/agents/me").status_code == 200
    system_trust = world.client(world.token)
    system_trust.session.verify = True
    with pytest.raises(requests.exceptions.SSLError):  # without the lab CA, verification fails
        system_trust.get("/agents/me")


def test_serves_plain_http_without_a_cert():
    with FulcrumEmulator() as emu:
        assert emu.url.startswith("http://127.0.0.1:")
        p = emu.create_provider("p")
        st = emu.create_service_type(copy.deepcopy(SERVICE_TYPE))
        agent = emu.create_agent("a", p["id"], emu.create_agent_type("t", [st["id"]])["id"])
        r = Client(emu.url, emu.create_agent_token(agent["id"]), None).get("/agents/me")
        assert r.status_code == 200 and r.json()["id"] == agent["id"]


def test_refuses_non_loopback_hosts():
    with pytest.raises(ValueError, match="loopback"):
        FulcrumEmulator(host="0.0.0.0")


def test_stop_closes_the_port_and_open_connections(world):
    assert world.api.get("/agents/me").status_code == 200  # a keep-alive connection is now open
    world.emu.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        world.api.get("/agents/me", timeout=2)


# --------------------------------------------------------------------------- auth
def test_missing_token_is_401_and_unknown_or_expired_token_is_403(world):
    assert world.client(None).get("/agents/me").status_code == 401
    assert world.client("not-a-token").get("/agents/me").status_code == 403
    past = dt.datetime.fromtimestamp(world.clock.now - 1, dt.UTC).isoformat()
    expired = world.emu.create_agent_token(world.agent["id"], expire_at=past)
    r = world.client(expired).get("/agents/me")
    assert r.status_code == 403 and "expired" in r.json()["error"]


def test_tokens_expire_after_a_day_by_default(world):
    world.clock.advance(24 * 3600 + 1)
    assert world.api.get("/agents/me").status_code == 403


def test_roles_are_enforced_both_ways(world):
    assert world.admin.get("/jobs/pending").status_code == 403
    assert world.api.post("/participants", json={"name": "x", "status": "Enabled"}).status_code == 403


# --------------------------------------------------------------------------- agent and heartbeat
def test_agents_me_returns_the_agent_with_its_configuration(world):
    me = world.api.get("/agents/me").json()
    assert me["id"] == world.agent["id"] and me["status"] == "Disconnected"  # Core's NewAgent
    assert me["providerId"] == world.provider["id"] and me["agentTypeId"] == world.agent_type["id"]
    # Core ran it through the config engine at creation: unknown keys dropped, defaults filled
    assert me["configuration"] == {"proxmoxToken": "vault://pve-token", "port": 8006}


def test_status_updates_are_heartbeats(world):
    r = world.api.put("/agents/me/status", json={"status": "Connected"})
    assert r.status_code == 200 and r.json()["status"] == "Connected"
    world.clock.advance(10)
    world.api.put("/agents/me/status", json={"status": "Connected"})
    history = world.emu.status_history
    assert [s for _, s in history] == ["Connected", "Connected"]
    assert history[1][0] - history[0][0] == 10
    assert world.api.put("/agents/me/status", json={"status": "Sleeping"}).status_code == 400


def test_a_silent_agent_is_marked_disconnected(world):
    world.api.put("/agents/me/status", json={"status": "Connected"})
    world.clock.advance(61)  # the agent maintenance runs every 30 s: at 30 the heartbeat is not yet too old
    assert world.emu.get_agent(world.agent["id"])["status"] == "Disconnected"


# --------------------------------------------------------------------------- job queue
def test_pending_is_a_bare_array_of_jobs_with_their_service(world):
    svc = world.service(adminPassword="s3cret")
    jobs = world.pending()
    assert isinstance(jobs, list) and len(jobs) == 1
    job = jobs[0]
    assert job["action"] == "create" and job["status"] == "Pending" and job["serviceId"] == svc["id"]
    assert job["service"]["id"] == svc["id"] and job["service"]["status"] == "New"
    # create params: the full validated set, defaults filled, secrets as vault references
    assert job["params"]["nodes"] == 1 and job["params"]["version"] == "1.30"
    assert job["params"]["adminPassword"].startswith("vault://")


def test_one_job_per_group_and_busy_groups_are_hidden(world):
    other_group = world.emu.create_service_group("team-b", world.consumer["id"])
    a = world.service("a")
    world.service("b")  # same group as a: waits behind it
    c = world.service("c", group=other_group)
    assert [j["serviceId"] for j in world.pending()] == [a["id"], c["id"]]
    job_a = world.pending()[0]
    world.claim(job_a["id"])
    assert [j["serviceId"] for j in world.pending()] == [c["id"]]  # a's group is busy
    world.api.post(f"/jobs/{job_a['id']}/complete", json={})
    assert {j["service"]["name"] for j in world.pending()} == {"b", "c"}


def test_pending_orders_by_priority_then_age_and_honours_limit(world):
    groups = [world.emu.create_service_group(f"g{i}", world.consumer["id"]) for i in range(3)]
    services = [world.created(f"s{i}", group=groups[i]) for i in range(3)]
    world.emu.request_action(services[0]["id"], "start")
    world.emu.request_action(services[1]["id"], "start", priority=5)
    world.emu.request_action(services[2]["id"], "start")
    assert [j["serviceId"] for j in world.pending()] == [services[1]["id"], services[0]["id"], services[2]["id"]]
    assert len(world.pending(limit=2)) == 2


def test_claim_needs_a_pending_job_of_this_agent(world):
    world.service()
    job = world.pending()[0]
    world.claim(job["id"])
    assert world.api.post(f"/jobs/{job['id']}/claim").status_code == 400
    assert world.api.post("/jobs/00000000-0000-4000-8000-000000000000/claim").status_code == 403  # AuthzFromID
    other = world.emu.create_agent("agent-2", world.provider["id"], world.agent_type["id"])
    intruder = world.client(world.emu.create_agent_token(other["id"]))
    assert intruder.post(f"/jobs/{job['id']}/complete", json={}).status_code == 403


def test_complete_and_fail_need_a_processing_job(world):
    world.service()
    job = world.pending()[0]
    assert world.api.post(f"/jobs/{job['id']}/complete", json={}).status_code == 400
    assert world.api.post(f"/jobs/{job['id']}/fail", json={"errorMessage": "x"}).status_code == 400
    assert world.emu.get_job(job["id"])["status"] == "Pending"


# --------------------------------------------------------------------------- lifecycle
def test_create_start_stop_follow_the_lifecycle(world):
    svc = world.created(agentInstanceId="tenant-1", agentInstanceData={"nodes": [1]})
    assert svc["status"] == "Stopped" and svc["agentInstanceId"] == "tenant-1"
    world.run(world.emu.request_action(svc["id"], "start"), agentInstanceData={"endpoint": "e"})
    svc = world.emu.get_service(svc["id"])
    assert svc["status"] == "Started"
    assert svc["agentInstanceData"] == {"endpoint": "e"}  # replaced whole, not merged
    job = world.emu.request_action(svc["id"], "stop")
    assert "params" not in job  # only create and update jobs carry params
    world.run(job)
    assert world.emu.get_service(svc["id"])["status"] == "Stopped"
    assert world.emu.get_job(job["id"])["status"] == "Completed"


@pytest.mark.parametrize(
    ("message", "state"),
    [("proxmox: quota for storage exceeded", "QuotaExceeded"), ("kamaji: TCP never became Ready", "Failed")],
)
def test_failure_picks_the_error_transition_by_regexp(world, message, state):
    svc = world.service()
    job = world.pending()[0]
    world.claim(job["id"])
    assert world.api.post(f"/jobs/{job['id']}/fail", json={"errorMessage": message}).status_code == 204
    failed = world.emu.get_job(job["id"])
    assert failed["status"] == "Failed" and failed["errorMessage"] == message
    assert world.emu.get_service(svc["id"])["status"] == state


def test_failure_without_an_error_transition_fails_the_job_and_keeps_the_service(world):
    svc = world.created()
    job = world.emu.request_action(svc["id"], "update", {"nodes": 3})
    world.claim(job["id"])
    r = world.api.post(f"/jobs/{job['id']}/fail", json={"errorMessage": "boom"})
    assert r.status_code == 204
    assert world.emu.get_job(job["id"])["status"] == "Failed"
    assert world.emu.get_service(svc["id"])["status"] == "Stopped"


def test_actions_are_checked_against_state_and_active_jobs(world):
    svc = world.service()
    r = world.admin.post(f"/services/{svc['id']}/start")
    assert r.status_code == 400 and 'not allowed from state "New"' in r.json()["error"]
    world.run(world.pending()[0])
    assert world.admin.post(f"/services/{svc['id']}/start").status_code == 200
    r = world.admin.post(f"/services/{svc['id']}/stop")
    assert r.status_code == 400  # start is still pending
    assert world.admin.post(f"/services/{svc['id']}/reboot").status_code == 400  # not in the lifecycle


def test_update_carries_merged_properties_applied_on_completion(world):
    svc = world.created()
    r = world.admin.call("PATCH", f"/services/{svc['id']}", json={"properties": {"nodes": 3}})
    assert r.status_code == 200 and r.json()["properties"]["nodes"] == 1  # old set until the job completes
    job = world.pending()[0]
    assert job["action"] == "update" and job["params"]["nodes"] == 3 and job["params"]["version"] == "1.30"
    world.run(job)
    assert world.emu.get_service(svc["id"])["properties"]["nodes"] == 3


def test_nested_properties_get_defaults_and_merge_deeply(world):
    svc = world.service(network={"mtu": 9000})
    assert svc["properties"]["network"] == {"mtu": 9000, "podCidr": "10.244.0.0/16"}
    world.run(world.pending()[0])
    world.emu.request_action(svc["id"], "update", {"network": {"podCidr": "10.0.0.0/16"}})
    job = world.pending()[0]
    assert job["params"]["network"] == {"mtu": 9000, "podCidr": "10.0.0.0/16"}
    world.run(job)
    r = world.admin.call("PATCH", f"/services/{svc['id']}", json={"properties": {"network": {"mtu": "big"}}})
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "network"  # Core reports the top property
    assert "mtu: expected integer" in r.json()["errors"][0]["message"]


def test_update_validates_properties_and_their_state_authorizer(world):
    svc = world.created()
    r = world.admin.call("PATCH", f"/services/{svc['id']}", json={"properties": {"nodes": 0}})
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "nodes"
    world.run(world.emu.request_action(svc["id"], "start"))
    r = world.admin.call("PATCH", f"/services/{svc['id']}", json={"properties": {"nodes": 2}})
    assert r.status_code == 400 and "state 'Started'" in r.json()["errors"][0]["message"]


def test_delete_reaches_the_terminal_state_and_frees_the_instance_id(world):
    svc = world.created(agentInstanceId="tenant-1")
    assert world.admin.call("DELETE", f"/services/{svc['id']}").status_code == 204
    world.run(world.pending()[0])
    gone = world.emu.get_service(svc["id"])
    assert gone["status"] == "Deleted" and "agentInstanceId" not in gone  # cleared, and omitempty
    assert world.admin.post(f"/services/{svc['id']}/start").status_code == 400  # terminal


# --------------------------------------------------------------------------- properties from the agent
def test_agent_may_set_only_properties_authorised_for_it(world):
    svc = world.service()
    job = world.pending()[0]
    world.claim(job["id"])
    r = world.api.post(f"/jobs/{job['id']}/complete", json={"properties": {"nodes": 7}})
    # Core wraps the agent's validation error as invalid input: a plain 400 (no per-field list)
    assert r.status_code == 400 and "nodes: property cannot be updated in state 'New'" in r.json()["error"]
    assert world.emu.get_job(job["id"])["status"] == "Processing"  # nothing was applied
    r = world.api.post(f"/jobs/{job['id']}/complete", json={"properties": {"endpoint": "https://t:6443"}})
    assert r.status_code == 204
    assert world.emu.get_service(svc["id"])["properties"]["endpoint"] == "https://t:6443"


def test_immutable_agent_property_cannot_change(world):
    svc = world.created(properties={"clusterUid": "u-1"})
    job = world.emu.request_action(svc["id"], "start")
    world.claim(job["id"])
    r = world.api.post(f"/jobs/{job['id']}/complete", json={"properties": {"clusterUid": "u-2"}})
    assert r.status_code == 400 and "immutable" in r.text


def test_agent_instance_ids_are_unique(world):
    world.created("a", agentInstanceId="same")
    svc = world.service("b")
    job = next(j for j in world.pending() if j["serviceId"] == svc["id"])
    world.claim(job["id"])
    # Core does not map the unique index clash: 500, and nothing is applied
    assert world.api.post(f"/jobs/{job['id']}/complete", json={"agentInstanceId": "same"}).status_code == 500
    assert world.emu.get_job(job["id"])["status"] == "Processing"


# --------------------------------------------------------------------------- secrets
def test_secrets_resolve_and_end_with_their_job_or_service(world):
    world.emu.put_secret("pve-token", {"id": "root@pam!agent", "secret": "abc"})
    assert world.api.get("/vault/secrets/pve-token").json() == {"value": {"id": "root@pam!agent", "secret": "abc"}}
    assert world.api.get("/vault/secrets/nope").status_code == 404
    svc = world.service(adminPassword="pw", apiKey="key")
    job = world.pending()[0]
    eph = job["params"]["adminPassword"].removeprefix("vault://")
    per = job["params"]["apiKey"].removeprefix("vault://")
    assert world.api.get(f"/vault/secrets/{eph}").json() == {"value": "pw"}
    world.run(job)
    assert world.api.get(f"/vault/secrets/{eph}").status_code == 404  # ephemeral: gone after the job
    assert world.api.get(f"/vault/secrets/{per}").json() == {"value": "key"}
    world.run(world.emu.request_action(svc["id"], "delete"))
    assert world.api.get(f"/vault/secrets/{per}").status_code == 404  # persistent: gone with the service


# --------------------------------------------------------------------------- metrics and services
def test_metric_entries_need_a_known_type_and_an_own_service(world):
    world.emu.create_metric_type("tenant.nodes.ready")
    svc = world.created(agentInstanceId="tenant-1")
    entry = {"agentInstanceId": "tenant-1", "resourceId": "nodes", "value": 3, "typeName": "tenant.nodes.ready"}
    r = world.api.post("/metric-entries", json=entry)
    assert r.status_code == 201 and r.json()["serviceId"] == svc["id"]
    by_id = {"serviceId": svc["id"], "resourceId": "nodes", "value": 2.5, "typeName": "tenant.nodes.ready"}
    assert world.api.post("/metric-entries", json=by_id).status_code == 201
    # Core: an unknown metric type or agentInstanceId is a NotFoundError, so 404
    assert world.api.post("/metric-entries", json={**entry, "typeName": "unknown"}).status_code == 404
    assert world.api.post("/metric-entries", json={**entry, "agentInstanceId": "other"}).status_code == 404
    assert [e["value"] for e in world.emu.metric_entries] == [3, 2.5]


def test_services_are_paged_and_limited_to_the_agent(world):
    for i in range(3):
        world.service(f"s{i}")
    other = world.emu.create_agent("agent-2", world.provider["id"], world.agent_type["id"])
    world.emu.create_service("theirs", world.service_type["id"], world.group["id"], other["id"], {"nodes": 1})
    page = world.api.get("/services", params={"page": 2, "pageSize": 2}).json()
    assert page["totalItems"] == 3 and page["totalPages"] == 2 and page["currentPage"] == 2
    assert page["hasPrev"] and not page["hasNext"] and len(page["items"]) == 1
    assert world.admin.get("/services").json()["totalItems"] == 4


def test_job_timeout_fails_old_jobs_but_keeps_the_service_state(world):
    svc = world.service()
    job = world.pending()[0]
    world.claim(job["id"])
    world.clock.advance(301)
    assert world.emu.get_job(job["id"])["status"] == "Processing"  # the maintenance runs every 60 s
    world.clock.advance(60)
    failed = world.emu.get_job(job["id"])
    assert failed["status"] == "Failed" and "maximum processing time" in failed["errorMessage"]
    assert world.emu.get_service(svc["id"])["status"] == "New"
    assert world.api.post(f"/jobs/{job['id']}/complete", json={}).status_code == 400


def test_job_timeout_is_off_by_default(lab_cert):
    clock = FakeClock()
    with FulcrumEmulator(cert=lab_cert, clock=clock) as emu:
        world = _world(emu, clock)
        world.service()
        clock.advance(10 * 3600)
        assert world.emu.jobs[0]["status"] == "Pending"


# --------------------------------------------------------------------------- faults and log
def test_injected_errors_hit_a_bounded_number_of_matching_calls(world):
    world.emu.inject(r"/jobs/pending", status=503, times=2)
    assert [world.api.get("/jobs/pending").status_code for _ in range(3)] == [503, 503, 200]
    assert world.api.get("/agents/me").status_code == 200  # other paths untouched


def test_injected_faults_can_target_a_method(world):
    world.emu.inject(r"/agents/me/status", status=500, method="PUT")
    assert world.api.get("/agents/me").status_code == 200
    assert world.api.put("/agents/me/status", json={"status": "Connected"}).status_code == 500
    assert world.api.put("/agents/me/status", json={"status": "Connected"}).status_code == 200


def test_injected_latency_outlasts_a_short_client_timeout(world):
    world.emu.inject(r"/agents/me$", delay=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        world.api.get("/agents/me", timeout=0.2)
    assert world.api.get("/agents/me").status_code == 200


def test_dropped_connections_and_down_emulator(world):
    world.emu.inject(r"/jobs/pending", drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        world.api.get("/jobs/pending")
    assert world.api.get("/jobs/pending").status_code == 200
    world.emu.set_down(True)
    with pytest.raises(requests.exceptions.ConnectionError):
        world.api.get("/agents/me")
    assert world.admin.get("/services").status_code == 200  # the operator side stays up
    world.emu.set_down(False)
    assert world.api.get("/agents/me").status_code == 200
    dropped = [rec for rec in world.emu.request_log if rec.status is None]
    assert [(rec.method, rec.path) for rec in dropped] == [
        ("GET", "/api/v1/jobs/pending"),
        ("GET", "/api/v1/agents/me"),
    ]


def test_request_log_keeps_agent_calls_without_tokens_or_secret_values(world):
    world.emu.put_secret("pve-token", "TOPSECRETVALUE")
    world.api.put("/agents/me/status", json={"status": "Connected"})
    world.api.get("/vault/secrets/pve-token")
    world.admin.get("/services")  # admin calls are not logged
    log = world.emu.request_log
    assert [(r.method, r.path, r.status) for r in log] == [
        ("PUT", "/api/v1/agents/me/status", 200),
        ("GET", "/api/v1/vault/secrets/pve-token", 200),
    ]
    assert log[0].body == {"status": "Connected"} and log[0].response["status"] == "Connected"
    assert world.token not in repr(log) and "TOPSECRETVALUE" not in repr(log)


def test_bad_requests_are_answered_not_crashed(world):
    r = world.api.session.post(
        world.emu.url + "/jobs/00000000-0000-4000-8000-000000000000/fail",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 400
    assert world.api.get("/nothing-here").status_code == 404
    assert world.api.get("/jobs/not-a-uuid").status_code == 400  # middlewares.ID
    assert world.api.call("DELETE", "/agents/me").status_code == 405
