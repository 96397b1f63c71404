"""Fulcrum Core HTTP client for the agent endpoints (../shared/contracts/fulcrum). Knows HTTP and the
contract, nothing about Ansible. Retries connection errors and 5xx with exponential backoff and jitter;
401/403 raise TokenRejected, which stops the agent."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from agentkube.core.jobs import Job, JobResult

log = logging.getLogger(__name__)


class FulcrumError(Exception):
    """Fulcrum answered with an unexpected status (after retries for 5xx)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TokenRejected(FulcrumError):
    """401/403: the agent token is missing, unknown or expired. The agent cannot work."""


class FulcrumUnavailable(FulcrumError):
    """Connection errors or 5xx that outlasted the retries."""


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
        ok: tuple[int, ...] = (200,), retry: bool = True, attempts: int | None = None,
    ) -> requests.Response:
        url = self.base_url + path
        last_error = ""
        attempts = attempts or (self.retry_attempts if retry else 1)
        for attempt in range(attempts):
            try:
                # verify per request: a Session's own `verify` loses to REQUESTS_CA_BUNDLE in requests
                resp = self._session().request(method, url, json=json, params=params, timeout=self.timeout_s,
                                               verify=self.verify)
            except requests.exceptions.SSLError as e:
                raise FulcrumError(f"TLS verification of {self.base_url} failed: {e}") from e
            except requests.RequestException as e:
                last_error = f"{type(e).__name__}: {e}"
                resp = None
            if resp is not None:
                self.last_success = time.monotonic()
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
                last_error = f"{resp.status_code}: {_error_text(resp)}"
            if attempt + 1 < attempts:
                delay = self.backoff(attempt)
                log.warning("fulcrum %s %s failed (%s); retry %d/%d in %.1fs",
                            method, path, last_error, attempt + 1, attempts - 1, delay)
                if self._stop is not None and self._stop.wait(0):
                    break
                self._sleep(delay)
        raise FulcrumUnavailable(f"{method} {path} failed after {attempts} attempt(s): {last_error}")

    # -- the agent contract ---------------------------------------------------------------------------
    def get_me(self) -> dict[str, Any]:
        return self.request("GET", "/agents/me").json()

    def set_status(self, status: str, *, attempts: int | None = None) -> None:
        self.request("PUT", "/agents/me/status", json={"status": status}, attempts=attempts)

    def pending_jobs(self, limit: int = 10) -> list[Job]:
        raw = self.request("GET", "/jobs/pending", params={"limit": limit}).json()
        if not isinstance(raw, list):
            raise FulcrumError("GET /jobs/pending did not return a JSON array")
        jobs = []
        for item in raw:
            try:
                jobs.append(Job.from_api(item))
            except (KeyError, TypeError, ValueError) as e:
                log.error("skipping malformed job from Fulcrum (%s): missing or bad field %s",
                          item.get("id") if isinstance(item, dict) else "?", e)
        return jobs

    def claim(self, job_id: str) -> bool:
        """True if this agent now owns the job; False when Core says it is no longer Pending (400/404/409)."""
        try:
            self.request("POST", f"/jobs/{quote(job_id)}/claim", ok=(200, 204))
        except TokenRejected:
            raise
        except FulcrumError as e:
            if e.status in (400, 404, 409):
                return False
            raise
        return True

    def report(self, result: JobResult) -> None:
        """Send a job's result. A 400 means Core no longer holds the job in Processing (already reported,
        or timed out): there is nothing left to deliver, so it is logged and treated as delivered."""
        try:
            if result.outcome == "completed":
                self.request("POST", f"/jobs/{quote(result.job_id)}/complete", json=result.complete_body(),
                             ok=(200, 204))
            else:
                self.request("POST", f"/jobs/{quote(result.job_id)}/fail",
                             json={"errorMessage": result.error_message}, ok=(200, 204))
        except FulcrumError as e:
            if isinstance(e, TokenRejected | FulcrumUnavailable) or e.status not in (400, 404, 409):
                raise
            log.warning("job %s: Fulcrum refused the %s report (%s); it no longer waits for it",
                        result.job_id, result.outcome, e)

    def resolve_secret(self, ref: str) -> str:
        raw = self.request("GET", f"/vault/secrets/{quote(ref, safe='')}").json()
        value = raw.get("value") if isinstance(raw, dict) else None
        if not isinstance(value, str):
            raise FulcrumError(f"vault secret {ref!r} has no string value")
        return value

    def post_metric(self, entry: dict[str, Any]) -> None:
        self.request("POST", "/metric-entries", json=entry, ok=(200, 201))

    def list_services(self, page_size: int = 100) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            raw = self.request("GET", "/services", params={"page": page, "pageSize": page_size}).json()
            out += raw.get("items") or []
            if not raw.get("hasNext"):
                return out
            page += 1


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except ValueError:
        pass
    return (resp.text or resp.reason or "")[:200]
