"""The Fulcrum emulator's HTTP side: routes under /api/v1 onto FulcrumState, Bearer auth, JSON bodies,
fault injection and the request log. Knows nothing of Core's rules; FulcrumState does."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from agentkube.lab.fulcrum_faults import FaultInjector
from agentkube.lab.fulcrum_state import ApiError, FulcrumState, Identity, page_of

BASE_PATH = "/api/v1"
ADMIN, AGENT, ANY = "admin", "agent", "any"


class RequestRecord(NamedTuple):
    """One agent call as the emulator saw it. Headers (so the Authorization token) are never kept;
    `path` includes the /api/v1 prefix and the query string; status None = connection dropped."""

    method: str
    path: str
    body: Any
    status: int | None
    response: Any


class _Call(NamedTuple):
    identity: Identity
    match: re.Match[str]
    query: dict[str, list[str]]
    body: Any


Handler = Callable[[FulcrumState, _Call], tuple[int, Any]]
_ID = r"(?P<id>[^/]+)"


def _int_arg(query: dict[str, list[str]], name: str, default: int) -> int:
    try:
        value = int(query.get(name, [str(default)])[0])
    except ValueError:
        return default
    return value if value > 0 else default


def _paged(items: list, call: _Call) -> tuple[int, dict]:
    return 200, page_of(items, _int_arg(call.query, "page", 1), _int_arg(call.query, "pageSize", 10))


def _body(call: _Call) -> dict:
    if call.body is None:
        return {}
    if not isinstance(call.body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return call.body


def _service_action(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    body = _body(call)
    props = body.get("properties")
    if props is not None and not isinstance(props, dict):
        raise ApiError(400, "field 'properties' must be an object")
    state.request_action(call.match["id"], call.match["action"], props)
    return 200, state.get_service(call.match["id"])


def _patch_service(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    body = _body(call)
    if body.get("name") is not None:
        if not isinstance(body["name"], str) or not body["name"]:
            raise ApiError(400, "field 'name' must be a non-empty string")
        state.rename_service(call.match["id"], body["name"])
    if body.get("properties") is not None:
        if not isinstance(body["properties"], dict):
            raise ApiError(400, "field 'properties' must be an object")
        state.request_action(call.match["id"], "update", body["properties"])
    return 200, state.get_service(call.match["id"])


def _delete_service(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    state.request_action(call.match["id"], "delete")
    return 204, None


def _metric_entries(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    with state.lock:
        entries = list(state.metric_entries)
    for field, key in (("serviceId", "serviceId"), ("agentId", "agentId"), ("resourceId", "resourceId")):
        wanted = call.query.get(field)
        if wanted:
            entries = [e for e in entries if e[key] in wanted]
    return _paged(entries, call)


# (method, path regex under /api/v1, who may call, handler). More specific paths come first.
ROUTES: list[tuple[str, re.Pattern[str], str, Handler]] = [
    (m, re.compile(p + r"/?$"), who, h)
    for m, p, who, h in [
        ("GET", r"/agents/me", AGENT, lambda s, c: (200, s.agent_me(c.identity))),
        ("PUT", r"/agents/me/status", AGENT, lambda s, c: (200, s.update_agent_status(c.identity, _body(c)))),
        ("GET", rf"/agents/{_ID}", ADMIN, lambda s, c: (200, s.get_agent(c.match["id"]))),
        ("POST", r"/agents", ADMIN, lambda s, c: (201, s.create_agent(_body(c)))),
        (
            "GET",
            r"/jobs/pending",
            AGENT,
            lambda s, c: (200, s.pending_jobs(c.identity, _int_arg(c.query, "limit", 10))),
        ),
        ("POST", rf"/jobs/{_ID}/claim", AGENT, lambda s, c: (204, s.claim_job(c.identity, c.match["id"]))),
        (
            "POST",
            rf"/jobs/{_ID}/complete",
            AGENT,
            lambda s, c: (204, s.complete_job(c.identity, c.match["id"], _body(c))),
        ),
        ("POST", rf"/jobs/{_ID}/fail", AGENT, lambda s, c: (204, s.fail_job(c.identity, c.match["id"], _body(c)))),
        ("GET", rf"/jobs/{_ID}", ANY, lambda s, c: (200, s.get_job(c.match["id"], c.identity))),
        ("GET", r"/jobs", ADMIN, lambda s, c: _paged(s.list_jobs(), c)),
        ("POST", r"/metric-entries", AGENT, lambda s, c: (201, s.create_metric_entry(c.identity, _body(c)))),
        ("GET", r"/metric-entries", ADMIN, _metric_entries),
        ("POST", r"/metric-types", ADMIN, lambda s, c: (201, s.create_metric_type(_body(c)))),
        ("GET", r"/services", ANY, lambda s, c: _paged(s.list_services(c.identity), c)),
        ("POST", r"/services", ADMIN, lambda s, c: (201, s.create_service(_body(c)))),
        ("GET", rf"/services/{_ID}", ANY, lambda s, c: (200, s.get_service(c.match["id"], c.identity))),
        ("PATCH", rf"/services/{_ID}", ADMIN, _patch_service),
        ("DELETE", rf"/services/{_ID}", ADMIN, _delete_service),
        ("POST", rf"/services/{_ID}/(?P<action>[^/]+)", ADMIN, _service_action),
        ("GET", r"/vault/secrets/(?P<ref>[^/]+)", AGENT, lambda s, c: (200, s.get_secret(c.identity, c.match["ref"]))),
        ("POST", r"/participants", ADMIN, lambda s, c: (201, s.create_participant(_body(c)))),
        ("POST", r"/agent-types", ADMIN, lambda s, c: (201, s.create_agent_type(_body(c)))),
        ("POST", r"/service-types", ADMIN, lambda s, c: (201, s.create_service_type(_body(c)))),
        ("POST", r"/service-groups", ADMIN, lambda s, c: (201, s.create_group(_body(c)))),
        ("POST", r"/tokens", ADMIN, lambda s, c: (201, s.create_token(_body(c)))),
    ]
]


class FulcrumHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], state: FulcrumState, faults: FaultInjector, ssl_context: ssl.SSLContext | None
    ):
        super().__init__(address, _FulcrumRequestHandler)
        self.state = state
        self.faults = faults
        self.request_log: list[RequestRecord] = []
        self.log_lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish mid-call, failed TLS handshakes: not the emulator's problem; stay quiet."""

    def close_connections(self) -> None:
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _FulcrumRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FulcrumCoreEmulator/1.0"
    timeout = 30  # idle keep-alive connections end after this
    # TCP_NODELAY: with Nagle on, every answer on a keep-alive connection waits for the client's delayed ACK
    # (~40 ms), a cost of the emulator, not of Core
    disable_nagle_algorithm = True
    server: FulcrumHTTPServer

    def setup(self) -> None:
        self.server.connections.add(self.request)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def finish(self) -> None:
        self.server.connections.discard(self.request)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr (tests read the request log instead)."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # ------------------------------------------------------------------
    def _read_body(self) -> tuple[Any, bool]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return None, True
        try:
            return json.loads(raw), True
        except ValueError:
            return raw.decode(errors="replace"), False

    def _is_admin(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        return auth == f"Bearer {self.server.state.admin_token}"

    def _record(self, is_admin: bool, body: Any, status: int | None, response: Any) -> None:
        if is_admin:
            return
        if response is not None and re.match(rf"{BASE_PATH}/vault/secrets/", self.path) and status == 200:
            response = {"value": "***"}  # a secret never lands in the log
        with self.server.log_lock:
            self.server.request_log.append(RequestRecord(self.command, self.path, body, status, response))

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, payload: Any) -> None:
        data = b"" if payload is None or status == 204 else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _dispatch(self) -> None:
        body, body_ok = self._read_body()
        is_admin = self._is_admin()
        faults = self.server.faults
        if faults.down and not is_admin:
            self._record(is_admin, body, None, None)
            self._drop()
            return
        fault = faults.take(self.command, self.path, is_admin)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self._record(is_admin, body, None, None)
                self._drop()
                return
            if fault.status is not None:
                payload = {"status": "Injected fault", "error": f"emulated failure {fault.status}"}
                self._record(is_admin, body, fault.status, payload)
                self._send(fault.status, payload)
                return
        status, payload = self._route(body, body_ok)
        self._record(is_admin, body, status, payload)
        self._send(status, payload)

    def _route(self, body: Any, body_ok: bool) -> tuple[int, Any]:
        parts = urlsplit(self.path)
        try:
            if not parts.path.startswith(BASE_PATH + "/"):
                raise ApiError(404, "resource not found")
            sub = parts.path[len(BASE_PATH) :]
            path_matches = [(meth, m, who, h) for meth, rx, who, h in ROUTES if (m := rx.match(sub))]
            if not path_matches:
                raise ApiError(404, "resource not found")
            chosen = next(((m, who, h) for meth, m, who, h in path_matches if meth == self.command), None)
            if chosen is None:
                raise ApiError(405, f"method {self.command} not allowed on {parts.path}")
            match, who, handler = chosen
            identity = self.server.state.authenticate(self.headers.get("Authorization"))
            if who != ANY and identity.role != who:
                raise ApiError(403, f"this operation requires the {who} role")
            if not body_ok:
                raise ApiError(400, "request body is not valid JSON")
            return handler(self.server.state, _Call(identity, match, parse_qs(parts.query), body))
        except ApiError as exc:
            return exc.status, exc.body()
