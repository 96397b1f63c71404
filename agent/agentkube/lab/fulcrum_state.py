"""The emulated Fulcrum Core's data and rules: participants, agent and service types, agents, tokens,
service groups, services, jobs, metrics and the vault. No HTTP here: every method takes and returns
plain values shaped like Core's JSON and raises ApiError with the status Core would answer.

Thread-safe: one lock guards everything. Time comes from an injectable clock so tests can age jobs
and heartbeats without sleeping."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentkube.lab import fulcrum_lifecycle as lifecycle
from agentkube.lab.fulcrum_properties import (
    ACTOR_AGENT,
    PropertyValidationError,
    secret_refs,
    validate_create,
    validate_update,
)

AGENT_STATUSES = ("New", "Connected", "Disconnected", "Error", "Disabled")
TIMEOUT_MESSAGE = "Job marked as failed due to exceeding maximum processing time"
DEFAULT_TOKEN_TTL = 24 * 3600.0  # Core's default token lifetime


class ApiError(Exception):
    """An error answer: HTTP status, message and, for property validation, per-field details."""

    def __init__(self, status: int, message: str, errors: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors

    def body(self) -> dict:
        if self.errors:
            return {
                "status": "Validation failed",
                "valid": False,
                "errors": [{"path": p, "message": f"{p}: {m}"} for p, m in self.errors],
            }
        reasons = {400: "Invalid request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict"}
        return {"status": reasons.get(self.status, "Error"), "error": self.message}


@dataclass(frozen=True)
class Identity:
    role: str  # "admin" | "agent"
    agent_id: str | None = None


@dataclass
class _Token:
    id: str
    name: str
    role: str
    agent_id: str | None
    participant_id: str | None
    expire_at: float
    created_at: float


@dataclass
class _Agent:
    id: str
    name: str
    provider_id: str
    agent_type_id: str
    tags: list[str]
    configuration: dict | None
    created_at: float
    updated_at: float
    status: str = "New"
    last_status_at: float | None = None


@dataclass
class _Service:
    id: str
    name: str
    status: str
    properties: dict
    provider_id: str
    consumer_id: str
    group_id: str
    agent_id: str
    service_type_id: str
    created_at: float
    updated_at: float
    agent_instance_id: str | None = None
    agent_instance_data: dict | None = None


@dataclass
class _Job:
    id: str
    action: str
    params: dict | None
    priority: int
    agent_id: str
    service_id: str
    provider_id: str
    consumer_id: str
    created_at: float
    updated_at: float
    seq: int
    status: str = "Pending"
    error_message: str = ""
    claimed_at: float | None = None
    completed_at: float | None = None


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id() -> str:
    return str(uuid.uuid4())


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _require_str(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"field '{name}' is required and must be a non-empty string")
    return value


def _optional_obj(body: dict, name: str) -> dict | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise ApiError(400, f"field '{name}' must be an object")
    return value


def _parse_uuid(value: Any, name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ApiError(400, f"field '{name}' must be a UUID") from None


def page_of(items: list, page: int, page_size: int) -> dict:
    page = max(page, 1)
    page_size = max(page_size, 1)
    total = len(items)
    pages = math.ceil(total / page_size) if total else 0
    chunk = items[(page - 1) * page_size : page * page_size]
    return {
        "items": chunk,
        "totalItems": total,
        "totalPages": pages,
        "currentPage": page,
        "hasNext": page < pages,
        "hasPrev": page > 1,
    }


@dataclass
class FulcrumState:
    admin_token: str
    clock: Callable[[], float] = time.time
    job_timeout: float | None = None  # seconds from job creation; None = Core's job maintenance off
    agent_health_timeout: float | None = None  # seconds; None = Core's agent maintenance off
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.participants: dict[str, dict] = {}
        self.agent_types: dict[str, dict] = {}
        self.service_types: dict[str, dict] = {}
        self.agents: dict[str, _Agent] = {}
        self.tokens: dict[str, _Token] = {}  # sha256(plain token) -> token; the plain value is never kept
        self.groups: dict[str, dict] = {}
        self.services: dict[str, _Service] = {}
        self.jobs: dict[str, _Job] = {}
        self.metric_types: dict[str, dict] = {}  # by name
        self.metric_entries: list[dict] = []
        self.vault: dict[str, tuple[Any, str]] = {}  # ref -> (value, "persistent"|"ephemeral")
        self.status_history: list[tuple[float, str]] = []
        self.status_history_by_agent: dict[str, list[tuple[float, str]]] = {}
        self._seq = 0

    # ------------------------------------------------------------------ auth
    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
            raise ApiError(401, "authentication required")
        token = authorization[7:].strip()
        if hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return Identity("admin")
        with self.lock:
            record = self.tokens.get(_hash(token))
            if record is None or record.expire_at <= self.clock():
                raise ApiError(403, "invalid or expired token")
            if record.role == "agent" and record.agent_id in self.agents:
                return Identity("agent", record.agent_id)
            raise ApiError(403, "token role not supported by the emulator")

    # ----------------------------------------------------------- maintenance
    def run_maintenance(self) -> None:
        """Core's job and agent maintenance, when enabled: time out old jobs, disconnect silent agents."""
        with self.lock:
            now = self.clock()
            if self.job_timeout is not None:
                for job in self.jobs.values():
                    if job.status in ("Pending", "Processing") and now - job.created_at > self.job_timeout:
                        job.status = "Failed"
                        job.error_message = TIMEOUT_MESSAGE
                        job.completed_at = now
                        job.updated_at = now
            if self.agent_health_timeout is not None:
                for agent in self.agents.values():
                    last = agent.last_status_at
                    if agent.status == "Connected" and last is not None and now - last > self.agent_health_timeout:
                        agent.status = "Disconnected"
                        agent.updated_at = now

    # ----------------------------------------------------------- rendering
    def participant_res(self, pid: str) -> dict:
        return dict(self.participants[pid])

    def agent_res(self, agent: _Agent) -> dict:
        res = {
            "id": agent.id,
            "name": agent.name,
            "status": agent.status,
            "providerId": agent.provider_id,
            "agentTypeId": agent.agent_type_id,
            "tags": list(agent.tags),
            "createdAt": rfc3339(agent.created_at),
            "updatedAt": rfc3339(agent.updated_at),
        }
        if agent.configuration is not None:
            res["configuration"] = copy.deepcopy(agent.configuration)
        return res

    def service_res(self, svc: _Service) -> dict:
        res = {
            "id": svc.id,
            "name": svc.name,
            "status": svc.status,
            "properties": copy.deepcopy(svc.properties),
            "agentInstanceId": svc.agent_instance_id,
            "providerId": svc.provider_id,
            "consumerId": svc.consumer_id,
            "agentId": svc.agent_id,
            "serviceTypeId": svc.service_type_id,
            "groupId": svc.group_id,
            "createdAt": rfc3339(svc.created_at),
            "updatedAt": rfc3339(svc.updated_at),
        }
        if svc.agent_instance_data is not None:
            res["agentInstanceData"] = copy.deepcopy(svc.agent_instance_data)
        return res

    def job_res(self, job: _Job, with_service: bool = True) -> dict:
        res: dict[str, Any] = {
            "id": job.id,
            "providerId": job.provider_id,
            "consumerId": job.consumer_id,
            "agentId": job.agent_id,
            "serviceId": job.service_id,
            "action": job.action,
            "status": job.status,
            "priority": job.priority,
            "createdAt": rfc3339(job.created_at),
            "updatedAt": rfc3339(job.updated_at),
        }
        if job.params is not None:  # Go's omitempty: a job without params has no `params` key
            res["params"] = copy.deepcopy(job.params)
        if job.error_message:
            res["errorMessage"] = job.error_message
        if job.claimed_at is not None:
            res["claimedAt"] = rfc3339(job.claimed_at)
        if job.completed_at is not None:
            res["completedAt"] = rfc3339(job.completed_at)
        if with_service and job.service_id in self.services:
            res["service"] = self.service_res(self.services[job.service_id])
        return res

    # ------------------------------------------------------------ admin side
    def create_participant(self, body: dict) -> dict:
        name = _require_str(body, "name")
        status = body.get("status", "Enabled")
        if status not in ("Enabled", "Disabled"):
            raise ApiError(400, "field 'status' must be Enabled or Disabled")
        with self.lock:
            now = self.clock()
            pid = _new_id()
            self.participants[pid] = {
                "id": pid,
                "name": name,
                "status": status,
                "createdAt": rfc3339(now),
                "updatedAt": rfc3339(now),
            }
            return self.participant_res(pid)

    def create_service_type(self, body: dict) -> dict:
        name = _require_str(body, "name")
        try:
            lifecycle.validate_schema(body.get("lifecycleSchema"))
        except lifecycle.LifecycleError as exc:
            raise ApiError(400, str(exc)) from None
        prop_schema = _optional_obj(body, "propertySchema")
        with self.lock:
            if any(st["name"] == name for st in self.service_types.values()):
                raise ApiError(409, f"service type {name!r} already exists")
            now = rfc3339(self.clock())
            sid = _new_id()
            self.service_types[sid] = {
                "id": sid,
                "name": name,
                "propertySchema": prop_schema or {"properties": {}},
                "lifecycleSchema": body["lifecycleSchema"],
                "createdAt": now,
                "updatedAt": now,
            }
            return dict(self.service_types[sid])

    def create_agent_type(self, body: dict) -> dict:
        name = _require_str(body, "name")
        st_ids = body.get("serviceTypeIds") or []
        if not isinstance(st_ids, list):
            raise ApiError(400, "field 'serviceTypeIds' must be a list")
        with self.lock:
            st_ids = [_parse_uuid(s, "serviceTypeIds") for s in st_ids]
            for st in st_ids:
                if st not in self.service_types:
                    raise ApiError(400, f"service type {st} does not exist")
            now = rfc3339(self.clock())
            aid = _new_id()
            self.agent_types[aid] = {
                "id": aid,
                "name": name,
                "serviceTypeIds": st_ids,
                "configurationSchema": _optional_obj(body, "configurationSchema") or {"properties": {}},
                "createdAt": now,
                "updatedAt": now,
            }
            return dict(self.agent_types[aid])

    def create_agent(self, body: dict) -> dict:
        name = _require_str(body, "name")
        with self.lock:
            provider_id = _parse_uuid(body.get("providerId"), "providerId")
            type_id = _parse_uuid(body.get("agentTypeId"), "agentTypeId")
            if provider_id not in self.participants:
                raise ApiError(400, f"provider {provider_id} does not exist")
            if type_id not in self.agent_types:
                raise ApiError(400, f"agent type {type_id} does not exist")
            tags = body.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ApiError(400, "field 'tags' must be a list of strings")
            now = self.clock()
            agent = _Agent(_new_id(), name, provider_id, type_id, tags, _optional_obj(body, "configuration"), now, now)
            self.agents[agent.id] = agent
            return self.agent_res(agent)

    def create_token(self, body: dict) -> dict:
        """POST /tokens. Only agent tokens are emulated; the plain value is returned once, in `value`."""
        if body.get("role") != "agent":
            raise ApiError(400, "field 'role': the emulator issues only 'agent' tokens")
        ttl = DEFAULT_TOKEN_TTL
        with self.lock:
            agent_id = _parse_uuid(body.get("scopeId"), "scopeId")
            if agent_id not in self.agents:
                raise ApiError(400, f"agent {agent_id} does not exist")
            now = self.clock()
            expire_at = now + ttl
            if body.get("expireAt") is not None:
                try:
                    expire_at = dt.datetime.fromisoformat(str(body["expireAt"])).timestamp()
                except ValueError:
                    raise ApiError(400, "field 'expireAt' must be an RFC3339 date-time") from None
            plain = secrets.token_urlsafe(32)
            token = _Token(
                _new_id(), str(body.get("name") or f"agent-{agent_id}"), "agent", agent_id, None, expire_at, now
            )
            self.tokens[_hash(plain)] = token
            return {
                "id": token.id,
                "name": token.name,
                "role": "agent",
                "agentId": agent_id,
                "expireAt": rfc3339(expire_at),
                "createdAt": rfc3339(now),
                "updatedAt": rfc3339(now),
                "value": plain,
            }

    def create_group(self, body: dict) -> dict:
        name = _require_str(body, "name")
        with self.lock:
            consumer = _parse_uuid(body.get("consumerId"), "consumerId")
            if consumer not in self.participants:
                raise ApiError(400, f"consumer {consumer} does not exist")
            now = rfc3339(self.clock())
            gid = _new_id()
            self.groups[gid] = {"id": gid, "name": name, "consumerId": consumer, "createdAt": now, "updatedAt": now}
            return dict(self.groups[gid])

    def create_metric_type(self, body: dict) -> dict:
        name = _require_str(body, "name")
        entity = body.get("entityType", "Service")
        if entity not in ("Agent", "Service", "Resource"):
            raise ApiError(400, "field 'entityType' must be Agent, Service or Resource")
        with self.lock:
            if name in self.metric_types:
                raise ApiError(409, f"metric type {name!r} already exists")
            now = rfc3339(self.clock())
            self.metric_types[name] = {
                "id": _new_id(),
                "name": name,
                "entityType": entity,
                "createdAt": now,
                "updatedAt": now,
            }
            return dict(self.metric_types[name])

    def _vault_put(self, value: Any, secret_type: str) -> str:
        ref = secrets.token_hex(16)
        self.vault[ref] = (value, secret_type)
        return ref

    def put_secret(self, ref: str, value: Any, lifetime: str = "persistent") -> None:
        with self.lock:
            self.vault[ref] = (value, lifetime)

    def create_service(self, body: dict) -> dict:
        name = _require_str(body, "name")
        with self.lock:
            st_id = _parse_uuid(body.get("serviceTypeId"), "serviceTypeId")
            group_id = _parse_uuid(body.get("groupId"), "groupId")
            agent_id = _parse_uuid(body.get("agentId"), "agentId")
            st = self.service_types.get(st_id)
            group = self.groups.get(group_id)
            agent = self.agents.get(agent_id)
            if st is None:
                raise ApiError(400, f"service type {st_id} does not exist")
            if group is None:
                raise ApiError(400, f"service group {group_id} does not exist")
            if agent is None:
                raise ApiError(400, f"agent with ID {agent_id} does not exist")
            if st_id not in self.agent_types[agent.agent_type_id]["serviceTypeIds"]:
                raise ApiError(
                    400,
                    f"agent type {self.agent_types[agent.agent_type_id]['name']} does not support service type {st_id}",
                )
            props = body.get("properties") or {}
            try:
                validated = validate_create(st["propertySchema"], props, self._vault_put)
            except PropertyValidationError as exc:
                raise ApiError(400, str(exc), exc.errors) from None
            now = self.clock()
            svc = _Service(
                _new_id(),
                name,
                st["lifecycleSchema"]["initialState"],
                validated,
                agent.provider_id,
                group["consumerId"],
                group_id,
                agent_id,
                st_id,
                now,
                now,
            )
            self.services[svc.id] = svc
            self._new_job(svc, "create", dict(validated))
            return self.service_res(svc)

    def _new_job(self, svc: _Service, action: str, params: dict | None, priority: int = 1) -> _Job:
        now = self.clock()
        self._seq += 1
        job = _Job(
            _new_id(),
            action,
            params,
            priority,
            svc.agent_id,
            svc.id,
            svc.provider_id,
            svc.consumer_id,
            now,
            now,
            self._seq,
        )
        self.jobs[job.id] = job
        return job

    def _service(self, service_id: str) -> _Service:
        try:
            svc = self.services.get(str(uuid.UUID(str(service_id))))
        except ValueError:
            svc = None
        if svc is None:
            raise ApiError(404, "resource not found")
        return svc

    def request_action(self, service_id: str, action: str, properties: dict | None = None, priority: int = 1) -> dict:
        """A user's lifecycle action: checks like Core and queues a Pending job; returns the job."""
        with self.lock:
            self.run_maintenance()
            svc = self._service(service_id)
            st = self.service_types[svc.service_type_id]
            try:
                lifecycle.ensure_action_allowed(st["lifecycleSchema"], svc.status, action)
            except lifecycle.LifecycleError as exc:
                raise ApiError(400, str(exc)) from None
            active = [j for j in self.jobs.values() if j.service_id == svc.id and j.status in ("Pending", "Processing")]
            if active:
                raise ApiError(400, f"cannot update service {svc.id} while there is an active job {active[-1].id}")
            params: dict | None = None
            if action == "update":
                try:
                    changes = validate_update(
                        st["propertySchema"], svc.properties, properties or {}, svc.status, self._vault_put
                    )
                except PropertyValidationError as exc:
                    raise ApiError(400, str(exc), exc.errors) from None
                params = {**svc.properties, **changes}
            elif action == "create":
                params = dict(svc.properties)
            job = self._new_job(svc, action, params, priority)
            return self.job_res(job)

    def rename_service(self, service_id: str, name: str) -> None:
        with self.lock:
            svc = self._service(service_id)
            svc.name = name
            svc.updated_at = self.clock()

    def get_service(self, service_id: str, identity: Identity | None = None) -> dict:
        with self.lock:
            self.run_maintenance()
            svc = self._service(service_id)
            if identity is not None and identity.role == "agent" and svc.agent_id != identity.agent_id:
                raise ApiError(403, "service is not assigned to this agent")
            return self.service_res(svc)

    def get_job(self, job_id: str, identity: Identity | None = None) -> dict:
        with self.lock:
            self.run_maintenance()
            job = self._job(job_id)
            if identity is not None and identity.role == "agent" and job.agent_id != identity.agent_id:
                raise ApiError(403, "job is not assigned to this agent")
            return self.job_res(job)

    def get_agent(self, agent_id: str) -> dict:
        with self.lock:
            self.run_maintenance()
            agent = self.agents.get(agent_id)
            if agent is None:
                raise ApiError(404, "resource not found")
            return self.agent_res(agent)

    def list_jobs(self) -> list[dict]:
        with self.lock:
            self.run_maintenance()
            return [self.job_res(j) for j in sorted(self.jobs.values(), key=lambda j: j.seq)]

    def list_services(self, identity: Identity) -> list[dict]:
        with self.lock:
            self.run_maintenance()
            return [
                self.service_res(s)
                for s in self.services.values()
                if identity.role == "admin" or s.agent_id == identity.agent_id
            ]

    # ------------------------------------------------------------ agent side
    def _agent(self, identity: Identity) -> _Agent:
        if identity.role != "agent" or identity.agent_id not in self.agents:
            raise ApiError(403, "this operation requires an agent token")
        return self.agents[identity.agent_id]

    def agent_me(self, identity: Identity) -> dict:
        with self.lock:
            self.run_maintenance()
            return self.agent_res(self._agent(identity))

    def update_agent_status(self, identity: Identity, body: dict) -> dict:
        status = body.get("status")
        if status not in AGENT_STATUSES:
            raise ApiError(400, f"field 'status' must be one of {', '.join(AGENT_STATUSES)}")
        with self.lock:
            agent = self._agent(identity)
            now = self.clock()
            agent.status = status
            agent.last_status_at = now
            agent.updated_at = now
            self.status_history.append((now, status))
            self.status_history_by_agent.setdefault(agent.id, []).append((now, status))
            return self.agent_res(agent)

    def pending_jobs(self, identity: Identity, limit: int) -> list[dict]:
        """At most one Pending job per service group (highest priority, then oldest); groups with a job
        in Processing are skipped; ordered by priority (higher first) then creation."""
        with self.lock:
            self.run_maintenance()
            agent = self._agent(identity)
            mine = [j for j in self.jobs.values() if j.agent_id == agent.id]
            busy = {self.services[j.service_id].group_id for j in mine if j.status == "Processing"}
            best: dict[str, _Job] = {}
            for job in sorted((j for j in mine if j.status == "Pending"), key=lambda j: (-j.priority, j.seq)):
                group = self.services[job.service_id].group_id
                if group not in busy and group not in best:
                    best[group] = job
            ordered = sorted(best.values(), key=lambda j: (-j.priority, j.seq))
            return [self.job_res(j) for j in ordered[:limit]]

    def _job(self, job_id: str) -> _Job:
        try:
            job = self.jobs.get(str(uuid.UUID(str(job_id))))
        except ValueError:
            job = None
        if job is None:
            raise ApiError(404, "resource not found")
        return job

    def _agent_job(self, identity: Identity, job_id: str) -> _Job:
        agent = self._agent(identity)
        job = self._job(job_id)
        if job.agent_id != agent.id:
            raise ApiError(403, "job is not assigned to this agent")
        return job

    def claim_job(self, identity: Identity, job_id: str) -> None:
        with self.lock:
            self.run_maintenance()
            job = self._agent_job(identity, job_id)
            if job.status != "Pending":
                raise ApiError(400, "cannot claim a job not in pending status")
            now = self.clock()
            job.status = "Processing"
            job.claimed_at = now
            job.updated_at = now

    def complete_job(self, identity: Identity, job_id: str, body: dict) -> None:
        instance_id = body.get("agentInstanceId")
        if instance_id is not None and not isinstance(instance_id, str):
            raise ApiError(400, "field 'agentInstanceId' must be a string")
        data = _optional_obj(body, "agentInstanceData")
        updates = _optional_obj(body, "properties")
        with self.lock:
            self.run_maintenance()
            job = self._agent_job(identity, job_id)
            if job.status != "Processing":
                raise ApiError(400, "cannot complete a job not in processing status")
            svc = self.services[job.service_id]
            st = self.service_types[svc.service_type_id]
            schema = st["lifecycleSchema"]
            # Everything is checked before anything changes (Core does it in one transaction).
            changes: dict = {}
            if updates:
                try:
                    changes = validate_update(
                        st["propertySchema"], svc.properties, updates, svc.status, self._vault_put, actor=ACTOR_AGENT
                    )
                except PropertyValidationError as exc:
                    raise ApiError(400, str(exc), exc.errors) from None
            try:
                new_status = lifecycle.next_state(schema, svc.status, job.action)
            except lifecycle.LifecycleError as exc:
                raise ApiError(400, str(exc)) from None
            if instance_id is not None:
                clash = [s for s in self.services.values() if s.agent_instance_id == instance_id and s.id != svc.id]
                if clash:
                    raise ApiError(409, f"agentInstanceId {instance_id!r} is already used by service {clash[0].id}")
            now = self.clock()
            job.status, job.completed_at, job.updated_at = "Completed", now, now
            svc.properties = {**svc.properties, **changes}
            svc.status = new_status
            if data is not None:
                svc.agent_instance_data = data
            if instance_id is not None:
                svc.agent_instance_id = instance_id
            if job.action == "update":
                svc.properties = dict(job.params or {})
            svc.updated_at = now
            self._drop_secrets(svc, job, lifecycle.is_terminal(schema, new_status))
            if lifecycle.is_terminal(schema, new_status):
                svc.agent_instance_id = None

    def _drop_secrets(self, svc: _Service, job: _Job, terminal: bool) -> None:
        """Ephemeral secrets end with the job that used them; all secrets end with the service."""
        for ref in set(secret_refs(job.params)) | set(secret_refs(svc.properties)):
            entry = self.vault.get(ref)
            if entry is not None and (terminal or entry[1] == "ephemeral"):
                del self.vault[ref]

    def fail_job(self, identity: Identity, job_id: str, body: dict) -> None:
        message = body.get("errorMessage")
        if not isinstance(message, str):
            raise ApiError(400, "field 'errorMessage' is required and must be a string")
        with self.lock:
            self.run_maintenance()
            job = self._agent_job(identity, job_id)
            if job.status != "Processing":
                raise ApiError(400, "cannot fail a job not in processing status")
            svc = self.services[job.service_id]
            schema = self.service_types[svc.service_type_id]["lifecycleSchema"]
            try:
                new_status = lifecycle.next_state(schema, svc.status, job.action, message)
            except lifecycle.LifecycleError as exc:
                # Core rolls the whole failure back: the job stays Processing.
                raise ApiError(400, str(exc)) from None
            now = self.clock()
            job.status, job.error_message, job.updated_at = "Failed", message, now
            svc.status = new_status
            svc.updated_at = now

    def create_metric_entry(self, identity: Identity, body: dict) -> dict:
        resource_id = _require_str(body, "resourceId")
        type_name = _require_str(body, "typeName")
        value = body.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ApiError(400, "field 'value' is required and must be a number")
        with self.lock:
            agent = self._agent(identity)
            mtype = self.metric_types.get(type_name)
            if mtype is None:
                raise ApiError(400, f"metric type {type_name!r} not found")
            svc: _Service | None = None
            if body.get("serviceId") is not None:
                svc = self.services.get(_parse_uuid(body["serviceId"], "serviceId"))
            elif body.get("agentInstanceId") is not None:
                svc = next(
                    (
                        s
                        for s in self.services.values()
                        if s.agent_id == agent.id and s.agent_instance_id == body["agentInstanceId"]
                    ),
                    None,
                )
            else:
                raise ApiError(400, "one of 'serviceId' or 'agentInstanceId' is required")
            if svc is None or svc.agent_id != agent.id:
                raise ApiError(400, "service not found for this agent")
            now = rfc3339(self.clock())
            entry = {
                "id": _new_id(),
                "providerId": svc.provider_id,
                "consumerId": svc.consumer_id,
                "agentId": agent.id,
                "serviceId": svc.id,
                "resourceId": resource_id,
                "value": value,
                "typeId": mtype["id"],
                "createdAt": now,
                "updatedAt": now,
            }
            self.metric_entries.append(entry)
            return dict(entry)

    def get_secret(self, identity: Identity, ref: str) -> dict:
        with self.lock:
            self._agent(identity)
            if ref not in self.vault:
                raise ApiError(404, "secret not found")
            return {"value": self.vault[ref][0]}
