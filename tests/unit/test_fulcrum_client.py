"""The Fulcrum client through real HTTP on loopback: the lab's Fulcrum emulator for the agent conversation,
and a scripted stdlib server where a test needs exact answers (statuses, malformed jobs, paging).
Backoff delays are recorded through an injected `sleep`, never measured."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agentkube.adapters import fulcrum_client
from agentkube.adapters.fulcrum_client import (
    FulcrumClient,
    FulcrumError,
    FulcrumUnavailable,
    JobForbidden,
    MalformedAnswer,
    TokenRejected,
)
from agentkube.core.jobs import JobResult
from agentkube_lab.certs import LabCA
from agentkube_lab.fulcrum_catalog import Catalog, register_catalog
from agentkube_lab.fulcrum_emulator import FulcrumEmulator

TOKEN = "agent-token-8f3c2a9d71"
SPEC = {"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "default", "count": 1}]}


# -- a scripted server ------------------------------------------------------------------------------------
class RawBody:
    """A scripted answer sent as these bytes, not as JSON."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class Stub:
    """Answers each (method, path) with its scripted responses in order; the last one repeats.
    Unscripted paths answer 404. Every request is recorded with its headers and query."""

    def __init__(self) -> None:
        self.script: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with stub._lock:
                    stub.requests.append({
                        "method": self.command, "path": url.path, "query": parse_qs(url.query),
                        "headers": dict(self.headers), "body": json.loads(raw) if raw else None,
                    })
                    answers = stub.script.get((self.command, url.path))
                    status, body = (answers.pop(0) if len(answers) > 1 else answers[0]) if answers else (404, {})
                payload = b"" if body is None else body.data if isinstance(body, RawBody) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"

    def answer(self, method: str, path: str, *responses: tuple[int, Any]) -> None:
        self.script[(method, "/api/v1" + path)] = list(responses)

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == "/api/v1" + path]


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    thread = threading.Thread(target=s.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield s
    s.server.shutdown()
    s.server.server_close()


class Sleeps(list):
    """An injected sleep that records the delays instead of sleeping."""

    def __call__(self, delay: float) -> None:
        self.append(delay)


def client_for(url: str, sleeps: Sleeps | None = None, **kw: Any) -> FulcrumClient:
    kw.setdefault("retry_attempts", 4)
    return FulcrumClient(url, TOKEN, sleep=sleeps if sleeps is not None else Sleeps(), timeout_s=5, **kw)


def job_json(job_id: str = "job-1", action: str = "create", group: str = "group-1") -> dict[str, Any]:
    return {"id": job_id, "action": action, "priority": 1, "params": SPEC, "serviceId": "svc-1",
            "service": {"id": "svc-1", "name": "Cluster One", "groupId": group, "status": "New",
                        "properties": SPEC}}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"


# -- retries and backoff ----------------------------------------------------------------------------------
def test_5xx_is_retried_until_an_answer(stub):
    stub.answer("GET", "/agents/me", (503, {"error": "busy"}), (502, {}), (200, {"id": "a1"}))
    sleeps = Sleeps()
    assert client_for(stub.url, sleeps).get_me() == {"id": "a1"}
    assert len(stub.calls("GET", "/agents/me")) == 3
    assert len(sleeps) == 2


def test_5xx_that_outlasts_the_retries_raises_unavailable_with_the_last_error(stub):
    stub.answer("GET", "/agents/me", (500, {"error": "database is down"}))
    sleeps = Sleeps()
    with pytest.raises(FulcrumUnavailable, match=r"after 4 attempt\(s\): 500: database is down") as e:
        client_for(stub.url, sleeps).get_me()
    assert len(stub.calls("GET", "/agents/me")) == 4
    assert len(sleeps) == 3  # no sleep after the last attempt
    assert isinstance(e.value, FulcrumError)


def test_connection_errors_are_retried_then_raise_unavailable():
    sleeps = Sleeps()
    with pytest.raises(FulcrumUnavailable, match="ConnectionError"):
        client_for(closed_port_url(), sleeps, retry_attempts=3).get_me()
    assert len(sleeps) == 2


def test_a_dropped_connection_is_retried(tmp_path):
    with FulcrumEmulator() as emu:
        catalog = register_catalog(emu)
        emu.inject(r"/agents/me$", drop=True, times=2, method="GET")
        sleeps = Sleeps()
        client = FulcrumClient(emu.url, catalog.agent_token, sleep=sleeps, retry_attempts=4, timeout_s=5)
        assert client.get_me()["id"] == catalog.agent_id
    assert len(sleeps) == 2


def test_backoff_grows_exponentially_up_to_the_cap(stub, monkeypatch):
    # the upper bound of each full-jitter draw, to see growth and cap exactly
    bounds: list[tuple[float, float]] = []

    def top(a: float, b: float) -> float:
        bounds.append((a, b))
        return b

    monkeypatch.setattr(fulcrum_client.random, "uniform", top)
    stub.answer("GET", "/agents/me", (503, {}))
    sleeps = Sleeps()
    with pytest.raises(FulcrumUnavailable):
        client_for(stub.url, sleeps, retry_attempts=8, retry_base_s=0.5, retry_max_s=5.0).get_me()
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert all(low == 0 for low, _ in bounds)  # full jitter: any delay from zero up


def test_backoff_draws_are_jittered_within_their_window():
    client = FulcrumClient("http://127.0.0.1:1", TOKEN, retry_base_s=1.0, retry_max_s=8.0)
    for attempt in range(10):
        draws = {client.backoff(attempt) for _ in range(50)}
        window = min(8.0, 2.0**attempt)
        assert all(0 <= d <= window for d in draws)
        assert len(draws) > 1, "delays are not jittered"


def test_a_set_stop_event_ends_the_retries(stub):
    stub.answer("GET", "/jobs/pending", (503, {}))
    stop = threading.Event()
    stop.set()
    sleeps = Sleeps()
    with pytest.raises(FulcrumUnavailable, match=r"after 5 attempt"):
        client_for(stub.url, sleeps, retry_attempts=5, stop_event=stop).pending_jobs()
    assert len(stub.calls("GET", "/jobs/pending")) == 1
    assert sleeps == []


def test_attempts_override_and_retry_off(stub):
    stub.answer("PUT", "/agents/me/status", (503, {}))
    client = client_for(stub.url, retry_attempts=6)
    with pytest.raises(FulcrumUnavailable):
        client.set_status("Connected", attempts=1)
    assert len(stub.calls("PUT", "/agents/me/status")) == 1
    with pytest.raises(FulcrumUnavailable):
        client.request("PUT", "/agents/me/status", json={"status": "Connected"}, retry=False)
    assert len(stub.requests) == 2


# -- token rejection and other 4xx ------------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_raise_token_rejected_without_retry(stub, status):
    stub.answer("GET", "/jobs/pending", (status, {"error": "invalid or expired token"}))
    sleeps = Sleeps()
    with pytest.raises(TokenRejected, match="rejected the agent token") as e:
        client_for(stub.url, sleeps).pending_jobs()
    assert e.value.status == status
    assert f"{status} on GET /jobs/pending" in str(e.value)
    assert len(stub.requests) == 1
    assert sleeps == []


def test_the_emulator_rejects_a_wrong_token():
    with FulcrumEmulator() as emu:
        register_catalog(emu)
        with pytest.raises(TokenRejected, match="rejected the agent token"):
            client_for(emu.url).get_me()


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_4xx_raise_fulcrum_error_without_retry(stub, status):
    stub.answer("PUT", "/agents/me/status", (status, {"error": "field 'status' must be valid"}))
    sleeps = Sleeps()
    with pytest.raises(FulcrumError) as e:
        client_for(stub.url, sleeps).set_status("Bogus")
    assert type(e.value) is FulcrumError
    assert e.value.status == status
    assert f"PUT /agents/me/status -> {status}: field 'status' must be valid" in str(e.value)
    assert len(stub.requests) == 1
    assert sleeps == []


# -- claim and report -------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 204])
def test_claim_returns_true_when_core_accepts(stub, status):
    stub.answer("POST", "/jobs/job-1/claim", (status, None))
    assert client_for(stub.url).claim("job-1", "agent-1") is True


@pytest.mark.parametrize("status", [400, 404, 409])
def test_a_refused_claim_is_settled_by_reading_the_job_back(stub, status):
    """Core answers 400 to a claim once the job is not Pending: someone else's claim, or our own earlier attempt
    whose answer was lost. The job as Core has it tells which."""
    stub.answer("POST", "/jobs/job-1/claim", (status, {"error": "cannot claim a job not in pending status"}))
    stub.answer("GET", "/jobs/job-1", (200, {"id": "job-1", "status": "Processing", "agentId": "agent-2"}),
                (200, {"id": "job-1", "status": "Processing", "agentId": "agent-1"}))
    client = client_for(stub.url)
    assert client.claim("job-1", "agent-1") is False
    assert client.claim("job-1", "agent-1") is True
    assert [r["method"] for r in stub.requests] == ["POST", "GET", "POST", "GET"]


def test_a_claim_that_outlasted_its_retries_is_ours_when_core_says_so(stub):
    stub.answer("POST", "/jobs/job-1/claim", (503, {}))
    stub.answer("GET", "/jobs/job-1", (200, {"id": "job-1", "status": "Processing", "agentId": "agent-1"}))
    assert client_for(stub.url).claim("job-1", "agent-1") is True


def test_claim_raises_on_token_rejection_a_gone_job_and_outage(stub):
    stub.answer("GET", "/agents/me", (403, {}), (200, {"id": "agent-1"}))
    stub.answer("POST", "/jobs/a/claim", (403, {}))
    stub.answer("POST", "/jobs/b/claim", (500, {}))
    stub.answer("GET", "/jobs/b", (500, {}))
    stub.answer("POST", "/jobs/c/claim", (422, {}))
    client = client_for(stub.url)
    with pytest.raises(TokenRejected):  # GET /agents/me refused too: the token
        client.claim("a", "agent-1")
    with pytest.raises(JobForbidden):  # the agent is fine: the job is unknown or foreign
        client.claim("a", "agent-1")
    with pytest.raises(FulcrumUnavailable):
        client.claim("b", "agent-1")
    with pytest.raises(FulcrumError):
        client.claim("c", "agent-1")


def test_a_403_outside_the_job_endpoints_is_the_token(stub):
    stub.answer("GET", "/agents/me", (200, {"id": "agent-1"}))
    stub.answer("GET", "/jobs/pending", (403, {}))
    with pytest.raises(TokenRejected):
        client_for(stub.url).pending_jobs()


def test_report_posts_complete_with_the_payload_and_fail_with_the_message(stub):
    stub.answer("POST", "/jobs/j1/complete", (200, {}))
    stub.answer("POST", "/jobs/j2/fail", (204, None))
    client = client_for(stub.url)
    client.report(JobResult(job_id="j1", outcome="completed", agent_instance_id="ns/t-1",
                            agent_instance_data={"endpoint": "https://10.0.0.5:6443"}, properties={}))
    client.report(JobResult(job_id="j2", outcome="failed", error_message="task 'clone': no space left"))
    assert stub.calls("POST", "/jobs/j1/complete")[0]["body"] == {
        "agentInstanceId": "ns/t-1", "agentInstanceData": {"endpoint": "https://10.0.0.5:6443"}}
    assert stub.calls("POST", "/jobs/j2/fail")[0]["body"] == {"errorMessage": "task 'clone': no space left"}


@pytest.mark.parametrize("status", [400, 404, 409])
def test_report_treats_a_refusal_as_delivered(stub, status, caplog):
    stub.answer("POST", "/jobs/j1/fail", (status, {"error": "job is not processing"}))
    client_for(stub.url).report(JobResult(job_id="j1", outcome="failed", error_message="x"))
    assert len(stub.requests) == 1
    assert any("no longer waits" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("status", "error"), [(401, TokenRejected), (403, JobForbidden), (500, FulcrumUnavailable),
                                               (422, FulcrumError)])
def test_report_raises_when_the_result_was_not_taken(stub, status, error):
    stub.answer("GET", "/agents/me", (200, {"id": "agent-1"}))
    stub.answer("POST", "/jobs/j1/complete", (status, {}))
    with pytest.raises(error):
        client_for(stub.url).report(JobResult(job_id="j1", outcome="completed"))


# -- jobs, secrets, services ------------------------------------------------------------------------------
def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def test_pending_jobs_skips_malformed_jobs_and_logs_them(stub, caplog):
    no_action = {k: v for k, v in job_json(uid(2)).items() if k != "action"}
    no_service = {"id": uid(3), "action": "start"}
    bad_priority = {**job_json(uid(4)), "priority": "high"}
    service_not_object = {**job_json(uid(6)), "service": "svc-1"}
    stub.answer("GET", "/jobs/pending", (200, [job_json(uid(1)), no_action, "junk", no_service, bad_priority,
                                               service_not_object, job_json(uid(5), "delete", "group-2")]))
    with caplog.at_level(logging.ERROR, logger="agentkube.adapters.fulcrum_client"):
        jobs = client_for(stub.url).pending_jobs(limit=7)
    assert [(j.id, j.action, j.service.group_id) for j in jobs] == [
        (uid(1), "create", "group-1"), (uid(5), "delete", "group-2")]
    assert jobs[0].params == SPEC
    assert stub.requests[0]["query"] == {"limit": ["7"]}
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 5
    assert any(uid(2) in m for m in skipped)


@pytest.mark.parametrize("bad_id", ["../../etc", "job-1", "a/b", uid(1) + "\n", 7, None, uid(1).replace("0", "g")])
def test_a_job_whose_id_is_not_a_uuid_is_skipped_never_claimed(stub, caplog, bad_id):
    stub.answer("GET", "/jobs/pending", (200, [{**job_json(uid(1)), "id": bad_id}, job_json(uid(9))]))
    with caplog.at_level(logging.ERROR, logger="agentkube.adapters.fulcrum_client"):
        jobs = client_for(stub.url).pending_jobs()
    assert [j.id for j in jobs] == [uid(9)]
    assert any("not a UUID" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("body", [b"<html>502</html>", b"[" * 100_000, b"[" * 70 + b"]" * 70, b"\xff\xfe"])
def test_a_malformed_answer_is_a_malformed_answer_error(stub, body):
    stub.answer("GET", "/jobs/pending", (200, RawBody(body)))
    with pytest.raises(MalformedAnswer):
        client_for(stub.url).pending_jobs()


def test_job_ids_are_quoted_as_one_url_segment(stub):
    stub.answer("POST", "/jobs/a%2F..%2Fb/claim", (204, None))
    assert client_for(stub.url).claim("a/../b", "agent-1") is True
    assert stub.requests[-1]["path"].endswith("/jobs/a%2F..%2Fb/claim")


def test_pending_jobs_refuses_a_non_array(stub):
    stub.answer("GET", "/jobs/pending", (200, {"items": []}))
    with pytest.raises(FulcrumError, match="did not return a JSON array"):
        client_for(stub.url).pending_jobs()


def test_resolve_secret_quotes_the_ref_and_returns_the_value(stub):
    stub.answer("GET", "/vault/secrets/pve%2Ftoken", (200, {"value": "s3cret-value"}))
    stub.answer("GET", "/vault/secrets/number", (200, {"value": 42}))
    client = client_for(stub.url)
    assert client.resolve_secret("pve/token") == "s3cret-value"
    with pytest.raises(FulcrumError, match="vault secret 'number' has no string value"):
        client.resolve_secret("number")
    with pytest.raises(FulcrumError) as e:
        client.resolve_secret("missing")
    assert e.value.status == 404


def test_list_services_follows_the_pages(stub):
    stub.answer("GET", "/services",
                (200, {"items": [{"id": "s1"}, {"id": "s2"}], "hasNext": True}),
                (200, {"items": [{"id": "s3"}, {"id": "s4"}], "hasNext": True}),
                (200, {"items": [{"id": "s5"}], "hasNext": False}))
    services = client_for(stub.url).list_services(page_size=2)
    assert [s["id"] for s in services] == ["s1", "s2", "s3", "s4", "s5"]
    assert [r["query"] for r in stub.requests] == [
        {"page": [str(p)], "pageSize": ["2"]} for p in (1, 2, 3)]


def test_list_services_of_an_empty_page(stub):
    stub.answer("GET", "/services", (200, {"items": None, "hasNext": False}))
    assert client_for(stub.url).list_services() == []


def test_post_metric_accepts_201(stub):
    stub.answer("POST", "/metric-entries", (201, {"id": "m1"}))
    client_for(stub.url).post_metric({"typeName": "cpu", "value": 1.0})
    assert stub.requests[0]["body"] == {"typeName": "cpu", "value": 1.0}


# -- the Authorization header ------------------------------------------------------------------------------
def test_the_token_is_sent_as_bearer_and_never_logged(stub, caplog):
    stub.answer("GET", "/agents/me", (503, {"error": "busy"}), (200, {"id": "a1"}))
    stub.answer("POST", "/jobs/j1/claim", (401, {}))
    caplog.set_level(logging.DEBUG)  # urllib3 and requests too
    client = client_for(stub.url)
    client.get_me()
    with pytest.raises(TokenRejected) as e:
        client.claim("j1", "a1")
    assert {r["headers"]["Authorization"] for r in stub.requests} == {f"Bearer {TOKEN}"}
    assert caplog.records, "nothing was logged: the check below would be empty"
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]
    assert TOKEN not in caplog.text
    assert TOKEN not in str(e.value)


def test_last_success_is_set_by_an_answered_call(stub):
    stub.answer("GET", "/agents/me", (200, {"id": "a1"}))
    client = client_for(stub.url.rstrip("/") + "/")
    assert client.base_url == stub.url
    assert client.last_success is None
    client.get_me()
    assert client.last_success is not None


# -- TLS --------------------------------------------------------------------------------------------------
def test_tls_verification_failure_is_not_retried(tmp_path, monkeypatch):
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    with FulcrumEmulator(cert=LabCA(tmp_path).issue("fulcrum")) as emu:
        catalog = register_catalog(emu)
        sleeps = Sleeps()
        client = FulcrumClient(emu.url, catalog.agent_token, sleep=sleeps, retry_attempts=5, timeout_s=5)
        with pytest.raises(FulcrumError, match=r"TLS verification of https://127\.0\.0\.1") as e:
            client.get_me()
        assert not isinstance(e.value, FulcrumUnavailable)
        assert sleeps == []
        assert emu.request_log == []  # the handshake failed before any request
        trusted = FulcrumClient(emu.url, catalog.agent_token, verify=emu.ca_file, sleep=sleeps, timeout_s=5)
        assert trusted.get_me()["id"] == catalog.agent_id


# -- the agent conversation with the emulator -------------------------------------------------------------
@pytest.fixture
def lab() -> Iterator[tuple[FulcrumEmulator, Catalog, FulcrumClient]]:
    with FulcrumEmulator() as emu:
        catalog = register_catalog(emu, groups=2)
        yield emu, catalog, FulcrumClient(emu.url, catalog.agent_token, sleep=Sleeps(), retry_attempts=2,
                                          timeout_s=5)


def test_claim_complete_and_a_late_second_report_with_the_emulator(lab):
    emu, catalog, client = lab
    service = emu.create_service("Cluster One", catalog.service_type_id, catalog.group_ids[0], catalog.agent_id,
                                 SPEC)
    client.set_status("Connected")
    (job,) = client.pending_jobs()
    assert (job.action, job.service.id, job.service.group_id) == ("create", service["id"], catalog.group_ids[0])
    assert job.service.name == "Cluster One"
    assert client.claim(job.id, catalog.agent_id) is True
    assert client.claim(job.id, catalog.agent_id) is True  # no longer Pending, but ours: Core says so
    assert client.pending_jobs() == []
    client.report(JobResult(job_id=job.id, outcome="completed", agent_instance_id="kamaji-tenants/c1",
                            agent_instance_data={"endpoint": "https://10.0.0.5:6443"}))
    assert emu.get_job(job.id)["status"] == "Completed"
    assert emu.get_service(service["id"])["agentInstanceId"] == "kamaji-tenants/c1"
    client.report(JobResult(job_id=job.id, outcome="failed", error_message="late"))  # 400: treated as delivered
    assert emu.get_job(job.id)["status"] == "Completed"


def test_failed_report_with_the_emulator(lab):
    emu, catalog, client = lab
    emu.create_service("Cluster Two", catalog.service_type_id, catalog.group_ids[1], catalog.agent_id, SPEC)
    (job,) = client.pending_jobs()
    assert client.claim(job.id, catalog.agent_id)
    client.report(JobResult.failed(job, "task 'clone VM': storage full"))
    done = emu.get_job(job.id)
    assert done["status"] == "Failed"
    assert done["errorMessage"] == "task 'clone VM': storage full"


def test_list_services_and_resolve_secret_with_the_emulator(lab):
    emu, catalog, client = lab
    ids = {emu.create_service(f"svc {i}", catalog.service_type_id, catalog.group_ids[i % 2], catalog.agent_id,
                              SPEC)["id"] for i in range(5)}
    assert {s["id"] for s in client.list_services(page_size=2)} == ids
    pages = [r.path for r in emu.request_log if r.path.startswith("/api/v1/services")]
    assert len(pages) == 3
    emu.put_secret("pve-token", "pve-secret-value")
    assert client.resolve_secret("pve-token") == "pve-secret-value"
    with pytest.raises(FulcrumError):
        client.resolve_secret("absent")
