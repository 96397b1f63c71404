"""A Fulcrum Core emulator for the lab: a real HTTP(S) server on loopback speaking the agent-facing API of
../shared/contracts/fulcrum (base path /api/v1), with Core's job and lifecycle semantics, admin setup
helpers, fault injection and a request log.

    emu = FulcrumEmulator(cert=LabCA(d).issue("fulcrum"))   # cert=None serves plain HTTP
    emu.start()                                             # emu.url -> https://127.0.0.1:<port>/api/v1
    ...
    emu.stop()

The rules live in fulcrum_state (data), fulcrum_lifecycle (state machine) and fulcrum_properties
(property schema); the wire in fulcrum_http; faults in fulcrum_faults.

Fidelity (fulcrumproject/core at 499230a, each rule cites its Core file where it is implemented):
- status codes as Core's middleware gives them: 401 without a Bearer header, 403 for an unknown or expired
  token, 400 for a path id that is not a UUID, 403 for an unknown or foreign job or service id
  (AuthzFromID turns the loader's error into Forbidden), 400 for an empty or undecodable body on routes
  that decode one; NaN/Infinity in a body are refused as Go's encoding/json does; pageSize above 100 is 400;
- claim is Core's get/claim/save without a lock: `claim_race=True` (or set_claim_race) widens the window so
  concurrent claimers of one job all get 204;
- failing a job with no matching error transition answers 204: the job is Failed, the service unchanged;
- the property engine is Core's (fulcrum_properties): unknown properties dropped, authorizers per actor,
  defaults inside nested objects and array items, schemas checked when a service or agent type is created;
- new agents start Disconnected; agents may list (GET /jobs, filtered, paged) and read their own jobs;
- job and agent maintenance run on Core's schedule in the emulator's clock (job maintenance every 24 h by
  default, as JOB_MAINTENANCE_INTERVAL; agent maintenance every AGENT_HEALTH_TIMEOUT), both off by default;
- an `update` job's completion sets the service properties to the job params, after the agent's own
  property updates (so those are lost on update, as in Core); the job timeout fails the job only;
- jobs without params carry no `params` key and services without agentInstanceId no such key (omitempty);
- an agentInstanceId another service holds breaks Core's unique index: 500, nothing applied;
- the install flow (pkg/api/handlers_agent_install_token.go): agent types' configTemplate/cmdTemplate checked at create
  and rendered with a text/template subset (go_template, missingkey=error), a 5-minute install token with its
  bootstrap agent bearer, every fetch failure the same 404; the token is single use here (Core: until expiry);
- only agent tokens are issued (default lifetime 24 h, like Core); serviceOption/serviceReference validators
  and pool generators have their configuration checked but accept every value and generate nothing; an
  agent's configuration is stored as given, whereas Core runs it through the agent configuration engine
  (pkg/domain/agent.go Create: unknown keys dropped, defaults filled, secrets moved to the vault)."""

from __future__ import annotations

import copy
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from agentkube_lab.certs import ServerCert
from agentkube_lab.fulcrum_faults import Fault, FaultInjector
from agentkube_lab.fulcrum_http import BASE_PATH, FulcrumHTTPServer, RequestRecord
from agentkube_lab.fulcrum_state import CORE_JOB_MAINTENANCE_INTERVAL, CORE_JOB_RETENTION, FulcrumState

__all__ = ["DEFAULT_CONFIGURATION_SCHEMA", "FulcrumEmulator", "RequestRecord"]

# what create_agent_type registers when it is given no configurationSchema (Core wants at least one property)
DEFAULT_CONFIGURATION_SCHEMA = {"properties": {"note": {"type": "string", "label": "Note"}}}


class FulcrumEmulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        cert: ServerCert | None = None,
        admin_token: str = "admin-secret",  # noqa: S107 - the lab's documented default
        job_timeout: float | None = None,
        agent_health_timeout: float | None = None,
        clock: Callable[[], float] | None = None,
        *,
        job_maintenance_interval: float = CORE_JOB_MAINTENANCE_INTERVAL,
        agent_maintenance_interval: float | None = None,
        job_retention: float = CORE_JOB_RETENTION,
        claim_race: bool = False,
        claim_race_window: float = 0.05,
        maintenance_poll: float = 0.2,
    ):
        """`job_timeout` (seconds from creation) turns Core's job maintenance on: every
        `job_maintenance_interval` (Core's default 24 h) it fails Pending/Processing jobs older than the
        timeout and deletes Completed/Failed jobs completed more than `job_retention` ago.
        `agent_health_timeout` turns the agent maintenance on: every `agent_maintenance_interval` (default:
        the health timeout, as Core schedules it) silent Connected agents become Disconnected. Both off by
        default. The schedule follows `clock` (epoch seconds; tests move time without sleeping); the
        emulator checks it before every call and every `maintenance_poll` seconds of real time.
        `claim_race` opens Core's window between a claim's read and its save (`claim_race_window` s)."""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"host must be a loopback address, got {host!r}")
        if not admin_token:
            raise ValueError("admin_token must not be empty")
        self.host = host
        self._port = port
        self.cert = cert
        for name, value in (("job_maintenance_interval", job_maintenance_interval),
                            ("agent_maintenance_interval", agent_maintenance_interval),
                            ("maintenance_poll", maintenance_poll)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        self.state = FulcrumState(
            admin_token=admin_token,
            clock=clock or time.time,
            job_timeout=job_timeout,
            agent_health_timeout=agent_health_timeout,
            job_maintenance_interval=job_maintenance_interval,
            agent_maintenance_interval=agent_maintenance_interval,
            job_retention=job_retention,
            claim_race=claim_race,
            claim_race_window=claim_race_window,
        )
        self.faults = FaultInjector()
        self._server: FulcrumHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._maintenance_poll = maintenance_poll
        self._scheduler: threading.Thread | None = None
        self._stopping = threading.Event()
        self._request_log: list[RequestRecord] = []

    # ------------------------------------------------------------ server
    def start(self) -> FulcrumEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        context = None
        if self.cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(self.cert.cert_file), str(self.cert.key_file))
        server = FulcrumHTTPServer((self.host, self._port), self.state, self.faults, context)
        server.request_log = self._request_log
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"fulcrum-emulator-{self._port}",
            daemon=True,
        )
        self._thread.start()
        self._stopping.clear()
        self.state.restart_schedule()  # Core's scheduler starts with the server
        self.state.public_base_url = self.url[: -len(BASE_PATH)]  # Core's PUBLIC_BASE_URL: install URLs
        self._scheduler = threading.Thread(
            target=self._maintenance_loop, name=f"fulcrum-maintenance-{self._port}", daemon=True
        )
        self._scheduler.start()
        return self

    def _maintenance_loop(self) -> None:
        while not self._stopping.wait(self._maintenance_poll):
            self.state.tick()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=5)
            self._scheduler = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FulcrumEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.cert is not None else "http"
        return f"{scheme}://{self.host}:{self._port}{BASE_PATH}"

    @property
    def ca_file(self) -> str | None:
        return str(self.cert.ca_file) if self.cert is not None else None

    @property
    def admin_token(self) -> str:
        return self.state.admin_token

    # ------------------------------------------------------------ setup helpers (admin)
    def create_provider(self, name: str) -> dict:
        """A participant (providers and consumers are both participants)."""
        return self.state.create_participant({"name": name, "status": "Enabled"})

    create_participant = create_provider

    def create_service_type(self, body: dict) -> dict:
        return self.state.create_service_type(body)

    def create_agent_type(
        self, name: str, service_type_ids: list[str], configuration_schema: dict | None = None,
        install_templates: dict | None = None,
    ) -> dict:
        """Core refuses a configurationSchema without properties (pkg/schema/engine.go ValidateSchema): without
        one, this helper registers DEFAULT_CONFIGURATION_SCHEMA, a single optional string property.
        `install_templates`: configTemplate, cmdTemplate, configContentType (the install flow)."""
        return self.state.create_agent_type(
            {
                "name": name,
                "serviceTypeIds": list(service_type_ids),
                "configurationSchema": configuration_schema or copy.deepcopy(DEFAULT_CONFIGURATION_SCHEMA),
                **(install_templates or {}),
            }
        )

    def create_install_command(self, agent_id: str) -> dict:
        """POST /agents/{id}/install-command as an admin: {installCommand, url, expiresAt} (the plain install
        token and bootstrap bearer are in installCommand/url, only here)."""
        return self.state.create_install_command(agent_id)

    def create_agent(
        self,
        name: str,
        provider_id: str,
        agent_type_id: str,
        configuration: dict | None = None,
        tags: list[str] | None = None,
    ) -> dict:
        return self.state.create_agent(
            {
                "name": name,
                "providerId": provider_id,
                "agentTypeId": agent_type_id,
                "configuration": configuration if configuration is not None else {},
                "tags": tags or [],
            }
        )

    def create_agent_token(self, agent_id: str, expire_at: str | None = None) -> str:
        """The plain agent token (only this call ever sees it; the emulator keeps a hash)."""
        body: dict[str, Any] = {"name": f"agent-{agent_id}", "role": "agent", "scopeId": agent_id}
        if expire_at is not None:
            body["expireAt"] = expire_at
        return self.state.create_token(body)["value"]

    def create_service_group(self, name: str, consumer_id: str) -> dict:
        return self.state.create_group({"name": name, "consumerId": consumer_id})

    def create_metric_type(self, name: str, entity_type: str = "Service") -> dict:
        return self.state.create_metric_type({"name": name, "entityType": entity_type})

    def create_service(
        self, name: str, service_type_id: str, group_id: str, agent_id: str, properties: dict | None = None
    ) -> dict:
        """A service in its lifecycle's initial state, with a Pending `create` job."""
        return self.state.create_service(
            {
                "name": name,
                "serviceTypeId": service_type_id,
                "groupId": group_id,
                "agentId": agent_id,
                "properties": properties or {},
            }
        )

    def request_action(self, service_id: str, action: str, params: dict | None = None, priority: int = 1) -> dict:
        """Like POST /services/{id}/{action}: the new Pending job. For `update`, `params` are the changed
        properties; the job carries the merged set."""
        return self.state.request_action(service_id, action, params, priority)

    def put_secret(self, ref: str, value: Any) -> None:
        """Make `vault://<ref>` resolvable through GET /vault/secrets/{ref}."""
        self.state.put_secret(ref, value)

    # ------------------------------------------------------------ inspection
    def get_job(self, job_id: str) -> dict:
        return self.state.get_job(job_id)

    def delete_job(self, job_id: str) -> None:
        """Remove a job (as Core's retention or an operator in the database would); an agent's later calls
        on it answer 403."""
        self.state.delete_job(job_id)

    def set_claim_race(self, enabled: bool, window: float | None = None) -> None:
        """Core's non-atomic claim (pkg/domain/job.go: get, claim, save): when on, `window` seconds (default
        0.05) separate the read from the save, so concurrent claimers of one Pending job all get 204."""
        self.state.set_claim_race(enabled, window)

    @property
    def claim_race(self) -> bool:
        return self.state.claim_race

    def get_service(self, service_id: str) -> dict:
        return self.state.get_service(service_id)

    def get_agent(self, agent_id: str) -> dict:
        return self.state.get_agent(agent_id)

    @property
    def jobs(self) -> list[dict]:
        return self.state.list_jobs()

    @property
    def metric_entries(self) -> list[dict]:
        with self.state.lock:
            return [dict(e) for e in self.state.metric_entries]

    @property
    def status_history(self) -> list[tuple[float, str]]:
        """(epoch seconds, status) for every PUT /agents/me/status, all agents, in order."""
        with self.state.lock:
            return list(self.state.status_history)

    def status_history_of(self, agent_id: str) -> list[tuple[float, str]]:
        with self.state.lock:
            return list(self.state.status_history_by_agent.get(agent_id, []))

    @property
    def request_log(self) -> list[RequestRecord]:
        """The live list of agent calls (admin-token calls are not logged); clear() it freely."""
        return self._request_log

    def run_maintenance(self) -> None:
        """Run the enabled maintenance tasks (job timeout and retention, agent health) now, whatever the
        schedule. On their own they run on Core's schedule (see __init__)."""
        self.state.run_maintenance()

    def tick(self) -> None:
        """Run the maintenance tasks due by the clock now (the emulator also does before every call)."""
        self.state.tick()

    @property
    def maintenance_runs(self) -> list[tuple[str, float]]:
        """("job" | "agent", clock time) of every maintenance run, in order."""
        with self.state.lock:
            return list(self.state.maintenance_runs)

    # ------------------------------------------------------------ faults
    def inject(
        self,
        path_regex: str,
        status: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int | None = 1,
        method: str | None = None,
        include_admin: bool = False,
        drop_after: bool = False,
    ) -> Fault:
        """A fault on calls whose path matches `path_regex`: an error `status`, a `delay`, `drop` (the connection
        closes, the call is not handled) or `drop_after` (the call is handled, then the connection closes
        without an answer: a claim or report that took effect although the client saw a connection error)."""
        return self.faults.inject(
            path_regex,
            status=status,
            delay=delay,
            drop=drop,
            times=times,
            method=method,
            include_admin=include_admin,
            drop_after=drop_after,
        )

    def set_down(self, down: bool) -> None:
        self.faults.set_down(down)

    def clear_faults(self) -> None:
        self.faults.clear()
