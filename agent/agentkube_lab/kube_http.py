"""A Kubernetes API server over HTTPS on loopback: discovery (/version, /api, /apis, APIResourceLists), the
REST verbs on the resource URLs of an ObjectStore (with the status, scale and eviction subresources),
authentication (bearer tokens, bootstrap tokens, client certificates) into one identity (user, groups), RBAC
authorization of that identity (kube_rbac), the PodDisruptionBudget controller (kube_disruption), request
counters and fault injection. Used for the Kamaji parent and every tenant."""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from agentkube_lab import kube_certificates
from agentkube_lab.kube_disruption import DisruptionController, evict
from agentkube_lab.kube_patch import PatchError, json_patch, merge_patch
from agentkube_lab.kube_rbac import (
    ANONYMOUS,
    MASTERS,
    Identity,
    RbacAuthorizer,
    bootstrap_identity,
    forbidden,
    identity_of_client_cert,
    node_restriction_error,
    request_attributes,
    seed_bootstrap_policy,
)
from agentkube_lab.kube_resources import ResourceType
from agentkube_lab.kube_store import APPLY_PATCH, ApiError, ObjectStore, bad_request

log = logging.getLogger(__name__)

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
            500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
_ANONYMOUS_PATHS = ("/version", "/healthz", "/livez", "/readyz")
_BOOTSTRAP_TOKEN = re.compile(r"\A([a-z0-9]{6})\.[a-z0-9]{16}\Z")

# what `authenticate(token)` may answer: an Identity, (user, groups), True for a token the caller validated (a
# bootstrap token: its identity is read from the token's Secret; any other: an admin in system:masters), or
# False/None for "not this token"
AuthResult = Identity | tuple[str, tuple[str, ...]] | bool | None


def install_controllers(store: ObjectStore) -> None:
    """What the apiserver and the controller manager set up on a store, once per store: the bootstrap-policy
    ClusterRoles and the PodDisruptionBudget controller (the kubelet's part of pod termination and the garbage
    collector live in the store itself)."""
    if getattr(store, "_lab_controllers", False):
        return
    store._lab_controllers = True  # type: ignore[attr-defined]
    seed_bootstrap_policy(store)
    DisruptionController(store)


@dataclass
class Fault:
    """An injected failure: requests whose path matches `pattern` (and `method`, if set) are answered with
    `status` (after `delay` seconds) for the next `times` matches (None = forever)."""

    pattern: re.Pattern
    status: int | None
    times: int | None
    method: str | None = None
    delay: float = 0.0
    message: str = "injected fault"


class KubeApiServer:
    """One emulated Kubernetes API server. `authenticate(token)` maps bearer tokens to identities (see
    AuthResult); a client certificate verified against `client_ca_file` is the identity CN/O. Every request is
    then authorized by `authorizer` (RBAC over the store, with the system:masters bypass). `anonymous` lists
    (method, path) pairs system:anonymous may use (what a Role bound to system:anonymous grants)."""

    def __init__(self, store: ObjectStore, cert_file: Path, key_file: Path, *, host: str = "127.0.0.1",
                 port: int = 0, authenticate: Callable[[str], AuthResult] | None = None,
                 anonymous: tuple[tuple[str, str], ...] = (), git_version: str = "v1.35.0",
                 name: str = "kube-apiserver", client_ca_file: Path | None = None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"host: the lab binds to loopback only, not {host!r}")
        self.store = store
        self.name = name
        self.git_version = git_version
        self.authenticate = authenticate or (lambda _token: False)
        self.anonymous = set(anonymous)
        self.authorizer = RbacAuthorizer(store)
        install_controllers(store)
        self.request_count: Counter[str] = Counter()
        self.method_count: Counter[tuple[str, str]] = Counter()
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _Handler, bind_and_activate=True)
        self._httpd.daemon_threads = True
        self._httpd.api = self  # type: ignore[attr-defined]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert_file), str(key_file))
        if client_ca_file is not None:
            # kube-apiserver --client-ca-file: a client certificate is optional, verified against this CA when
            # sent, and authenticates as CN=user, O=groups (k8s.io/apiserver pkg/authentication/request/x509)
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cafile=str(client_ca_file))
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    # ---------------------------------------------------------------- faults
    def inject(self, path_regex: str, status: int | None = 500, times: int | None = 1, *,
               method: str | None = None, delay: float = 0.0, message: str = "injected fault") -> Fault:
        fault = Fault(re.compile(path_regex), status, times, method.upper() if method else None, delay, message)
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.method not in (None, method) or not fault.pattern.search(path):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # ---------------------------------------------------------------- discovery
    def discovery(self, parts: list[str]) -> dict | None:
        catalog = self.store.catalog
        if parts == ["version"]:
            major, minor = self.git_version.lstrip("v").split(".")[:2]
            return {"major": major, "minor": minor, "gitVersion": self.git_version, "gitCommit": "lab",
                    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                    "compiler": "gc", "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]}
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1")
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [self._group(g, vs) for g, vs in catalog.group_versions().items()]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in catalog.group_versions():
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1],
                                                                           catalog.group_versions()[parts[1]])}
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in catalog.group_versions().get(parts[1], []):
            return self._resource_list(parts[1], parts[2])
        return None

    @staticmethod
    def _group(group: str, versions: list[str]) -> dict:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> dict:
        resources = [e for t in self.store.catalog.in_group_version(group, version) for e in t.discovery_entries()]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}


@dataclass
class _Target:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str


def _parse_resource_path(store: ObjectStore, parts: list[str]) -> _Target | None:
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    rtype = store.catalog.by_plural(group, version, rest[0])
    if rtype is None or (namespace is not None and not rtype.namespaced):
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else ""
    if sub and sub not in rtype.subresources:
        return None
    return _Target(rtype, namespace, name, sub)


def _dig(obj: dict, dotted: str) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _set_dotted(obj: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = obj
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def scale_of(rtype: ResourceType, obj: dict) -> dict:
    meta = obj["metadata"]
    status: dict[str, Any] = {"replicas": _dig(obj, rtype.scale_status_path) or 0}
    if rtype.scale_selector_path and _dig(obj, rtype.scale_selector_path):
        status["selector"] = _dig(obj, rtype.scale_selector_path)
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": _dig(obj, rtype.scale_spec_path) or 0}, "status": status}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "agentkube-lab-kube-apiserver"
    identity: Identity = ANONYMOUS  # who sent the request being routed (set by _authorize)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def api(self) -> KubeApiServer:
        return self.server.api  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---------------------------------------------------------------- plumbing
    def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _decode(self, raw: bytes, content_type: str) -> Any:
        if not raw:
            return None
        try:
            if "yaml" in content_type:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request(f"the body of the request could not be decoded: {e}") from e

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        api = self.api
        api.request_count[path] += 1
        api.method_count[(method, path)] += 1
        raw = self._read_body()
        try:
            fault = api.take_fault(method, path)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status is not None:
                    raise ApiError(fault.status, _REASONS.get(fault.status, "InternalError"), fault.message)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self.identity = self._authorize(method, path, query)
            code, body, headers = self._route(method, path, query, raw)
            self._send(code, body, headers)
        except ApiError as e:
            self._send(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # an emulator bug must answer 500, like a real apiserver panic handler
            log.exception("lab kube-apiserver: unhandled error on %s %s", method, path)
            self._send(500, ApiError(500, "InternalError", f"lab apiserver error: {e}").status())

    def _identify(self) -> Identity | None:
        """Authentication (k8s.io/apiserver pkg/authentication/request/union): a bearer token, else a verified
        client certificate; None when neither authenticates."""
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header[len("Bearer "):].strip()
            result = self.api.authenticate(token)
            if isinstance(result, Identity):
                return result.with_authenticated()
            if isinstance(result, tuple):
                return Identity(result[0], tuple(result[1])).with_authenticated()
            if result is True:
                # True: a bootstrap token (identity from its Secret), or an admin credential its server vouches for
                if _BOOTSTRAP_TOKEN.match(token):
                    return self._bootstrap_identity(token)
                return MASTERS.with_authenticated()
        # a client certificate the TLS layer verified against client_ca_file (CERT_OPTIONAL): CN/O -> identity
        peer = identity_of_client_cert(self.connection.getpeercert()) if hasattr(self.connection, "getpeercert") \
            else None
        if peer is not None:
            self.client_cert_identity = (peer.user, peer.groups)
            return peer.with_authenticated()
        return None

    def _bootstrap_identity(self, token: str) -> Identity | None:
        """A bootstrap token the server's authenticate() accepted: its identity from its Secret
        (plugin/pkg/auth/authenticator/token/bootstrap/bootstrap.go); None (refused) when the Secret gives none."""
        match = _BOOTSTRAP_TOKEN.match(token)
        secrets_type = self.api.store.catalog.by_kind("v1", "Secret")
        if match is None or secrets_type is None:
            return None
        secret = self.api.store.find(secrets_type, "kube-system", f"bootstrap-token-{match.group(1)}")
        identity = bootstrap_identity(secret) if secret is not None else None
        return identity.with_authenticated() if identity is not None else None

    def _authorize(self, method: str, path: str, query: dict[str, str]) -> Identity:
        identity = self._identify()
        if identity is None and "Authorization" in self.headers:
            raise ApiError(401, "Unauthorized", "Unauthorized")  # a credential that fails: 401 on every path
        identity = identity or ANONYMOUS
        if path in _ANONYMOUS_PATHS or (method, path) in self.api.anonymous:
            return identity
        if identity is ANONYMOUS:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        attrs = request_attributes(identity, method, path, query)
        decision = self.api.authorizer.authorize(attrs)
        if decision.allowed:
            return identity
        raise forbidden(attrs, decision.reason)

    # ---------------------------------------------------------------- routing
    def _route(self, method: str, path: str, query: dict[str, str], raw: bytes
               ) -> tuple[int, dict, dict[str, str] | None]:
        parts = [p for p in path.split("/") if p]
        if path in ("/healthz", "/livez", "/readyz"):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            return 200, {"status": "ok"}, None
        if method == "GET" and (body := self.api.discovery(parts)) is not None:
            return 200, body, None
        target = _parse_resource_path(self.api.store, parts)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})
        content_type = self.headers.get("Content-Type", "application/json")
        body = self._decode(raw, content_type)
        dry_run = query.get("dryRun") == "All"
        store, t = self.api.store, target
        if t.subresource == "eviction":
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "eviction only supports POST")
            code, status = evict(store, t.rtype, t.namespace, t.name or "", body, dry_run)
            return code, status, None
        if t.subresource == "scale":
            return self._scale(t, method, body, content_type, query)
        if t.rtype.kind == "Node" and not t.rtype.group and method in ("POST", "PUT", "PATCH"):
            meta = body.get("metadata") if isinstance(body, dict) else None
            requested = t.name or (meta.get("name") if isinstance(meta, dict) else "") or ""
            if (why := node_restriction_error(self.identity, requested)) is not None:
                raise ApiError(403, "Forbidden", f'nodes "{requested}" is forbidden: {why}',
                               {"name": requested, "group": "", "kind": "nodes"})
        if t.rtype.group == kube_certificates.GROUP and t.rtype.kind == "CertificateSigningRequest" \
                and method in ("POST", "PUT", "PATCH"):
            return self._certificate_signing_request(t, method, body, content_type, dry_run)
        if t.name is None:
            if method == "GET":
                if query.get("watch") in ("true", "1"):
                    raise ApiError(405, "MethodNotAllowed", "watch is not emulated by the lab apiserver; poll")
                items, rv = store.list(t.rtype, t.namespace, query.get("labelSelector"),
                                       query.get("fieldSelector"))
                return 200, {"kind": t.rtype.list_kind, "apiVersion": t.rtype.api_version,
                             "metadata": {"resourceVersion": rv}, "items": items}, None
            if method == "POST":
                obj = store.create(t.rtype, t.namespace, body, dry_run=dry_run)
                return 201, obj, None
            if method == "DELETE":
                items = store.delete_collection(t.rtype, t.namespace, query.get("labelSelector"),
                                                query.get("fieldSelector"), dry_run=dry_run)
                return 200, {"kind": t.rtype.list_kind, "apiVersion": t.rtype.api_version,
                             "metadata": {"resourceVersion": store.resource_version}, "items": items}, None
        else:
            if method == "GET":
                return 200, store.get(t.rtype, t.namespace, t.name), None
            if method == "PUT":
                # staging/src/k8s.io/apiserver/pkg/endpoints/handlers/update.go: 201 when the PUT created the object
                # (a type whose strategy allows create on update, e.g. Lease)
                existed = t.subresource or store.find(t.rtype, t.namespace, t.name) is not None
                obj = store.replace(t.rtype, t.namespace, t.name, body, t.subresource, dry_run)
                return (200 if existed else 201), obj, None
            if method == "PATCH":
                existed = store.find(t.rtype, t.namespace, t.name) is not None
                obj = store.patch(t.rtype, t.namespace, t.name, content_type, body, t.subresource,
                                  query.get("fieldManager"), dry_run)
                created = not existed and content_type.startswith(APPLY_PATCH)
                return (201 if created else 200), obj, None
            if method == "DELETE" and not t.subresource:
                options = body if isinstance(body, dict) else {}
                grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
                try:
                    grace = int(grace) if grace is not None else None
                except ValueError as e:
                    raise bad_request(f"gracePeriodSeconds: invalid value {grace!r}") from e
                obj, removed = store.delete(
                    t.rtype, t.namespace, t.name, dry_run or "All" in (options.get("dryRun") or []),
                    options.get("preconditions"), grace_period_seconds=grace,
                    propagation_policy=options.get("propagationPolicy", query.get("propagationPolicy")))
                if not removed or t.rtype.custom or t.rtype.kind == "Pod":
                    # staging/src/k8s.io/apiserver/pkg/endpoints/handlers/delete.go: 200 with the object when
                    # it is not gone yet (graceful, finalizers); 202 only for orphanDependents=false
                    accepted = not removed and options.get("orphanDependents") is False
                    return (202 if accepted else 200), obj, None
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": t.name, "group": t.rtype.group, "kind": t.rtype.plural,
                                         "uid": obj["metadata"].get("uid")}}, None
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                                f"resource ({method})")

    def _certificate_signing_request(self, t: _Target, method: str, body: Any, content_type: str, dry_run: bool
                                     ) -> tuple[int, dict, None]:
        """CSR writes follow the certificates registry's own rules (kube_certificates): the requester's identity
        is recorded on create; updates of the object, its status and its approval each change only their part."""
        store, api = self.api.store, self.api
        if method == "POST" and t.name is None:
            return 201, kube_certificates.create(store, t.rtype, self.identity, body, dry_run), None
        if t.name is None:
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                                    f"resource ({method})")
        if method == "PATCH":
            body = kube_certificates.patched_body(store.get(t.rtype, None, t.name), content_type, body)
        return 200, kube_certificates.update(store, t.rtype, t.name, t.subresource, body, self.identity,
                                             api.authorizer.authorize, dry_run), None

    def _scale(self, t: _Target, method: str, body: Any, content_type: str, query: dict[str, str]
               ) -> tuple[int, dict, None]:
        store, rtype = self.api.store, t.rtype
        obj = store.get(rtype, t.namespace, t.name or "")
        if method == "GET":
            return 200, scale_of(rtype, obj), None
        if method not in ("PUT", "PATCH"):
            raise ApiError(405, "MethodNotAllowed", "scale supports GET, PUT and PATCH")
        current = scale_of(rtype, obj)
        if method == "PUT":
            scale = body
        else:
            try:
                patcher = json_patch if content_type.startswith("application/json-patch+json") else merge_patch
                scale = patcher(current, body)
            except PatchError as e:
                raise ApiError(422, "Invalid", str(e)) from e
        replicas = scale.get("spec", {}).get("replicas") if isinstance(scale, dict) else None
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{t.name}" is invalid: spec.replicas: Invalid '
                                           "value: must be greater than or equal to 0")
        _set_dotted(obj, rtype.scale_spec_path, replicas)
        updated = store.replace(rtype, t.namespace, t.name or "", obj, dry_run=query.get("dryRun") == "All")
        return 200, scale_of(rtype, updated), None
