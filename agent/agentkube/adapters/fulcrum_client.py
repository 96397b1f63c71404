"""Fulcrum Core HTTP client for the agent endpoints (../shared/contracts/fulcrum). Knows HTTP and the
contract, nothing about Ansible. Retries connection errors and 5xx with exponential backoff and jitter.
401, and 403 outside the job endpoints, raise TokenRejected, which stops the agent. On a job endpoint Core answers
403 for a job it does not know or that is not this agent's (`AuthzFromID`, pkg/middlewares/auth.go, turns the
loader's error into Forbidden): there a 403 is JobForbidden while the agent's own identity (GET /agents/me) still
works."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import requests

from agentkube.core.job_vars import is_core_id
from agentkube.core.jobs import Job, JobResult

log = logging.getLogger(__name__)

REPORT_ATTEMPTS = 3  # per delivery round; the journal keeps each result's own backoff between rounds
MAX_ANSWER_DEPTH = 64  # deeper JSON from Fulcrum is refused (no Fulcrum document nests like that)


class FulcrumError(Exception):
    """Fulcrum answered with an unexpected status (after retries for 5xx)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TokenRejected(FulcrumError):
    """401/403: the agent token is missing, unknown or expired. The agent cannot work."""


class JobForbidden(FulcrumError):
    """403 on a job endpoint while GET /agents/me still works: the job is gone (deleted) or not this agent's."""


class FulcrumUnavailable(FulcrumError):
    """Connection errors or 5xx that outlasted the retries; `status` is the last 5xx, None when the last attempt
    got no answer at all."""


class MalformedAnswer(FulcrumError):
    """Fulcrum answered 2xx with something that is not the JSON the contract promises."""


def decode(resp: requests.Response, what: str) -> Any:
    """The answer's JSON; MalformedAnswer when it is not JSON or nests deeper than MAX_ANSWER_DEPTH."""
    try:
        data = resp.json()
    except (ValueError, RecursionError) as e:
        raise MalformedAnswer(f"{what}: the answer is not JSON ({type(e).__name__})") from None
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_ANSWER_DEPTH:
            raise MalformedAnswer(f"{what}: the answer nests deeper than {MAX_ANSWER_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return data


def segment(value: str) -> str:
    """One URL path segment: everything quoted, '/' included."""
    return quote(str(value), safe="")


class FulcrumClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        verify: bool | str = True,
        timeout_s: float = 30.0,
        retry_attempts: int = 8,
        retry_base_s: float = 0.5,
        retry_max_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        stop_event: threading.Event | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.verify = verify
        self.timeout_s = timeout_s
        self.retry_attempts = retry_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._sleep = sleep
        self._stop = stop_event
        self._local = threading.local()  # one keep-alive session per thread
        self.last_success: float | None = None  # monotonic time of the last answered call

    # -- plumbing -------------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {self._token}"
            s.headers["User-Agent"] = "agentkube"
            self._local.session = s
        return s

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt))."""
        return random.uniform(0, min(self.retry_max_s, self.retry_base_s * (2**attempt)))

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200,), retry: bool = True, attempts: int | None = None, job_scoped: bool = False,
    ) -> requests.Response:
        url = self.base_url + path
        last_error, last_status = "", None
        attempts = attempts or (self.retry_attempts if retry else 1)
        for attempt in range(attempts):
            try:
                # verify per request: a Session's own `verify` loses to REQUESTS_CA_BUNDLE in requests
                resp = self._session().request(method, url, json=json, params=params, timeout=self.timeout_s,
                                               verify=self.verify)
            except requests.exceptions.SSLError as e:
                raise FulcrumError(f"TLS verification of {self.base_url} failed: {e}") from e
            except requests.RequestException as e:
                last_error, last_status = f"{type(e).__name__}: {e}", None
                resp = None
            if resp is not None:
                self.last_success = time.monotonic()
                if resp.status_code == 403 and job_scoped and self._identity_works():
                    raise JobForbidden(f"{method} {path} -> 403: {_error_text(resp)} (the job is unknown to Fulcrum "
                                       "or not this agent's)", 403)
                if resp.status_code in (401, 403):
                    raise TokenRejected(
                        f"Fulcrum rejected the agent token ({resp.status_code} on {method} {path})",
                        resp.status_code,
                    )
                if resp.status_code in ok:
                    return resp
                if resp.status_code < 500:
                    raise FulcrumError(
                        f"{method} {path} -> {resp.status_code}: {_error_text(resp)}", resp.status_code
                    )
                last_error, last_status = f"{resp.status_code}: {_error_text(resp)}", resp.status_code
            if attempt + 1 < attempts:
                delay = self.backoff(attempt)
                log.warning("fulcrum %s %s failed (%s); retry %d/%d in %.1fs",
                            method, path, last_error, attempt + 1, attempts - 1, delay)
                if self._stop is not None and self._stop.wait(0):
                    break
                self._sleep(delay)
        raise FulcrumUnavailable(f"{method} {path} failed after {attempts} attempt(s): {last_error}", last_status)

    def _identity_works(self) -> bool:
        """False when GET /agents/me is refused too (the token is what Fulcrum rejects)."""
        try:
            self.request("GET", "/agents/me", attempts=2)
        except TokenRejected:
            return False
        return True

    # -- the agent contract ---------------------------------------------------------------------------
    def _object(self, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """GET path: the JSON object it answers (MalformedAnswer for anything else)."""
        raw = decode(self.request("GET", path, **kwargs), f"GET {what}")
        if not isinstance(raw, dict):
            raise MalformedAnswer(f"GET {what}: the answer is not a JSON object")
        return raw

    def get_me(self) -> dict[str, Any]:
        return self._object("/agents/me", "/agents/me")

    def set_status(self, status: str, *, attempts: int | None = None) -> None:
        self.request("PUT", "/agents/me/status", json={"status": status}, attempts=attempts)

    def pending_jobs(self, limit: int = 10) -> list[Job]:
        """The pending jobs Fulcrum offers (malformed ones logged and skipped: _jobs)."""
        raw = decode(self.request("GET", "/jobs/pending", params={"limit": limit}), "GET /jobs/pending")
        if not isinstance(raw, list):
            raise MalformedAnswer("GET /jobs/pending did not return a JSON array")
        return _jobs(raw)

    def claim(self, job_id: str, agent_id: str) -> bool:
        """True if this agent now owns the job. Core refuses a claim with 400 once the job is not Pending, which is
        also the answer to a retry whose first attempt did take effect (its answer lost): a 400, or a claim that
        outlasted its retries, is settled by reading the job back (Processing with this agent's id is ours).
        JobForbidden when the job is gone; FulcrumUnavailable when neither call could be answered."""
        try:
            self.request("POST", f"/jobs/{segment(job_id)}/claim", ok=(200, 204), job_scoped=True)
            return True
        except (TokenRejected, JobForbidden):
            raise
        except FulcrumError as e:
            if not isinstance(e, FulcrumUnavailable) and e.status not in (400, 404, 409):
                raise
            refused = e
        job = self.job(job_id)
        if job.get("status") == "Processing" and job.get("agentId") == agent_id:
            log.warning("job %s: the claim's answer was lost (%s), but the job is ours: running it", job_id, refused)
            return True
        return False

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}: one of this agent's jobs, as Core has it now."""
        return self._object(f"/jobs/{segment(job_id)}", "/jobs/<id>", job_scoped=True)

    def processing_jobs(self, agent_id: str, page_size: int = 100) -> list[Job]:
        """The jobs Core holds in Processing for this agent (GET /jobs?status=Processing, paged), with their
        services: what a lost state directory, or an instance that died elsewhere, left claimed."""
        mine = []
        for raw in self._pages("/jobs", {"status": "Processing"}, page_size):
            if raw.get("agentId") != agent_id or raw.get("status") != "Processing":
                continue
            if not isinstance(raw.get("service"), dict) and is_core_id(raw.get("serviceId")):
                raw = {**raw, "service": self.service(raw["serviceId"])}  # a JobRes may come without it
            mine.append(raw)
        return _jobs(mine)

    def service(self, service_id: str) -> dict[str, Any]:
        return self._object(f"/services/{segment(service_id)}", "/services/<id>")

    def report(self, result: JobResult) -> None:
        """Send a job's result. A 400 means Core no longer holds the job in Processing (already reported,
        or timed out): there is nothing left to deliver, so it is logged and treated as delivered. JobForbidden
        when the job is gone."""
        if result.outcome == "completed":
            verb, body = "complete", result.complete_body()
        else:
            verb, body = "fail", {"errorMessage": result.error_message}
        try:
            self.request("POST", f"/jobs/{segment(result.job_id)}/{verb}", json=body, ok=(200, 204), job_scoped=True,
                         attempts=REPORT_ATTEMPTS)
        except FulcrumError as e:
            if isinstance(e, TokenRejected | FulcrumUnavailable | JobForbidden) or e.status not in (400, 404, 409):
                raise
            log.warning("job %s: Fulcrum refused the %s report (%s); it no longer waits for it",
                        result.job_id, result.outcome, e)

    def resolve_secret(self, ref: str) -> str:
        raw = decode(self.request("GET", f"/vault/secrets/{segment(ref)}"), "GET /vault/secrets/<ref>")
        value = raw.get("value") if isinstance(raw, dict) else None
        if not isinstance(value, str):
            raise FulcrumError(f"vault secret {ref!r} has no string value")
        return value

    def post_metric(self, entry: dict[str, Any]) -> None:
        self.request("POST", "/metric-entries", json=entry, ok=(200, 201))

    def list_services(self, page_size: int = 100) -> list[dict[str, Any]]:
        return list(self._pages("/services", {}, page_size))

    def _pages(self, path: str, params: dict[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
        """Every item of a paged list (Core caps pageSize at 100)."""
        page = 1
        while True:
            raw = decode(self.request("GET", path, params={**params, "page": page, "pageSize": page_size}),
                         f"GET {path}")
            if not isinstance(raw, dict) or not isinstance(raw.get("items") or [], list):
                raise MalformedAnswer(f"GET {path}: the answer is not a page")
            yield from (item for item in raw.get("items") or [] if isinstance(item, dict))
            if not raw.get("hasNext"):
                return
            page += 1


def _jobs(items: list[Any]) -> list[Job]:
    """The jobs of a list Fulcrum answered. A malformed job, or one whose id is not a Fulcrum UUID, is logged and
    skipped: it is never claimed or run, and its id never becomes a path or a URL."""
    jobs = []
    for item in items:
        raw_id = item.get("id") if isinstance(item, dict) else None
        if not is_core_id(raw_id):
            log.error("skipping a job from Fulcrum whose id is not a UUID: %.80r", raw_id)
            continue
        try:
            jobs.append(Job.from_api(item))
        except (KeyError, TypeError, ValueError) as e:
            log.error("skipping malformed job %s from Fulcrum: missing or bad field %s", raw_id, e)
    return jobs


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except ValueError:
        pass
    return (resp.text or resp.reason or "")[:200]
