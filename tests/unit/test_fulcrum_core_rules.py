"""The Fulcrum emulator follows Fulcrum Core's rules (fulcrumproject/core at 499230a), one test per rule, over
real HTTP with requests: status codes of Core's middleware (403 for unknown or foreign ids), the non-atomic
claim, answers lost after the call took effect, failures without an error transition, the property engine,
schema checks when types are created, paging, Go's JSON decoding, new agents, agents' job listing and the
maintenance schedule."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from agentkube_lab.fulcrum_catalog import register_catalog
from agentkube_lab.fulcrum_emulator import FulcrumEmulator

ADMIN = "admin-secret"
T0 = 1_900_000_000.0

SERVICE_TYPE = {
    "name": "cluster",
    "propertySchema": {
        "properties": {
            "size": {"type": "integer", "required": True, "validators": [{"type": "min", "config": {"value": 1}}]},
            "owner": {"type": "string", "authorizers": [{"type": "actor", "config": {"actors": ["user"]}}]},
            "endpoint": {"type": "string", "authorizers": [{"type": "actor", "config": {"actors": ["agent"]}}]},
            "note": {"type": "string"},  # no actor authorizer: any actor may set it
            "pools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "required": True},
                        "count": {"type": "integer", "default": 2},
                    },
                },
            },
            "net": {"type": "object", "properties": {"cidr": {"type": "string", "default": "10.0.0.0/16"}}},
        }
    },
    "lifecycleSchema": {
        "states": [{"name": n} for n in ("New", "Ready", "Broken", "Gone")],
        "actions": [
            {
                "name": "create",
                "transitions": [
                    {"from": "New", "to": "Ready"},
                    {"from": "New", "to": "Broken", "onError": True, "onErrorRegexp": "^quota"},
                ],
            },
            {"name": "poke", "transitions": [{"from": "Ready", "to": "Ready"}]},
            {"name": "update", "transitions": [{"from": "Ready", "to": "Ready"}]},
            {"name": "delete", "transitions": [{"from": "Ready", "to": "Gone"}]},
        ],
        "initialState": "New",
        "terminalStates": ["Gone"],
    },
}


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {token}"
    return session


@dataclass
class Lab:
    emu: FulcrumEmulator
    clock: FakeClock
    st: dict
    agent: dict
    api: requests.Session  # the agent
    other: requests.Session  # a second agent of the same provider
    other_agent: dict
    admin: requests.Session
    group: dict

    def url(self, path: str) -> str:
        return self.emu.url + path

    def service(self, agent: dict | None = None, **props) -> dict:
        return self.emu.create_service(
            "c", self.st["id"], self.group["id"], (agent or self.agent)["id"], {"size": 1, **props}
        )

    def job_of(self, svc: dict) -> dict:
        return [j for j in self.emu.jobs if j["serviceId"] == svc["id"]][-1]

    def claimed(self, **props) -> tuple[dict, dict]:
        svc = self.service(**props)
        job = self.job_of(svc)
        assert self.api.post(self.url(f"/jobs/{job['id']}/claim"), timeout=5).status_code == 204
        return svc, job


def _lab(emu: FulcrumEmulator, clock: FakeClock) -> Lab:
    provider = emu.create_provider("p")
    consumer = emu.create_participant("c")
    st = emu.create_service_type(copy.deepcopy(SERVICE_TYPE))
    at = emu.create_agent_type("t", [st["id"]])
    agent = emu.create_agent("a1", provider["id"], at["id"])
    other = emu.create_agent("a2", provider["id"], at["id"])
    group = emu.create_service_group("g", consumer["id"])
    return Lab(
        emu,
        clock,
        st,
        agent,
        _session(emu.create_agent_token(agent["id"])),
        _session(emu.create_agent_token(other["id"])),
        other,
        _session(ADMIN),
        group,
    )


@pytest.fixture
def lab() -> Iterator[Lab]:
    clock = FakeClock()
    with FulcrumEmulator(admin_token=ADMIN, clock=clock) as emu:
        yield _lab(emu, clock)


UNKNOWN = "00000000-0000-4000-8000-000000000000"


# --------------------------------------------------------------------------- 403 for unknown or foreign ids
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("POST", "/claim", None), ("POST", "/complete", {}), ("POST", "/fail", {"errorMessage": "x"}), ("GET", "", None)],
)
def test_unknown_or_foreign_job_ids_are_forbidden(lab, method, suffix, body):
    # pkg/middlewares/auth.go AuthzFromID: the loader's error is Forbidden; a foreign job fails the scope check
    svc = lab.service()
    job = lab.job_of(svc)
    for session, job_id in ((lab.api, UNKNOWN), (lab.other, job["id"])):
        r = session.request(method, lab.url(f"/jobs/{job_id}{suffix}"), json=body, timeout=5)
        assert r.status_code == 403, r.text
        assert r.json()["status"] == "Forbidden"
    assert lab.emu.get_job(job["id"])["status"] == "Pending"  # nothing happened to it
    # the token itself is fine
    assert lab.api.get(lab.url("/agents/me"), timeout=5).status_code == 200


def test_a_job_id_that_is_not_a_uuid_is_400(lab):
    # pkg/middlewares/request.go ID runs before the authorization
    assert lab.api.post(lab.url("/jobs/42/claim"), timeout=5).status_code == 400
    assert lab.api.get(lab.url("/jobs/not-a-uuid"), timeout=5).status_code == 400


def test_a_deleted_job_answers_403(lab):
    svc, job = lab.claimed()
    lab.emu.delete_job(job["id"])
    r = lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), json={}, timeout=5)
    assert r.status_code == 403 and "cannot load resource" in r.json()["error"]
    assert lab.emu.get_service(svc["id"])["status"] == "New"


def test_unknown_or_foreign_services_are_forbidden_to_agents(lab):
    mine = lab.service()
    theirs = lab.service(agent=lab.other_agent)
    assert lab.api.get(lab.url(f"/services/{mine['id']}"), timeout=5).status_code == 200
    assert lab.api.get(lab.url(f"/services/{theirs['id']}"), timeout=5).status_code == 403
    assert lab.api.get(lab.url(f"/services/{UNKNOWN}"), timeout=5).status_code == 403


# --------------------------------------------------------------------------- the claim race
def _claim_concurrently(lab: Lab, job_id: str, n: int = 2) -> list[int]:
    barrier = threading.Barrier(n)
    codes: list[int] = []

    def claim() -> None:
        session = _session(lab.api.headers["Authorization"].removeprefix("Bearer "))
        barrier.wait()
        codes.append(session.post(lab.url(f"/jobs/{job_id}/claim"), timeout=10).status_code)

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(codes)


def test_claim_race_lets_two_claimers_of_one_job_both_win(lab):
    # pkg/domain/job.go jobCommander.Claim: get, claim, save, with no lock
    lab.emu.set_claim_race(True, window=0.3)
    job = lab.job_of(lab.service())
    assert _claim_concurrently(lab, job["id"]) == [204, 204]
    assert lab.emu.get_job(job["id"])["status"] == "Processing"
    assert lab.api.post(lab.url(f"/jobs/{job['id']}/claim"), timeout=5).status_code == 400  # read after the save


def test_without_the_claim_race_one_claimer_wins(lab):
    assert not lab.emu.claim_race
    job = lab.job_of(lab.service())
    assert _claim_concurrently(lab, job["id"]) == [204, 400]


def test_claim_race_can_be_switched_on_at_construction():
    with FulcrumEmulator(admin_token=ADMIN, claim_race=True, claim_race_window=0.3) as emu:
        lab = _lab(emu, FakeClock())
        job = lab.job_of(lab.service())
        assert _claim_concurrently(lab, job["id"]) == [204, 204]


# --------------------------------------------------------------------------- answers lost after the call took effect
def test_a_claim_whose_answer_is_lost_took_effect(lab):
    job = lab.job_of(lab.service())
    lab.emu.inject(r"/claim$", drop_after=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        lab.api.post(lab.url(f"/jobs/{job['id']}/claim"), timeout=5)
    seen = lab.api.get(lab.url(f"/jobs/{job['id']}"), timeout=5).json()
    assert seen["status"] == "Processing" and seen["agentId"] == lab.agent["id"]
    r = lab.api.post(lab.url(f"/jobs/{job['id']}/claim"), timeout=5)  # the retry Core refuses
    assert r.status_code == 400 and "cannot claim a job not in pending status" in r.json()["error"]
    lost = [rec for rec in lab.emu.request_log if rec.path.endswith("/claim")]
    assert [(rec.status, rec.handled_status) for rec in lost] == [(None, 204), (400, None)]


def test_a_report_whose_answer_is_lost_took_effect(lab):
    svc, job = lab.claimed()
    lab.emu.inject(r"/complete$", drop_after=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), json={"agentInstanceId": "i-1"}, timeout=5)
    assert lab.emu.get_job(job["id"])["status"] == "Completed"
    assert lab.emu.get_service(svc["id"])["agentInstanceId"] == "i-1"


def test_drop_after_excludes_an_error_status(lab):
    with pytest.raises(ValueError, match="drop_after"):
        lab.emu.inject(r"/claim$", status=500, drop_after=True)


# --------------------------------------------------------------------------- failures and error transitions
def test_fail_with_a_matching_error_transition_moves_the_service(lab):
    svc, job = lab.claimed()
    r = lab.api.post(lab.url(f"/jobs/{job['id']}/fail"), json={"errorMessage": "quota exceeded"}, timeout=5)
    assert r.status_code == 204
    assert lab.emu.get_service(svc["id"])["status"] == "Broken"


def test_fail_without_a_matching_error_transition_is_204_and_keeps_the_service(lab):
    # pkg/domain/job.go Fail: ErrNoLifecycleTransition -> job Failed, service unchanged
    svc, job = lab.claimed()
    r = lab.api.post(lab.url(f"/jobs/{job['id']}/fail"), json={"errorMessage": "kaboom"}, timeout=5)
    assert r.status_code == 204
    failed = lab.emu.get_job(job["id"])
    assert failed["status"] == "Failed" and failed["errorMessage"] == "kaboom" and "completedAt" not in failed
    assert lab.emu.get_service(svc["id"])["status"] == "New"


def test_fail_without_a_message_is_accepted(lab):
    # FailJobReq.ErrorMessage is a plain string: absent means ""
    _, job = lab.claimed()
    assert lab.api.post(lab.url(f"/jobs/{job['id']}/fail"), json={}, timeout=5).status_code == 204
    assert lab.emu.get_job(job["id"])["status"] == "Failed"


def test_complete_and_fail_need_a_body(lab):
    # DecodeBody on an empty body: io.EOF -> 400, before the authorization from the id
    _, job = lab.claimed()
    for path in (f"/jobs/{job['id']}/complete", f"/jobs/{job['id']}/fail", f"/jobs/{UNKNOWN}/fail"):
        r = lab.api.post(lab.url(path), timeout=5)
        assert r.status_code == 400 and r.json()["error"] == "EOF"
    assert lab.emu.get_job(job["id"])["status"] == "Processing"


# --------------------------------------------------------------------------- the property engine
def test_unknown_properties_are_dropped_at_every_depth(lab):
    svc = lab.service(bogus=1, net={"cidr": "10.1.0.0/16", "extra": True}, pools=[{"name": "a", "x": 1}])
    assert svc["properties"] == {
        "size": 1,
        "net": {"cidr": "10.1.0.0/16"},
        "pools": [{"name": "a", "count": 2}],  # and the default inside the array item
    }
    job = lab.job_of(svc)
    assert "bogus" not in job["params"]


def test_unknown_properties_from_the_agent_are_dropped_not_refused(lab):
    svc, job = lab.claimed()
    r = lab.api.post(
        lab.url(f"/jobs/{job['id']}/complete"), json={"properties": {"endpoint": "e", "whatever": 1}}, timeout=5
    )
    assert r.status_code == 204, r.text
    props = lab.emu.get_service(svc["id"])["properties"]
    assert props["endpoint"] == "e" and "whatever" not in props


def test_authorizers_are_per_actor(lab):
    # pkg/domain/service_property_schema_authorizers.go: a property without an actor authorizer is open to all
    svc, job = lab.claimed()
    r = lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), json={"properties": {"owner": "me"}}, timeout=5)
    assert r.status_code == 400
    assert "owner: property can only be set by: [user] (current actor: agent)" in r.json()["error"]
    r = lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), json={"properties": {"note": "by agent"}}, timeout=5)
    assert r.status_code == 204
    assert lab.emu.get_service(svc["id"])["properties"]["note"] == "by agent"
    r = lab.admin.patch(lab.url(f"/services/{svc['id']}"), json={"properties": {"endpoint": "x"}}, timeout=5)
    assert r.status_code == 400 and r.json()["status"] == "Validation failed"
    assert r.json()["errors"][0]["path"] == "endpoint"


def test_required_properties_and_nested_errors_are_reported_like_core(lab):
    r = lab.admin.post(
        lab.url("/services"),
        json={"name": "x", "serviceTypeId": lab.st["id"], "groupId": lab.group["id"], "agentId": lab.agent["id"],
              "properties": {"pools": [{"count": 1}]}},
        timeout=5,
    )
    assert r.status_code == 400
    errors = {e["path"]: e["message"] for e in r.json()["errors"]}
    assert errors["size"] == "required property is missing"
    assert errors["pools"] == "validation failed: required property is missing"  # the nested error, folded


def test_update_merges_objects_and_keeps_what_is_not_given(lab):
    svc, job = lab.claimed(net={"cidr": "10.9.0.0/16"})
    lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), json={}, timeout=5)
    update = lab.emu.request_action(svc["id"], "update", {"size": 3, "unknown": 1})
    assert update["params"] == {"size": 3, "net": {"cidr": "10.9.0.0/16"}}


# --------------------------------------------------------------------------- schemas checked when types are created
def test_the_shipped_service_and_agent_types_pass_cores_checks():
    with FulcrumEmulator(admin_token=ADMIN) as emu:
        catalog = register_catalog(emu)
        assert emu.state.service_types[catalog.service_type_id]["name"] == "kubernetes-cluster"
        assert emu.state.agent_types[catalog.agent_type_id]["configurationSchema"]["properties"]


def _with_property(definition: dict) -> dict:
    body = copy.deepcopy(SERVICE_TYPE)
    body["name"] = "t-" + json.dumps(definition)[:40]
    body["propertySchema"]["properties"]["p"] = definition
    return body


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"type": "text"}, "p: invalid type 'text'"),
        ({"type": "array", "items": {"type": "string", "secret": {"type": "persistent"}}},
         "p: array items cannot be secret"),
        ({"type": "object", "secret": {"type": "persistent"}}, "p: only primitive types can be secret"),
        ({"type": "integer", "default": "two"}, "p: default value type mismatch: p: expected integer, got string"),
        ({"type": "string", "validators": [{"type": "regex", "config": {}}]}, "p: unknown validator 'regex'"),
        ({"type": "string", "validators": [{"type": "pattern", "config": {"pattern": "^(?=a)"}}]},
         "p: invalid regex pattern"),
        ({"type": "string", "validators": [{"type": "minLength", "config": {"value": -1}}]},
         "p: minLength value must be non-negative"),
        ({"type": "string", "authorizers": [{"type": "actor", "config": {"actors": ["admin"]}}]},
         "contains invalid actor 'admin'"),
        ({"type": "string", "secret": {"type": "forever"}}, "p: secret type must be 'persistent' or 'ephemeral'"),
        ({"type": "object", "properties": {"q": {"type": "blob"}}}, "p.q: invalid type 'blob'"),
    ],
)
def test_service_type_property_schemas_are_checked_like_core(lab, definition, message):
    r = lab.admin.post(lab.url("/service-types"), json=_with_property(definition), timeout=5)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert r.json()["error"].startswith("invalid input: invalid property schema: ")


def test_service_and_agent_types_need_properties_and_a_lifecycle(lab):
    empty = {**copy.deepcopy(SERVICE_TYPE), "name": "empty", "propertySchema": {"properties": {}}}
    r = lab.admin.post(lab.url("/service-types"), json=empty, timeout=5)
    assert r.status_code == 400 and "schema must have at least one property defined" in r.json()["error"]
    no_actions = copy.deepcopy(SERVICE_TYPE)
    no_actions.update(name="no-actions")
    no_actions["lifecycleSchema"]["actions"] = []
    r = lab.admin.post(lab.url("/service-types"), json=no_actions, timeout=5)
    assert r.status_code == 400 and "lifecycle must have at least one action" in r.json()["error"]
    agent_type = {"name": "at", "serviceTypeIds": [lab.st["id"]], "configurationSchema": {"properties": {
        "x": {"type": "string", "authorizers": [{"type": "actor", "config": {"actors": ["user"]}}]}}}}
    r = lab.admin.post(lab.url("/agent-types"), json=agent_type, timeout=5)  # no authorizers for agent config
    assert r.status_code == 400 and "configurationSchema: x: unknown authorizer 'actor'" in r.json()["error"]


def test_a_duplicate_service_type_name_is_a_500(lab):
    r = lab.admin.post(lab.url("/service-types"), json=copy.deepcopy(SERVICE_TYPE), timeout=5)
    assert r.status_code == 500  # a unique index clash Core does not map


# --------------------------------------------------------------------------- paging and Go's JSON decoding
@pytest.mark.parametrize(("query", "status"), [
    ("pageSize=100", 200), ("pageSize=101", 400), ("page=0", 400), ("pageSize=ten", 400), ("page=1.5", 400),
])
def test_page_parameters_are_strict(lab, query, status):
    # pkg/api/pagination.go ParsePageRequest (maxPageSize 100)
    for path in ("/services", "/jobs"):
        assert lab.api.get(lab.url(f"{path}?{query}"), timeout=5).status_code == status


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_and_infinity_are_not_json(lab, constant):
    lab.emu.create_metric_type("m")
    svc, job = lab.claimed()
    headers = {"Content-Type": "application/json"}
    body = f'{{"serviceId": "{svc["id"]}", "resourceId": "r", "typeName": "m", "value": {constant}}}'
    assert lab.api.post(lab.url("/metric-entries"), data=body, headers=headers, timeout=5).status_code == 400
    body = f'{{"properties": {{"note": "x", "size": {constant}}}}}'
    r = lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), data=body, headers=headers, timeout=5)
    assert r.status_code == 400
    assert lab.emu.metric_entries == [] and lab.emu.get_job(job["id"])["status"] == "Processing"


def test_json_after_the_first_value_is_not_read(lab):
    # json.Decoder.Decode reads one value
    r = lab.api.put(lab.url("/agents/me/status"), data=b'{"status": "Connected"} trailing',
                    headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "Connected"


# --------------------------------------------------------------------------- agents and their jobs
def test_new_agents_start_disconnected(lab):
    # pkg/domain/agent.go NewAgent
    assert lab.api.get(lab.url("/agents/me"), timeout=5).json()["status"] == "Disconnected"
    assert lab.emu.get_agent(lab.other_agent["id"])["status"] == "Disconnected"


def test_agents_list_their_own_jobs_with_core_filters(lab):
    _, processing = lab.claimed()
    pending = lab.job_of(lab.service())
    lab.service(agent=lab.other_agent)
    everything = lab.api.get(lab.url("/jobs"), timeout=5).json()
    assert everything["totalItems"] == 2 and {j["agentId"] for j in everything["items"]} == {lab.agent["id"]}
    page = lab.api.get(lab.url("/jobs"), params={"status": "Processing"}, timeout=5).json()
    assert [j["id"] for j in page["items"]] == [processing["id"]]
    assert page["items"][0]["service"]["id"] == processing["serviceId"]
    both = lab.api.get(lab.url("/jobs"), params=[("status", "Processing"), ("status", "Pending")], timeout=5)
    assert {j["id"] for j in both.json()["items"]} == {processing["id"], pending["id"]}
    by_service = lab.api.get(lab.url("/jobs"), params={"serviceId": pending["serviceId"], "action": "create"},
                             timeout=5).json()
    assert [j["id"] for j in by_service["items"]] == [pending["id"]]
    assert lab.admin.get(lab.url("/jobs"), timeout=5).json()["totalItems"] == 3


def test_job_list_filters_core_does_not_know_are_500(lab):
    # MapFilterApplier / ParseJobStatus errors are not domain errors: ErrInternal
    assert lab.api.get(lab.url("/jobs?limit=5"), timeout=5).status_code == 500
    assert lab.api.get(lab.url("/jobs?status=Running"), timeout=5).status_code == 500


def test_agents_read_their_own_jobs(lab):
    svc = lab.service()
    job = lab.job_of(svc)
    got = lab.api.get(lab.url(f"/jobs/{job['id']}"), timeout=5)
    assert got.status_code == 200 and got.json()["service"]["id"] == svc["id"] and got.json()["agent"]["id"]
    assert lab.other.get(lab.url(f"/jobs/{job['id']}"), timeout=5).status_code == 403


# --------------------------------------------------------------------------- maintenance on Core's schedule
def test_job_maintenance_runs_at_its_interval_not_at_every_call():
    clock = FakeClock()
    with FulcrumEmulator(admin_token=ADMIN, clock=clock, job_timeout=300) as emu:  # Core's 24 h interval
        lab = _lab(emu, clock)
        job = lab.job_of(lab.service())
        clock.now += 3600
        assert lab.api.get(lab.url(f"/jobs/{job['id']}"), timeout=5).json()["status"] == "Pending"
        clock.now = T0 + 24 * 3600  # (the agent's token has just expired: the lab looks itself)
        failed = emu.get_job(job["id"])
        assert failed["status"] == "Failed" and "maximum processing time" in failed["errorMessage"]
        assert [task for task, _ in emu.maintenance_runs] == ["job"]


def test_old_finished_jobs_are_deleted_by_the_retention():
    clock = FakeClock()
    with FulcrumEmulator(admin_token=ADMIN, clock=clock, job_timeout=300, job_maintenance_interval=3600,
                         job_retention=7200) as emu:
        lab = _lab(emu, clock)
        _, job = lab.claimed()
        assert lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), json={}, timeout=5).status_code == 204
        clock.now += 3600
        assert lab.api.get(lab.url(f"/jobs/{job['id']}"), timeout=5).status_code == 200
        clock.now += 2 * 3600
        assert lab.api.get(lab.url(f"/jobs/{job['id']}"), timeout=5).status_code == 403  # deleted


def test_agent_maintenance_runs_every_health_timeout():
    clock = FakeClock()
    with FulcrumEmulator(admin_token=ADMIN, clock=clock, agent_health_timeout=30) as emu:
        lab = _lab(emu, clock)
        lab.api.put(lab.url("/agents/me/status"), json={"status": "Connected"}, timeout=5)
        clock.now += 31  # silent for longer than the timeout, but the run at 30 found it fresh
        assert emu.get_agent(lab.agent["id"])["status"] == "Connected"
        clock.now += 30
        assert emu.get_agent(lab.agent["id"])["status"] == "Disconnected"


def test_maintenance_runs_without_any_call_in_real_time():
    with FulcrumEmulator(admin_token=ADMIN, job_timeout=0.05, job_maintenance_interval=0.1,
                         maintenance_poll=0.02) as emu:
        lab = _lab(emu, FakeClock())
        job = lab.job_of(lab.service())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with emu.state.lock:  # read the state itself: no call, no tick
                if emu.state.jobs[job["id"]].status == "Failed":
                    break
            time.sleep(0.02)
        with emu.state.lock:
            assert emu.state.jobs[job["id"]].status == "Failed"


def test_run_maintenance_still_applies_everything_now():
    clock = FakeClock()
    with FulcrumEmulator(admin_token=ADMIN, clock=clock, job_timeout=300) as emu:
        lab = _lab(emu, clock)
        job = lab.job_of(lab.service())
        clock.now += 301
        emu.run_maintenance()
        assert emu.state.jobs[job["id"]].status == "Failed"


def test_a_generic_update_action_ignores_its_body(lab):
    # pkg/api/handlers_service.go GenericAction: DoAction with the action name only, so a job without params
    svc, job = lab.claimed()
    lab.api.post(lab.url(f"/jobs/{job['id']}/complete"), json={}, timeout=5)
    r = lab.admin.post(lab.url(f"/services/{svc['id']}/update"), json={"properties": {"size": 5}}, timeout=5)
    assert r.status_code == 200 and r.json()["properties"]["size"] == 1
    update = lab.job_of(svc)
    assert update["action"] == "update" and "params" not in update


def test_metric_entries_follow_cores_handler(lab):
    # pkg/api/handlers_metric_entry.go Create: by serviceId any service (the entry takes its agent); by
    # agentInstanceId the agent's own; unknown service or metric type -> 404
    lab.emu.create_metric_type("m")
    theirs = lab.service(agent=lab.other_agent)
    r = lab.api.post(lab.url("/metric-entries"), json={"serviceId": theirs["id"], "resourceId": "r", "typeName": "m",
                                                        "value": 1}, timeout=5)
    assert r.status_code == 201 and r.json()["agentId"] == lab.other_agent["id"]
    for body in ({"agentInstanceId": "nope", "resourceId": "r", "typeName": "m", "value": 1},
                 {"serviceId": theirs["id"], "resourceId": "r", "typeName": "unknown", "value": 1}):
        assert lab.api.post(lab.url("/metric-entries"), json=body, timeout=5).status_code == 404
    assert lab.api.post(lab.url("/metric-entries"), json={"resourceId": "r"}, timeout=5).status_code == 400
