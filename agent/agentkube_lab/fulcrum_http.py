"""The Fulcrum emulator's HTTP side: routes under /api/v1 onto FulcrumState, Bearer auth, JSON bodies,
fault injection and the request log. Knows nothing of Core's rules; FulcrumState does."""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from agentkube_lab.fulcrum_faults import FaultInjector
from agentkube_lab.fulcrum_state import ApiError, FulcrumState, Identity, go_json_kind, page_of, parse_uuid

BASE_PATH = "/api/v1"
ADMIN, AGENT, ANY = "admin", "agent", "any"


class RequestRecord(NamedTuple):
    """One agent call as the emulator saw it. Headers (so the Authorization token) are never kept;
    `path` includes the /api/v1 prefix and the query string; status None = connection dropped (then
    `handled_status` is the status of the call the emulator did handle before dropping the answer, with a
    `drop_after` fault, and None when it never handled it)."""

    method: str
    path: str
    body: Any
    status: int | None
    response: Any
    handled_status: int | None = None


class RawBody(NamedTuple):
    """A handler's answer that is not JSON (the install config: Core writes the rendered template as is)."""

    content_type: str
    text: str
    headers: tuple[tuple[str, str], ...] = ()


class _Call(NamedTuple):
    identity: Identity
    match: re.Match[str]
    query: dict[str, list[str]]
    body: Any


Handler = Callable[[FulcrumState, _Call], tuple[int, Any]]
_ID = r"(?P<id>[^/]+)"
MAX_PAGE_SIZE = 100  # pkg/api/pagination.go maxPageSize


def _int_arg(query: dict[str, list[str]], name: str, default: int) -> int:
    """GET /jobs/pending's `limit` (pkg/api/handlers_job.go Pending): anything but a positive integer is 10."""
    try:
        value = int(query.get(name, [str(default)])[0])
    except ValueError:
        return default
    return value if value > 0 else default


def _go_atoi(text: str) -> int | None:
    """strconv.Atoi: an optional sign and decimal digits, nothing else."""
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None


def parse_page_request(query: dict[str, list[str]]) -> tuple[int, int, str | None, dict[str, list[str]]]:
    """ParsePageRequest (pkg/api/pagination.go): page and pageSize strictly parsed (400 when not an integer,
    below 1, or a pageSize above 100); `sort`; every other parameter is a filter."""
    page, page_size = 1, 10
    if text := query.get("page", [""])[0]:
        value = _go_atoi(text)
        if value is None:
            raise ApiError(400, f"invalid page parameter: {text}")
        if value < 1:
            raise ApiError(400, f"page parameter must be greater than 0, got: {value}")
        page = value
    if text := query.get("pageSize", [""])[0]:
        value = _go_atoi(text)
        if value is None:
            raise ApiError(400, f"invalid pageSize parameter: {text}")
        if value < 1:
            raise ApiError(400, f"pageSize parameter must be greater than 0, got: {value}")
        if value > MAX_PAGE_SIZE:
            raise ApiError(400, f"pageSize parameter must not exceed {MAX_PAGE_SIZE}, got: {value}")
        page_size = value
    sort = query.get("sort", [""])[0] or None
    filters = {k: v for k, v in query.items() if k not in ("page", "pageSize", "sort") and v}
    return page, page_size, sort, filters


def _paged(items: list, call: _Call) -> tuple[int, dict]:
    page, page_size, _, _ = parse_page_request(call.query)
    return 200, page_of(items, page, page_size)


def _list_jobs(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    page, page_size, sort, filters = parse_page_request(call.query)
    return 200, page_of(state.query_jobs(call.identity, filters, sort), page, page_size)


def _list_services(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    page, page_size, sort, filters = parse_page_request(call.query)
    return 200, page_of(state.list_services(call.identity, filters, sort), page, page_size)


def _body(call: _Call) -> dict:
    if call.body is None:
        return {}
    if not isinstance(call.body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return call.body


def _service_action(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    # GenericAction (pkg/api/handlers_service.go): DoAction with the action name only; a body is ignored
    svc = state.authz_service(call.identity, call.match["id"])
    state.request_action(svc.id, call.match["action"])
    return 200, state.get_service(svc.id)


def _patch_service(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    body = _body(call)
    svc = state.authz_service(call.identity, call.match["id"])
    if body.get("name") is not None:
        if not isinstance(body["name"], str) or not body["name"]:
            raise ApiError(400, "invalid input: service name cannot be empty")
        state.rename_service(svc.id, body["name"])
    if body.get("properties") is not None:
        if not isinstance(body["properties"], dict):
            raise ApiError(400, "field 'properties' must be an object")
        state.request_action(svc.id, "update", body["properties"])
    return 200, state.get_service(svc.id)


def _delete_service(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    svc = state.authz_service(call.identity, call.match["id"])
    state.request_action(svc.id, "delete")
    return 204, None


def _metric_entries(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    with state.lock:
        entries = list(state.metric_entries)
    for field, key in (("serviceId", "serviceId"), ("agentId", "agentId"), ("resourceId", "resourceId")):
        wanted = call.query.get(field)
        if wanted:
            entries = [e for e in entries if e[key] in wanted]
    return _paged(entries, call)


def _install_fetch(state: FulcrumState, call: _Call) -> tuple[int, Any]:
    # Fetch (pkg/api/handlers_agent_install_token.go): the rendered config as is, with its content type,
    # Cache-Control: no-store and X-Content-Type-Options: nosniff
    content_type, text = state.fetch_install_config(call.match["token"])
    return 200, RawBody(content_type, text, (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")))


def _install_command(method: str) -> Handler:
    def handle(state: FulcrumState, call: _Call) -> tuple[int, Any]:
        aid = state.authz_agent(call.identity, call.match["id"], "read" if method == "GET" else "update")
        if method == "GET":
            return 200, state.get_install_command(aid)
        if method == "DELETE":
            state.revoke_install_command(aid)
            return 204, None
        if method == "REGENERATE":
            return 200, state.regenerate_install_command(aid)
        return 201, state.create_install_command(aid)

    return handle


# (method, path regex under /api/v1, who may call, decodes a body, handler). More specific paths come first.
# `decodes a body`: the route has Core's DecodeBody middleware (pkg/middlewares/request.go), so an empty or
# non-object body is refused with 400 before the authorization from the id. Roles: MustHaveRoles and the
# authorization rules of pkg/authz/rules.go (an agent may read jobs and services, claim/complete/fail jobs,
# list pending jobs, create metric entries).
ROUTES: list[tuple[str, re.Pattern[str], str, bool, Handler]] = [
    (m, re.compile(p + r"/?$"), who, decode, h)
    for m, p, who, decode, h in [
        ("GET", r"/agents/me", AGENT, False, lambda s, c: (200, s.agent_me(c.identity))),
        # the install flow (pkg/api/handlers_agent_install_token.go Routes): the fetch takes any admin,
        # participant or agent bearer (MustHaveRoles), the rest AuthzFromID on the agent (see authz_agent)
        ("GET", r"/agents/install/(?P<token>[^/]*)/config", ANY, False, _install_fetch),
        ("GET", rf"/agents/{_ID}/install-command", ANY, False, _install_command("GET")),
        ("POST", rf"/agents/{_ID}/install-command", ANY, False, _install_command("POST")),
        ("DELETE", rf"/agents/{_ID}/install-command", ANY, False, _install_command("DELETE")),
        ("POST", rf"/agents/{_ID}/install-command/regenerate", ANY, False, _install_command("REGENERATE")),
        ("PUT", r"/agents/me/status", AGENT, True, lambda s, c: (200, s.update_agent_status(c.identity, _body(c)))),
        ("GET", rf"/agents/{_ID}", ADMIN, False, lambda s, c: (200, s.get_agent(parse_uuid(c.match["id"])))),
        ("POST", r"/agents", ADMIN, True, lambda s, c: (201, s.create_agent(_body(c)))),
        (
            "GET",
            r"/jobs/pending",
            AGENT,
            False,
            lambda s, c: (200, s.pending_jobs(c.identity, _int_arg(c.query, "limit", 10))),
        ),
        ("POST", rf"/jobs/{_ID}/claim", AGENT, False, lambda s, c: (204, s.claim_job(c.identity, c.match["id"]))),
        (
            "POST",
            rf"/jobs/{_ID}/complete",
            AGENT,
            True,
            lambda s, c: (204, s.complete_job(c.identity, c.match["id"], _body(c))),
        ),
        (
            "POST",
            rf"/jobs/{_ID}/fail",
            AGENT,
            True,
            lambda s, c: (204, s.fail_job(c.identity, c.match["id"], _body(c))),
        ),
        ("GET", rf"/jobs/{_ID}", ANY, False, lambda s, c: (200, s.get_job(c.match["id"], c.identity))),
        ("GET", r"/jobs", ANY, False, _list_jobs),
        ("POST", r"/metric-entries", AGENT, True, lambda s, c: (201, s.create_metric_entry(c.identity, _body(c)))),
        ("GET", r"/metric-entries", ADMIN, False, _metric_entries),
        ("POST", r"/metric-types", ADMIN, True, lambda s, c: (201, s.create_metric_type(_body(c)))),
        ("GET", r"/services", ANY, False, _list_services),
        ("POST", r"/services", ADMIN, True, lambda s, c: (201, s.create_service(_body(c), c.identity))),
        ("GET", rf"/services/{_ID}", ANY, False, lambda s, c: (200, s.get_service(c.match["id"], c.identity))),
        ("PATCH", rf"/services/{_ID}", ADMIN, True, _patch_service),
        ("DELETE", rf"/services/{_ID}", ADMIN, False, _delete_service),
        ("POST", rf"/services/{_ID}/(?P<action>[^/]+)", ADMIN, False, _service_action),
        (
            "GET",
            r"/vault/secrets/(?P<ref>[^/]+)",
            AGENT,
            False,
            lambda s, c: (200, s.get_secret(c.identity, c.match["ref"])),
        ),
        ("POST", r"/participants", ADMIN, True, lambda s, c: (201, s.create_participant(_body(c)))),
        ("POST", r"/agent-types", ADMIN, True, lambda s, c: (201, s.create_agent_type(_body(c)))),
        ("POST", r"/service-types", ADMIN, True, lambda s, c: (201, s.create_service_type(_body(c)))),
        ("POST", r"/service-groups", ADMIN, True, lambda s, c: (201, s.create_group(_body(c)))),
        ("POST", r"/tokens", ADMIN, True, lambda s, c: (201, s.create_token(_body(c)))),
    ]
]


class _GoJSONError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _GoJSONError(f"invalid character '{name[0]}' looking for beginning of value")


def _go_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _GoJSONError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_go_float)


def decode_go_json(raw: bytes) -> Any:
    """A body as Go's json.NewDecoder(r).Decode reads it (render.DecodeJSON): NaN, Infinity and -Infinity are
    not JSON and are refused, a number beyond float64 is refused, a byte order mark is refused, and whatever
    follows the first value is not read. Raises ValueError."""
    text = raw.decode("utf-8", errors="replace")  # Go replaces invalid UTF-8 with U+FFFD
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise _GoJSONError("EOF")
    value, _ = _DECODER.raw_decode(stripped)
    return value


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
    def _read_body(self) -> tuple[Any, str | None]:
        """(decoded body or None when empty, why it does not decode or None). Kept undecoded as text when
        it fails, for the request log."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return None, None
        try:
            return decode_go_json(raw), None
        except ValueError as exc:
            return raw.decode(errors="replace"), str(exc)

    def _is_admin(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        return auth == f"Bearer {self.server.state.admin_token}"

    def _record(
        self, is_admin: bool, body: Any, status: int | None, response: Any, handled_status: int | None = None
    ) -> None:
        if is_admin:
            return
        if response is not None and re.match(rf"{BASE_PATH}/vault/secrets/", self.path) and status == 200:
            response = {"value": "***"}  # a secret never lands in the log
        path = self.path
        if re.match(rf"{BASE_PATH}/agents/install/", path):
            # the install token is in the path and the rendered config may hold secrets: neither is kept
            path = re.sub(r"(/agents/install/)[^/?]*", r"\1***", path)
            response = "***" if isinstance(response, RawBody) else response
        elif isinstance(response, dict) and "installCommand" in response:
            response = {**response, "installCommand": "***", "url": "***"}
        with self.server.log_lock:
            self.server.request_log.append(
                RequestRecord(self.command, path, body, status, response, handled_status)
            )

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, payload: Any) -> None:
        if isinstance(payload, RawBody):
            data = payload.text.encode()
            self.send_response(status)
            self.send_header("Content-Type", payload.content_type)
            for name, value in payload.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        data = b"" if payload is None or status == 204 else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _dispatch(self) -> None:
        self.server.state.tick()
        body, body_error = self._read_body()
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
        status, payload = self._route(body, body_error)
        if fault is not None and fault.drop_after:
            # handled (the claim or the report took effect), then the answer is lost
            self._record(is_admin, body, None, None, handled_status=status)
            self._drop()
            return
        self._record(is_admin, body, status, payload)
        self._send(status, payload)

    def _route(self, body: Any, body_error: str | None) -> tuple[int, Any]:
        """Core's middleware order (pkg/middlewares): Auth (401/403), the route, the id (400 when it is not a
        UUID), the role, the body (DecodeBody: 400), then the handler, where AuthzFromID answers 403."""
        parts = urlsplit(self.path)
        try:
            if not parts.path.startswith(BASE_PATH + "/"):
                raise ApiError(404, "resource not found")
            sub = parts.path[len(BASE_PATH) :]
            path_matches = [(meth, m, who, dec, h) for meth, rx, who, dec, h in ROUTES if (m := rx.match(sub))]
            if not path_matches:
                raise ApiError(404, "resource not found")
            chosen = next(((m, who, dec, h) for meth, m, who, dec, h in path_matches if meth == self.command), None)
            if chosen is None:
                raise ApiError(405, f"method {self.command} not allowed on {parts.path}")
            match, who, decodes, handler = chosen
            identity = self.server.state.authenticate(self.headers.get("Authorization"))
            if "id" in match.groupdict():
                parse_uuid(match["id"])
            if who != ANY and identity.role != who:
                raise ApiError(403, f"access denied: user role '{identity.role}' is not authorized")
            if decodes:
                if body_error is not None:
                    raise ApiError(400, body_error)
                if body is None:
                    raise ApiError(400, "EOF")
                if not isinstance(body, dict):
                    raise ApiError(400, f"json: cannot unmarshal {go_json_kind(body)} into Go value of type struct")
            elif body_error is not None and body is not None:
                body = None  # a route without DecodeBody never reads its body
            query = parse_qs(parts.query, keep_blank_values=True)
            return handler(self.server.state, _Call(identity, match, query, body))
        except ApiError as exc:
            return exc.status, exc.body()
