"""The emulated Fulcrum Core's data and rules: participants, agent and service types, agents, tokens,
service groups, services, jobs, metrics and the vault. No HTTP here: every method takes and returns
plain values shaped like Core's JSON and raises ApiError with the status Core would answer.

Every rule names the fulcrumproject/core file it is transcribed from. Thread-safe: one lock guards
everything (Core's claim race is emulated on purpose, see claim_job). Time comes from an injectable clock
so tests can age jobs and heartbeats without sleeping; maintenance runs on Core's schedule in that clock
(see tick)."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agentkube_lab import fulcrum_lifecycle as lifecycle
from agentkube_lab import go_template
from agentkube_lab.fulcrum_properties import (
    ACTOR_AGENT,
    ACTOR_USER,
    ENGINE_AGENT_CONFIG,
    ENGINE_SERVICE,
    VAULT_PREFIX,
    PropertyValidationError,
    SchemaError,
    apply_create,
    apply_update,
    check_decodable,
    ephemeral_refs,
    go_type,
    secret_refs,
    validate_schema,
)

AGENT_STATUSES = ("New", "Connected", "Disconnected", "Error", "Disabled")
JOB_STATUSES = ("Pending", "Processing", "Completed", "Failed")
TIMEOUT_MESSAGE = "Job marked as failed due to exceeding maximum processing time"  # pkg/domain/service.go
DEFAULT_TOKEN_TTL = 24 * 3600.0  # Core's default token lifetime
# pkg/config/config.go defaults: JOB_MAINTENANCE_INTERVAL 24h, JOB_RETENTION_INTERVAL 30 days,
# JOB_TIMEOUT_INTERVAL 5 min, AGENT_HEALTH_TIMEOUT 30 s (the agent maintenance runs every health timeout)
CORE_JOB_MAINTENANCE_INTERVAL = 24 * 3600.0
CORE_JOB_RETENTION = 30 * 24 * 3600.0
CORE_JOB_TIMEOUT = 300.0
CORE_AGENT_HEALTH_TIMEOUT = 30.0
NOT_FOUND = "resource not found: record not found"  # domain.NotFoundError around gorm.ErrRecordNotFound
INSTALL_TOKEN_TTL = 300.0  # pkg/domain/agent_install_token.go installTokenTTL = 5 * time.Minute
INSTALL_CONFIG_PATH = "/api/v1/agents/install/{token}/config"  # pkg/api/handlers_agent_install_token.go
CMD_TEMPLATE_EXTRA_KEYS = ("configUrl", "authToken")  # pkg/domain/agent_type_template.go


class ApiError(Exception):
    """An error answer: HTTP status, message and, for property validation, per-field details."""

    def __init__(self, status: int, message: str, errors: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors

    def body(self) -> dict:
        # pkg/api/response_error.go: ErrValidation (a schema.ValidationError returned as is), ErrRes otherwise;
        # ErrNotFound carries no error text
        if self.errors is not None:
            return {
                "status": "Validation failed",
                "valid": False,
                "errors": [{"path": p, "message": m} for p, m in self.errors],
            }
        reasons = {
            400: "Invalid request",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Resource not found",
            409: "Conflict",
            500: "Internal server error",
        }
        if self.status == 404:
            return {"status": reasons[404]}
        return {"status": reasons.get(self.status, "Error"), "error": self.message}


def _invalid(message: str) -> ApiError:
    """domain.InvalidInputError -> 400 "invalid input: ..." (pkg/domain/errors.go, pkg/api/response_error.go)."""
    return ApiError(400, f"invalid input: {message}")


def _validation(exc: PropertyValidationError) -> ApiError:
    """A schema.ValidationError returned unwrapped -> 400 Validation failed with the details."""
    return ApiError(400, exc.text(), exc.errors)


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
class _InstallToken:
    """pkg/domain/agent_install_token.go AgentInstallToken: one per agent, the plain token never kept (its hash
    is), a bootstrap agent-role bearer minted with it and expiring with it. `used_at`: the emulator's single use
    (see fetch_install_config)."""

    id: str
    agent_id: str
    token_hashed: str
    expires_at: float
    created_at: float
    bootstrap_hash: str
    used_at: float | None = None


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
    # pkg/domain/agent.go NewAgent: a new agent is Disconnected, its LastStatusUpdate is its creation time
    status: str = "Disconnected"
    last_status_at: float | None = None


@dataclass
class _Service:
    id: str
    name: str
    status: str
    properties: dict | None
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


def _optional_obj(body: dict, name: str, struct: str = "") -> dict | None:
    """A *properties.JSON field: an object or null; anything else fails encoding/json's decode."""
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise ApiError(
            400,
            f"json: cannot unmarshal {go_json_kind(value)} into Go struct field {struct}{name} "
            "of type map[string]interface {}",
        )
    return value


def _optional_str(body: dict, name: str, struct: str = "") -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(
            400, f"json: cannot unmarshal {go_json_kind(value)} into Go struct field {struct}{name} of type string"
        )
    return value


def go_json_kind(value: Any) -> str:
    """How encoding/json names a JSON value in an UnmarshalTypeError."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parse_uuid(value: Any) -> str:
    """properties.ParseUUID (google/uuid Parse) for a path id: 400 when it is not a UUID
    (pkg/middlewares/request.go ID)."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ApiError(400, f"invalid UUID format: {value}") from None


def _parse_uuid(value: Any, name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ApiError(400, f"field '{name}' must be a UUID") from None


def page_of(items: list, page: int, page_size: int) -> dict:
    """domain.NewPaginatedResult (pkg/domain/pagination.go)."""
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


def _sorted(items: list, fields: dict[str, Callable[[Any], Any]], sort: str | None) -> list:
    """MapSortApplier (pkg/database/gorm_pagination.go): `sort=[+|-]field`; an unknown field is an
    undecorated error, so 500."""
    if not sort:
        return items
    ascending = not sort.startswith("-")
    name = sort[1:] if sort[0] in "+-" else sort
    if name not in fields:
        raise ApiError(500, "cannot sort by field ")
    key = fields[name]
    present = [i for i in items if key(i) is not None]
    absent = [i for i in items if key(i) is None]  # NULLs sort last ascending and first descending (Postgres)
    present.sort(key=key, reverse=not ascending)
    return present + absent if ascending else absent + present


def _by_id(table: dict[str, Any], raw_id: str) -> Any:
    """The entry of table under a UUID id, whatever its spelling; 404 for a malformed or unknown id."""
    try:
        entry = table.get(str(uuid.UUID(str(raw_id))))
    except ValueError:
        entry = None
    if entry is None:
        raise ApiError(404, NOT_FOUND)
    return entry


@dataclass
class FulcrumState:
    admin_token: str
    clock: Callable[[], float] = time.time
    job_timeout: float | None = None  # seconds from job creation; None = Core's job maintenance off
    agent_health_timeout: float | None = None  # seconds; None = Core's agent maintenance off
    job_maintenance_interval: float = CORE_JOB_MAINTENANCE_INTERVAL
    agent_maintenance_interval: float | None = None  # None: every agent_health_timeout, as Core schedules it
    job_retention: float = CORE_JOB_RETENTION
    claim_race: bool = False
    claim_race_window: float = 0.05
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
        self.maintenance_runs: list[tuple[str, float]] = []  # ("job"|"agent", clock time of the run)
        self.install_tokens: dict[str, _InstallToken] = {}  # agent id -> its install token
        # why each install fetch answered 404 (Core's slog line: the reason only, never the token)
        self.install_fetch_misses: list[str] = []
        self.public_base_url = "http://127.0.0.1"  # Core's PUBLIC_BASE_URL; the emulator sets its own at start
        self._seq = 0
        self._next_due: dict[str, float] = {}
        self.restart_schedule()

    # ------------------------------------------------------------------ auth
    def authenticate(self, authorization: str | None) -> Identity:
        # pkg/middlewares/auth.go Auth: no "Bearer " header -> 401; the authenticator's error -> 403
        if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
            raise ApiError(401, "invalid token format, expected 'Bearer <token>'")
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
    # pkg/app/worker.go: gocron DurationJob tasks, singleton mode. JobMaintenanceWorker runs every
    # JobConfig.Maintenance (FailTimeoutServicesAndJobs, then DeleteOldCompletedJobs); UnhealthyAgentsWorker
    # every AgentConfig.HealthTimeout (MarkInactiveAgentsAsDisconnected). Each runs only when enabled
    # (JOB_MAINTENANCE / AGENT_MAINTENANCE; here: job_timeout / agent_health_timeout set). A DurationJob's
    # first run is one interval after the scheduler starts.
    def _intervals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.job_timeout is not None:
            out["job"] = self.job_maintenance_interval
        if self.agent_health_timeout is not None:
            out["agent"] = self.agent_maintenance_interval or self.agent_health_timeout
        return out

    def restart_schedule(self) -> None:
        """(Re)start the maintenance schedule now: each task first runs one interval from now."""
        with self.lock:
            now = self.clock()
            self._next_due = {task: now + interval for task, interval in self._intervals().items()}

    def tick(self) -> None:
        """Run the maintenance tasks that are due by the clock. After a jump of the clock over several
        intervals, a task runs once, at its last due time (every condition is monotonic in time, so that is
        what the runs in between would have done)."""
        with self.lock:
            now = self.clock()
            for task, interval in self._intervals().items():
                due = self._next_due.setdefault(task, now + interval)
                if now < due:
                    continue
                at = due + math.floor((now - due) / interval) * interval
                self._next_due[task] = at + interval
                if task == "job":
                    self.run_job_maintenance(at)
                else:
                    self.run_agent_maintenance(at)

    def run_job_maintenance(self, now: float | None = None) -> None:
        """FailTimeoutServicesAndJobs (pkg/domain/service.go; GetTimeOutJobs, pkg/database/gorm_repo_job.go):
        Pending/Processing jobs created before now - timeout fail with completedAt set; the service keeps
        its state. Then DeleteOldCompletedJobs: Completed/Failed jobs whose completedAt is older than the
        retention are deleted (a job failed by its agent has no completedAt and stays)."""
        with self.lock:
            now = self.clock() if now is None else now
            self.maintenance_runs.append(("job", now))
            timeout = self.job_timeout if self.job_timeout is not None else CORE_JOB_TIMEOUT
            for job in self.jobs.values():
                if job.status in ("Pending", "Processing") and job.created_at < now - timeout:
                    job.status = "Failed"
                    job.error_message = TIMEOUT_MESSAGE
                    job.completed_at = now
                    job.updated_at = now
            for job in list(self.jobs.values()):
                if (
                    job.status in ("Completed", "Failed")
                    and job.completed_at is not None
                    and job.completed_at < now - self.job_retention
                ):
                    del self.jobs[job.id]

    def run_agent_maintenance(self, now: float | None = None) -> None:
        """MarkInactiveAgentsAsDisconnected (pkg/database/gorm_repo_agent.go): Connected agents whose last
        status update is older than the health timeout become Disconnected."""
        with self.lock:
            now = self.clock() if now is None else now
            self.maintenance_runs.append(("agent", now))
            timeout = self.agent_health_timeout if self.agent_health_timeout is not None else CORE_AGENT_HEALTH_TIMEOUT
            for agent in self.agents.values():
                last = agent.last_status_at
                if agent.status == "Connected" and (last is None or last < now - timeout):
                    agent.status = "Disconnected"
                    agent.updated_at = now

    def run_maintenance(self) -> None:
        """Both maintenance tasks that are enabled, now, whatever the schedule (for tests)."""
        with self.lock:
            if self.job_timeout is not None:
                self.run_job_maintenance()
            if self.agent_health_timeout is not None:
                self.run_agent_maintenance()

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
        # pkg/api/handlers_service.go ServiceRes: agentInstanceId and agentInstanceData are omitempty
        res = {
            "id": svc.id,
            "name": svc.name,
            "status": svc.status,
            "providerId": svc.provider_id,
            "consumerId": svc.consumer_id,
            "agentId": svc.agent_id,
            "serviceTypeId": svc.service_type_id,
            "groupId": svc.group_id,
            "createdAt": rfc3339(svc.created_at),
            "updatedAt": rfc3339(svc.updated_at),
        }
        if svc.properties is not None:  # nil after an update job without params (POST /services/{id}/update)
            res["properties"] = copy.deepcopy(svc.properties)
        if svc.agent_instance_id is not None:
            res["agentInstanceId"] = svc.agent_instance_id
        if svc.agent_instance_data is not None:
            res["agentInstanceData"] = copy.deepcopy(svc.agent_instance_data)
        return res

    def job_res(self, job: _Job, with_service: bool = True, preloads: bool = False) -> dict:
        """JobToRes (pkg/api/handlers_job.go). GET /jobs/pending preloads the service only; GET /jobs and
        GET /jobs/{id} also the agent, provider and consumer (pkg/database/gorm_repo_job.go)."""
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
        if preloads:
            if job.agent_id in self.agents:
                res["agent"] = self.agent_res(self.agents[job.agent_id])
            for key, pid in (("provider", job.provider_id), ("consumer", job.consumer_id)):
                if pid in self.participants:
                    res[key] = self.participant_res(pid)
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
        """serviceTypeCommander.Create (pkg/domain/service_type.go): the propertySchema through the service
        property engine's ValidateSchema, then the name and the lifecycle (LifecycleSchema.Validate). A
        duplicate name breaks the unique index: an undecorated database error, so 500."""
        try:
            check_decodable(body.get("propertySchema"), "CreateServiceTypeReq.propertySchema")
        except SchemaError as exc:
            raise ApiError(400, str(exc)) from None
        lifecycle_schema = body.get("lifecycleSchema")
        if lifecycle_schema is not None and not isinstance(lifecycle_schema, dict):
            raise ApiError(400, "json: cannot unmarshal into Go struct field CreateServiceTypeReq.lifecycleSchema")
        name = body.get("name") if isinstance(body.get("name"), str) else ""
        prop_schema = body.get("propertySchema") or {}
        try:
            validate_schema(prop_schema, ENGINE_SERVICE)
        except SchemaError as exc:
            raise _invalid(f"invalid property schema: {exc}") from None
        if not name:
            raise _invalid("service type name cannot be empty")
        try:
            lifecycle.validate_schema(lifecycle_schema or {})
        except lifecycle.LifecycleError as exc:
            raise _invalid(f"lifecycle schema validation failed: {exc}") from None
        with self.lock:
            if any(st["name"] == name for st in self.service_types.values()):
                raise ApiError(
                    500,
                    'ERROR: duplicate key value violates unique constraint "idx_service_types_name" (SQLSTATE 23505)',
                )
            now = rfc3339(self.clock())
            sid = _new_id()
            self.service_types[sid] = {
                "id": sid,
                "name": name,
                "propertySchema": copy.deepcopy(prop_schema),
                "lifecycleSchema": copy.deepcopy(lifecycle_schema),
                "createdAt": now,
                "updatedAt": now,
            }
            return copy.deepcopy(self.service_types[sid])

    def create_agent_type(self, body: dict) -> dict:
        """agentTypeCommander.Create (pkg/domain/agent_type.go ValidateWithEngine): the name, then the
        configurationSchema through the agent configuration engine's ValidateSchema (at least one property)."""
        st_ids = body.get("serviceTypeIds") or []
        if not isinstance(st_ids, list):
            raise ApiError(400, "field 'serviceTypeIds' must be a list")
        try:
            check_decodable(body.get("configurationSchema"), "CreateAgentTypeReq.configurationSchema")
        except SchemaError as exc:
            raise ApiError(400, str(exc)) from None
        name = body.get("name") if isinstance(body.get("name"), str) else ""
        if not name:
            raise _invalid("agent type name cannot be empty")
        config_schema = body.get("configurationSchema") or {}
        try:
            validate_schema(config_schema, ENGINE_AGENT_CONFIG)
        except SchemaError as exc:
            raise _invalid(f"configurationSchema: {exc}") from None
        templates = {k: _optional_str(body, k, "CreateAgentTypeReq.") or "" for k in
                     ("configTemplate", "cmdTemplate", "configContentType")}
        # NewAgentType: an empty configContentType is text/plain
        templates["configContentType"] = templates["configContentType"] or "text/plain"
        _validate_install_templates(config_schema, templates)
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
                "configurationSchema": copy.deepcopy(config_schema),
                **templates,
                "createdAt": now,
                "updatedAt": now,
            }
            return copy.deepcopy(self.agent_types[aid])

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
            configuration = _optional_obj(body, "configuration")
            if configuration is not None:
                # pkg/domain/agent.go agentCommander.Create: a given configuration goes through the agent config
                # engine's ApplyCreate against the type's configurationSchema: unknown keys dropped, defaults
                # filled, secrets moved to the vault (vault:// references), errors "configuration: ..." (400)
                try:
                    configuration = apply_create(self.agent_types[type_id].get("configurationSchema"),
                                                 configuration, self._vault_put)
                except PropertyValidationError as exc:
                    raise _invalid(f"configuration: {exc}") from None
            now = self.clock()
            agent = _Agent(_new_id(), name, provider_id, type_id, tags, configuration, now, now)
            agent.last_status_at = now  # pkg/domain/agent.go NewAgent: LastStatusUpdate = now
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
        ref = _new_id()  # pkg/schema/engine.go generateSecretReference: a UUID
        self.vault[ref] = (value, secret_type)
        return ref

    def _vault_delete(self, ref: str) -> None:
        self.vault.pop(ref, None)

    def put_secret(self, ref: str, value: Any, lifetime: str = "persistent") -> None:
        with self.lock:
            self.vault[ref] = (value, lifetime)

    def create_service(self, body: dict, identity: Identity | None = None) -> dict:
        """CreateServiceWithAgent (pkg/domain/service.go), behind POST /services' scope extractor
        (pkg/api/handlers_service.go: the group's auth scope; an unknown group -> 403)."""
        name = body.get("name") if isinstance(body.get("name"), str) else ""
        props = _optional_obj(body, "properties", "CreateServiceReq.") or {}
        with self.lock:
            group_id = _parse_uuid(body.get("groupId"), "groupId")
            group = self.groups.get(group_id)
            if group is None:
                raise ApiError(403, f"cannot load resource: {NOT_FOUND}")
            st_id = _parse_uuid(body.get("serviceTypeId"), "serviceTypeId")
            agent_id = _parse_uuid(body.get("agentId"), "agentId")
            agent = self.agents.get(agent_id)
            if agent is None:
                raise _invalid(f"agent with ID {agent_id} does not exist")
            st = self.service_types.get(st_id)
            if st is None:
                raise ApiError(404, NOT_FOUND)
            if st_id not in self.agent_types[agent.agent_type_id]["serviceTypeIds"]:
                type_name = self.agent_types[agent.agent_type_id]["name"]
                raise _invalid(f"agent type {type_name} does not support service type {st_id}")
            if not name:
                raise _invalid("service name cannot be empty")
            actor = ACTOR_AGENT if identity is not None and identity.role == "agent" else ACTOR_USER
            try:
                validated = apply_create(st["propertySchema"], props, self._vault_put, actor)
            except PropertyValidationError as exc:
                raise _validation(exc) from None
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
            self._new_job(svc, "create", copy.deepcopy(validated))
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
        return _by_id(self.services, service_id)

    def authz_service(self, identity: Identity, service_id: str) -> _Service:
        """AuthzFromID (pkg/middlewares/auth.go) on a service: the id must parse (400), the loader's error
        (no such service) is Forbidden, and an agent may only reach its own services."""
        sid = parse_uuid(service_id)
        with self.lock:
            svc = self.services.get(sid)
            if svc is None:
                raise ApiError(403, f"cannot load resource: {NOT_FOUND}")
            if identity.role == "agent" and svc.agent_id != identity.agent_id:
                raise ApiError(403, "access denied: object context does not match identity")
            return svc

    def request_action(self, service_id: str, action: str, properties: dict | None = None, priority: int = 1) -> dict:
        """A user's lifecycle action: DoServiceAction, or UpdateService for `update` with properties
        (pkg/domain/service.go); queues a Pending job and returns it."""
        with self.lock:
            self.tick()
            svc = self._service(service_id)
            st = self.service_types[svc.service_type_id]
            params: dict | None = None
            if action == "update" and properties is not None:
                # UpdateService: the properties through the engine first, then the lifecycle checks
                try:
                    params = apply_update(
                        st["propertySchema"], svc.properties, properties, svc.status, self._vault_put, ACTOR_USER,
                        self._vault_delete,
                    )
                except PropertyValidationError as exc:
                    raise _validation(exc) from None
            try:
                lifecycle.ensure_action_allowed(st["lifecycleSchema"], svc.status, action)
            except lifecycle.LifecycleError as exc:
                raise _invalid(str(exc)) from None
            active = [j for j in self.jobs.values() if j.service_id == svc.id and j.status in ("Pending", "Processing")]
            if active:
                raise _invalid(f"cannot update service {svc.id} while there is an active job {active[-1].id}")
            job = self._new_job(svc, action, params, priority)
            return self.job_res(job)

    def rename_service(self, service_id: str, name: str) -> None:
        with self.lock:
            svc = self._service(service_id)
            svc.name = name
            svc.updated_at = self.clock()

    def get_service(self, service_id: str, identity: Identity | None = None) -> dict:
        with self.lock:
            self.tick()
            svc = self._service(service_id) if identity is None else self.authz_service(identity, service_id)
            return self.service_res(svc)

    def get_job(self, job_id: str, identity: Identity | None = None) -> dict:
        """GET /jobs/{id} (pkg/api/handlers_job.go: AuthzFromID, read) for an identity; without one, the
        lab's own look-up (404 when there is no such job)."""
        with self.lock:
            self.tick()
            job = self._job(job_id) if identity is None else self.authz_job(identity, job_id)
            return self.job_res(job, preloads=identity is not None)

    def get_agent(self, agent_id: str) -> dict:
        with self.lock:
            self.tick()
            agent = self.agents.get(agent_id)
            if agent is None:
                raise ApiError(404, NOT_FOUND)
            return self.agent_res(agent)

    def list_jobs(self) -> list[dict]:
        with self.lock:
            self.tick()
            return [self.job_res(j) for j in sorted(self.jobs.values(), key=lambda j: j.seq)]

    def query_jobs(self, identity: Identity, filters: dict[str, list[str]], sort: str | None = None) -> list[dict]:
        """GET /jobs (pkg/api/handlers_job.go List; pkg/database/gorm_repo_job.go): filters `action`,
        `status`, `agentId`, `serviceId` (each value list is an IN), an agent sees only its own jobs
        (providerConsumerAgentAuthzFilterApplier). An unknown filter or a value that does not parse is an
        undecorated error in Core: 500."""
        parsers: dict[str, Callable[[str], str]] = {
            "action": lambda v: v,
            "status": _parse_job_status,
            "agentId": _parse_filter_uuid,
            "serviceId": _parse_filter_uuid,
        }
        getters: dict[str, Callable[[_Job], str]] = {
            "action": lambda j: j.action,
            "status": lambda j: j.status,
            "agentId": lambda j: j.agent_id,
            "serviceId": lambda j: j.service_id,
        }
        wanted: dict[str, set[str]] = {}
        for name, values in filters.items():
            if name not in parsers:
                raise ApiError(500, f"cannot filter by field {name}")
            wanted[name] = {parsers[name](v) for v in values}
        with self.lock:
            self.tick()
            jobs = sorted(self.jobs.values(), key=lambda j: j.seq)
            if identity.role == "agent":
                jobs = [j for j in jobs if j.agent_id == identity.agent_id]
            for name, values in wanted.items():
                jobs = [j for j in jobs if getters[name](j) in values]
            jobs = _sorted(
                jobs,
                {
                    "priority": lambda j: j.priority,
                    "createdAt": lambda j: j.created_at,
                    "claimedAt": lambda j: j.claimed_at,
                    "completedAt": lambda j: j.completed_at,
                },
                sort,
            )
            return [self.job_res(j, preloads=True) for j in jobs]

    def list_services(
        self, identity: Identity, filters: dict[str, list[str]] | None = None, sort: str | None = None
    ) -> list[dict]:
        """GET /services (pkg/database/gorm_repo_service.go): filters `name` (contains, case-insensitive, any
        of the values) and `currentStatus` (IN); an agent sees only its own services; unknown filter -> 500."""
        filters = filters or {}
        for name in filters:
            if name not in ("name", "currentStatus"):
                raise ApiError(500, f"cannot filter by field {name}")
        with self.lock:
            self.tick()
            services = [
                s for s in self.services.values() if identity.role == "admin" or s.agent_id == identity.agent_id
            ]
            if names := [v.strip().lower() for v in filters.get("name", []) if v.strip()]:
                services = [s for s in services if any(n in s.name.lower() for n in names)]
            if "currentStatus" in filters:
                services = [s for s in services if s.status in filters["currentStatus"]]
            services = _sorted(services, {"name": lambda s: s.name}, sort)
            return [self.service_res(s) for s in services]

    def delete_job(self, job_id: str) -> None:
        """Remove a job as Core's retention does (DeleteOldCompletedJobs) or an operator would in the
        database: later calls on it answer 403 (AuthzFromID's loader fails)."""
        with self.lock:
            self.jobs.pop(self._job(job_id).id, None)

    # ------------------------------------------------------------ agent side
    def _agent(self, identity: Identity) -> _Agent:
        if identity.role != "agent" or identity.agent_id not in self.agents:
            raise ApiError(403, "this operation requires an agent token")
        return self.agents[identity.agent_id]

    def agent_me(self, identity: Identity) -> dict:
        with self.lock:
            self.tick()
            return self.agent_res(self._agent(identity))

    def update_agent_status(self, identity: Identity, body: dict) -> dict:
        """UpdateStatusMe (pkg/api/handlers_agent.go, pkg/domain/agent.go UpdateStatus + Validate)."""
        status = _optional_str(body, "status", "UpdateAgentStatusReq.") or ""
        if status not in AGENT_STATUSES:
            raise _invalid(f"invalid status: invalid agent status: {status}")
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
        """GetPendingJobsForAgent (pkg/database/gorm_repo_job.go): at most one Pending job per service group
        (highest priority, then oldest); groups with a job in Processing are skipped."""
        with self.lock:
            self.tick()
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
        return _by_id(self.jobs, job_id)

    def authz_job(self, identity: Identity, job_id: str) -> _Job:
        """AuthzFromID (pkg/middlewares/auth.go) with the job repository's AuthScope: the id must parse
        (400, middlewares.ID); a job that does not exist makes the loader fail, and that is answered
        403 Forbidden, not 404; a job of another agent does not match the identity's scope: 403 too."""
        jid = parse_uuid(job_id)
        with self.lock:
            job = self.jobs.get(jid)
            if job is None:
                raise ApiError(403, f"cannot load resource: {NOT_FOUND}")
            if identity.role == "agent" and job.agent_id != identity.agent_id:
                raise ApiError(403, "access denied: object context does not match identity")
            return job

    def set_claim_race(self, enabled: bool, window: float | None = None) -> None:
        with self.lock:
            self.claim_race = bool(enabled)
            if window is not None:
                if window < 0:
                    raise ValueError("window must be >= 0")
                self.claim_race_window = window

    def claim_job(self, identity: Identity, job_id: str) -> None:
        """jobCommander.Claim (pkg/domain/job.go): get the job, Claim() it in memory, Save() it, with no lock
        and no transaction. With the claim race on, the get and the save are `claim_race_window` seconds
        apart, so concurrent claimers of one Pending job all read it Pending and all answer 204; the last
        save wins (Save writes every column of its stale copy)."""
        with self.lock:
            self.tick()
            job = self.authz_job(identity, job_id)
            snapshot = replace(job)  # JobRepo().Get
            race, window = self.claim_race, self.claim_race_window
            if not race:
                self._claim_and_save(snapshot)
                return
        time.sleep(window)
        with self.lock:
            self._claim_and_save(snapshot)

    def _claim_and_save(self, job: _Job) -> None:
        if job.status != "Pending":
            raise _invalid("cannot claim a job not in pending status")
        now = self.clock()
        job.status = "Processing"
        job.claimed_at = now
        job.updated_at = now
        self.jobs[job.id] = job  # JobRepo().Save: the whole row

    def complete_job(self, identity: Identity, job_id: str, body: dict) -> None:
        """jobCommander.Complete (pkg/domain/job.go), one transaction: the job must be Processing; the agent's
        property updates go through the engine as the `agent` actor (an error is wrapped as invalid input,
        so a plain 400, not "Validation failed"); HandleJobComplete (pkg/domain/service.go) moves the service,
        replaces agentInstanceData, sets agentInstanceId and, for `update`, sets the properties to the job's
        params; a terminal state clears agentInstanceId; saving a service whose agentInstanceId another holds
        breaks the unique index service_agent_instance_id_uniq: an undecorated error, so 500, nothing applied."""
        instance_id = _optional_str(body, "agentInstanceId", "CompleteJobReq.")
        data = _optional_obj(body, "agentInstanceData", "CompleteJobReq.")
        updates = _optional_obj(body, "properties", "CompleteJobReq.")
        with self.lock:
            self.tick()
            job = self.authz_job(identity, job_id)
            svc = self.services[job.service_id]
            st = self.service_types[svc.service_type_id]
            schema = st["lifecycleSchema"]
            if job.status != "Processing":
                raise _invalid("cannot complete a job not in processing status")
            properties = copy.deepcopy(svc.properties) or {}
            if updates:
                try:
                    validated = apply_update(
                        st["propertySchema"], svc.properties, updates, svc.status, self._vault_put, ACTOR_AGENT,
                        self._vault_delete,
                    )
                except PropertyValidationError as exc:
                    raise _invalid(str(exc)) from None
                properties.update(validated)
            try:
                new_status = lifecycle.next_state(schema, svc.status, job.action)
            except lifecycle.LifecycleError as exc:
                raise _invalid(str(exc)) from None
            new_instance_id = instance_id if instance_id is not None else svc.agent_instance_id
            if lifecycle.is_terminal(schema, new_status):
                new_instance_id = None
            if new_instance_id is not None:
                clash = [s for s in self.services.values() if s.agent_instance_id == new_instance_id and s.id != svc.id]
                if clash:
                    raise ApiError(
                        500,
                        'ERROR: duplicate key value violates unique constraint "service_agent_instance_id_uniq" '
                        "(SQLSTATE 23505)",
                    )
            now = self.clock()
            job.status, job.completed_at, job.updated_at = "Completed", now, now
            svc.status = new_status
            if data is not None:
                svc.agent_instance_data = data
            svc.agent_instance_id = new_instance_id
            svc.properties = copy.deepcopy(job.params) if job.action == "update" else properties
            svc.updated_at = now
            for ref in ephemeral_refs(st["propertySchema"], svc.properties):
                self.vault.pop(ref, None)  # CleanupEphemeralSecrets
            if lifecycle.is_terminal(schema, new_status):
                for ref in secret_refs(svc.properties):
                    self.vault.pop(ref, None)  # CleanupVaultSecrets: every secret ends with the service

    def fail_job(self, identity: Identity, job_id: str, body: dict) -> None:
        """jobCommander.Fail (pkg/domain/job.go): the job must be Processing and becomes Failed with the message
        (no completedAt). The service follows the first error transition whose onErrorRegexp matches; with none
        (ErrNoLifecycleTransition) the job is still Failed and the service keeps its state: 204 either way.
        Ephemeral secrets of the service are dropped."""
        message = _optional_str(body, "errorMessage", "FailJobReq.") or ""
        with self.lock:
            self.tick()
            job = self.authz_job(identity, job_id)
            svc = self.services[job.service_id]
            st = self.service_types[svc.service_type_id]
            if job.status != "Processing":
                raise _invalid("cannot fail a job not in processing status")
            try:
                new_status: str | None = lifecycle.next_state(st["lifecycleSchema"], svc.status, job.action, message)
            except lifecycle.NoTransition:
                new_status = None
            except lifecycle.LifecycleError as exc:
                raise _invalid(str(exc)) from None
            now = self.clock()
            job.status, job.error_message, job.updated_at = "Failed", message, now
            if new_status is not None:
                svc.status = new_status
                svc.updated_at = now
            for ref in ephemeral_refs(st["propertySchema"], svc.properties):
                self.vault.pop(ref, None)

    def create_metric_entry(self, identity: Identity, body: dict) -> dict:
        """POST /metric-entries (pkg/api/handlers_metric_entry.go Create, pkg/domain/metric_entry.go): by
        `serviceId` (any service: the entry takes that service's agent; unknown -> 404) or, for an agent, by
        `agentInstanceId` among its own services (unknown -> 404); the metric type by name (unknown -> 404);
        `value` a float64 (absent is 0); an empty resourceId is invalid input."""
        resource_id = _optional_str(body, "resourceId", "CreateMetricEntryReq.") or ""
        type_name = _optional_str(body, "typeName", "CreateMetricEntryReq.") or ""
        instance_id = _optional_str(body, "agentInstanceId", "CreateMetricEntryReq.")
        value = body.get("value")
        if value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ApiError(
                400,
                f"json: cannot unmarshal {go_json_kind(value)} into Go struct field CreateMetricEntryReq.value "
                "of type float64",
            )
        with self.lock:
            svc: _Service | None = None
            if body.get("serviceId") is not None:
                svc = self.services.get(_parse_uuid(body["serviceId"], "serviceId"))
            elif instance_id is not None and identity.role == "agent":
                svc = next(
                    (
                        s
                        for s in self.services.values()
                        if s.agent_id == identity.agent_id and s.agent_instance_id == instance_id
                    ),
                    None,
                )
            else:
                raise ApiError(400, "serviceId or agent role and agentInstanceId are required")
            if svc is None:
                raise ApiError(404, NOT_FOUND)
            mtype = self.metric_types.get(type_name)
            if mtype is None:
                raise ApiError(404, NOT_FOUND)
            if not resource_id:
                raise _invalid("resource ID cannot be empty")
            now = rfc3339(self.clock())
            entry = {
                "id": _new_id(),
                "providerId": svc.provider_id,
                "consumerId": svc.consumer_id,
                "agentId": svc.agent_id,
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

    # ------------------------------------------------------------- install command
    # pkg/api/handlers_agent_install_token.go (routes, Create/Regenerate/Get/Revoke/Fetch),
    # pkg/domain/agent_install_token.go (the commander), pkg/domain/agent_install.go (rendering).
    def authz_agent(self, identity: Identity, agent_id: str, action: str) -> str:
        """AuthzFromID(ObjectTypeAgent, action) on the install-command routes (pkg/api/handlers_agent_install_token.go
        Routes, pkg/authz/rules.go): an unknown agent fails the loader -> 403; `update` (create, regenerate,
        revoke) is admin or participant only; `read` (the metadata) also lets an agent read its own."""
        aid = parse_uuid(agent_id)
        with self.lock:
            if aid not in self.agents:
                raise ApiError(403, f"cannot load resource: {NOT_FOUND}")
            if identity.role == "agent":
                if action != "read":
                    raise ApiError(403, f"access denied: user role 'agent' cannot {action} agent")
                if identity.agent_id != aid:
                    raise ApiError(403, "access denied: object context does not match identity")
            return aid

    def _agent_with_templates(self, agent_id: str) -> _Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise ApiError(404, NOT_FOUND)
        agent_type = self.agent_types.get(agent.agent_type_id) or {}
        # AgentType.HasInstallTemplates: both set
        if not (agent_type.get("configTemplate") and agent_type.get("cmdTemplate")):
            raise _invalid("agent type has no install templates configured")
        return agent

    def _mint_install_token(self, agent: _Agent, existing: _InstallToken | None) -> dict:
        """Create/Regenerate: a fresh token (generateSecureToken: 32 random bytes, base64url), expiry now + 5 min,
        a bootstrap agent-role bearer scoped to the agent expiring with it (mintBootstrapToken), the old one
        deleted on regenerate; then the response (renderInstallToken): the cmdTemplate rendered on the agent's
        configuration as stored (vault references unresolved) plus configUrl and authToken."""
        now = self.clock()
        expires_at = now + INSTALL_TOKEN_TTL
        if existing is not None:
            self.tokens.pop(existing.bootstrap_hash, None)
        plain = secrets.token_urlsafe(32) + "="  # base64.URLEncoding of 32 bytes: 43 characters and one '='
        bootstrap = secrets.token_urlsafe(32) + "="
        self.tokens[_hash(bootstrap)] = _Token(_new_id(), f"install-bootstrap-{agent.id}", "agent", agent.id, None,
                                               expires_at, now)
        token = _InstallToken(existing.id if existing else _new_id(), agent.id, _hash(plain), expires_at,
                              existing.created_at if existing else now, _hash(bootstrap))
        self.install_tokens[agent.id] = token
        url = self.public_base_url.rstrip("/") + INSTALL_CONFIG_PATH.replace("{token}", plain, 1)
        agent_type = self.agent_types[agent.agent_type_id]
        data = {**copy.deepcopy(agent.configuration or {}), "configUrl": url, "authToken": bootstrap}
        try:
            command = _execute_template("cmdTemplate", agent_type["cmdTemplate"], data)
        except ValueError as exc:
            raise ApiError(500, str(exc)) from None  # ErrInternal
        return {"installCommand": command, "url": url, "expiresAt": rfc3339(expires_at)}

    def create_install_command(self, agent_id: str) -> dict:
        """POST /agents/{id}/install-command -> 201. An unknown agent 404, no templates 400, a token already
        there (expired or not) 409: Regenerate is the way to rotate."""
        with self.lock:
            agent = self._agent_with_templates(agent_id)
            if agent_id in self.install_tokens:
                raise ApiError(409, f"install token already exists for agent {agent_id}")
            return self._mint_install_token(agent, None)

    def regenerate_install_command(self, agent_id: str) -> dict:
        """POST /agents/{id}/install-command/regenerate -> 200; 404 when there is no token yet."""
        with self.lock:
            agent = self._agent_with_templates(agent_id)
            existing = self.install_tokens.get(agent_id)
            if existing is None:
                raise ApiError(404, NOT_FOUND)
            return self._mint_install_token(agent, existing)

    def get_install_command(self, agent_id: str) -> dict:
        """GET /agents/{id}/install-command: metadata only (never the token or the URL), also when expired."""
        with self.lock:
            token = self.install_tokens.get(agent_id)
            if agent_id not in self.agents or token is None:
                raise ApiError(404, NOT_FOUND)
            return {"id": token.id, "expiresAt": rfc3339(token.expires_at), "createdAt": rfc3339(token.created_at)}

    def revoke_install_command(self, agent_id: str) -> None:
        """DELETE /agents/{id}/install-command -> 204: the token and its bootstrap bearer are gone."""
        with self.lock:
            token = self.install_tokens.get(agent_id)
            if agent_id not in self.agents or token is None:
                raise ApiError(404, NOT_FOUND)
            self.tokens.pop(token.bootstrap_hash, None)
            del self.install_tokens[agent_id]

    def fetch_install_config(self, plain_token: str) -> tuple[str, str]:
        """GET /agents/install/{token}/config, past the auth middleware (any admin/participant/agent bearer):
        (content type, rendered configTemplate). Every failure is the same 404 (ErrNotFound, no error text); the
        reason goes to install_fetch_misses as Core logs it. The configTemplate sees the agent's configuration
        with its secrets resolved (schema.ResolveSecrets), nothing else.

        Single use: Core's Fetch does not consume the token (it stays valid until it expires, is regenerated or
        revoked), while the OpenAPI file calls it "single-use per install". The emulator takes the stricter
        reading: a served token is spent, so an installer that fetches twice fails here first."""
        with self.lock:

            def miss(reason: str) -> ApiError:
                self.install_fetch_misses.append(reason)
                return ApiError(404, NOT_FOUND)

            if not plain_token:
                raise miss("empty token")
            hashed = _hash(plain_token)
            token = next((t for t in self.install_tokens.values() if hmac.compare_digest(t.token_hashed, hashed)),
                         None)
            if token is None:
                raise miss("install token not found")
            if self.clock() > token.expires_at:  # AgentInstallToken.IsExpired: now after ExpiresAt
                raise miss("install token expired")
            if token.used_at is not None:
                raise miss("install token already used (emulator: single use)")
            agent = self.agents.get(token.agent_id)
            agent_type = self.agent_types.get(agent.agent_type_id) if agent else None
            if agent_type is None or not (agent_type.get("configTemplate") and agent_type.get("cmdTemplate")):
                raise miss("agent type has no install templates configured")
            schema = agent_type.get("configurationSchema") or {}
            try:
                data = _resolve_secrets(self, schema.get("properties") or {}, copy.deepcopy(agent.configuration or {}))
            except KeyError as exc:
                raise miss(f"vault resolution failed: {exc.args[0]}") from None
            try:
                body = _execute_template("configTemplate", agent_type["configTemplate"], data)
            except ValueError as exc:
                raise miss(f"config template render failed: {exc}") from None
            token.used_at = self.clock()
            return agent_type["configContentType"], body


def _mock_for(definition: dict) -> Any:
    """pkg/domain/agent_type_template.go mockForDef: a zero value per property type."""
    kind = definition.get("type")
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "object":
        return {k: _mock_for(d) for k, d in (definition.get("properties") or {}).items()}
    if kind == "array":
        return [_mock_for(definition["items"])] if isinstance(definition.get("items"), dict) else []
    return ""


def _execute_template(name: str, text: str, data: dict) -> str:
    """executeTemplate (pkg/domain/agent_type_template.go): missingkey=error, a missing key rewritten to
    '<name> references unknown property "<key>"'. Raises ValueError with Core's message."""
    if not text:
        return ""
    try:
        return go_template.render(name, text, data, missingkey="error")
    except go_template.TemplateUnsupported as exc:
        raise ValueError(f"{name}: {exc}") from None
    except go_template.TemplateError as exc:
        if m := re.search(r'map has no entry for key "([^"]+)"', str(exc)):
            raise ValueError(f'{name} references unknown property "{m.group(1)}"') from None
        raise ValueError(f"{name}: {exc}") from None


_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+"
                         r"""(\s*;\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+=("[^"]*"|[!#$%&'*+.^_`|~0-9A-Za-z-]+))*\s*;?\s*""")


def _validate_install_templates(config_schema: dict, templates: dict[str, str]) -> None:
    """AgentType.validateTemplates (pkg/domain/agent_type_template.go), run by ValidateWithEngine at create
    (pkg/domain/agent_type.go; InvalidInputError -> 400): both templates execute on mock data of the schema
    (the cmdTemplate also sees configUrl and authToken), both are set or both empty, a cmdTemplate beside a
    configTemplate references both {{.configUrl}} and {{.authToken}}, configContentType is a media type."""
    props = config_schema.get("properties") or {}
    config_data = {k: _mock_for(d) for k, d in props.items()}
    config_text, cmd_text = templates["configTemplate"], templates["cmdTemplate"]
    try:
        _execute_template("configTemplate", config_text, config_data)
        _execute_template("cmdTemplate", cmd_text, {**config_data, **dict.fromkeys(CMD_TEMPLATE_EXTRA_KEYS, "")})
        if bool(config_text) != bool(cmd_text):
            raise ValueError("configTemplate and cmdTemplate must both be set or both be empty")
        if config_text and cmd_text:
            for required in CMD_TEMPLATE_EXTRA_KEYS:
                data = {**config_data, **{k: "" for k in CMD_TEMPLATE_EXTRA_KEYS if k != required}}
                try:
                    _execute_template("cmdTemplate", cmd_text, data)
                except ValueError as exc:
                    if required not in str(exc):
                        raise
                    continue
                raise ValueError(f"cmdTemplate must reference {{{{.{required}}}}} when configTemplate is set")
        content_type = templates["configContentType"]
        if not _MEDIA_TYPE.fullmatch(content_type):
            raise ValueError(f"configContentType {content_type!r} is not a valid media type")
    except ValueError as exc:
        raise _invalid(str(exc)) from None


def _resolve_secrets(state: FulcrumState, definitions: dict, props: dict) -> dict:
    """schema.ResolveSecrets (pkg/schema/vault_refs.go): a `vault://ref` in a property marked secret becomes the
    vault's value (an unknown ref is an error), nested objects and arrays resolved likewise, the rest as is."""

    def value_of(definition: dict, value: Any) -> Any:
        if definition.get("secret") is not None:
            if isinstance(value, str) and value.startswith(VAULT_PREFIX):
                ref = value[len(VAULT_PREFIX):]
                if ref not in state.vault:
                    raise KeyError(f"secret {ref} not found")
                return state.vault[ref][0]
            return value
        if definition.get("type") == "object" and isinstance(value, dict) and definition.get("properties"):
            return _resolve_secrets(state, definition["properties"], value)
        if definition.get("type") == "array" and isinstance(value, list) and isinstance(definition.get("items"), dict):
            return [value_of(definition["items"], v) for v in value]
        return value

    return {k: (value_of(definitions[k], v) if k in definitions else v) for k, v in props.items()}


def _parse_job_status(value: str) -> str:
    """domain.ParseJobStatus (pkg/domain/job.go); its error is undecorated in a list: 500."""
    if value not in JOB_STATUSES:
        raise ApiError(500, f"invalid job status: {value}")
    return value


def _parse_filter_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(500, f"invalid UUID format: {value}") from None


__all__ = ["ApiError", "FulcrumState", "Identity", "go_type", "page_of", "parse_uuid"]
