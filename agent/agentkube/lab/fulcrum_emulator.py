"""A Fulcrum Core emulator for the lab: a real HTTP(S) server on loopback speaking the agent-facing API of
../shared/contracts/fulcrum (base path /api/v1), with Core's job and lifecycle semantics, admin setup
helpers, fault injection and a request log.

    emu = FulcrumEmulator(cert=LabCA(d).issue("fulcrum"))   # cert=None serves plain HTTP
    emu.start()                                             # emu.url -> https://127.0.0.1:<port>/api/v1
    ...
    emu.stop()

The rules live in fulcrum_state (data), fulcrum_lifecycle (state machine) and fulcrum_properties
(property schema); the wire in fulcrum_http; faults in fulcrum_faults.

Fidelity notes (Core's Go handlers, fulcrumproject/core, as read for this emulator):
- failing a job whose action has no matching error transition from the service's state answers 400 and
  leaves the job Processing (Core rolls the transaction back);
- an `update` job's completion sets the service properties to the job params, after the agent's own
  property updates (so those are lost on update, as in Core);
- the job timeout fails the job only; the service keeps its state;
- jobs without params carry no `params` key (Go's omitempty), never `"params": null`;
- only agent tokens are issued (default lifetime 24 h, like Core); serviceOption validators and pool
  generators are accepted unchecked; agent configuration is not validated against its schema."""

from __future__ import annotations

import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from agentkube.lab.certs import ServerCert
from agentkube.lab.fulcrum_faults import Fault, FaultInjector
from agentkube.lab.fulcrum_http import BASE_PATH, FulcrumHTTPServer, RequestRecord
from agentkube.lab.fulcrum_state import FulcrumState

__all__ = ["FulcrumEmulator", "RequestRecord"]


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
    ):
        """`job_timeout` (seconds from creation) fails Pending/Processing jobs like Core's job
        maintenance; `agent_health_timeout` marks silent Connected agents Disconnected. Both off by
        default. `clock` (epoch seconds) lets tests move time without sleeping."""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"host must be a loopback address, got {host!r}")
        if not admin_token:
            raise ValueError("admin_token must not be empty")
        self.host = host
        self._port = port
        self.cert = cert
        self.state = FulcrumState(
            admin_token=admin_token,
            clock=clock or time.time,
            job_timeout=job_timeout,
            agent_health_timeout=agent_health_timeout,
        )
        self.faults = FaultInjector()
        self._server: FulcrumHTTPServer | None = None
        self._thread: threading.Thread | None = None
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
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
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
        self, name: str, service_type_ids: list[str], configuration_schema: dict | None = None
    ) -> dict:
        return self.state.create_agent_type(
            {
                "name": name,
                "serviceTypeIds": list(service_type_ids),
                "configurationSchema": configuration_schema or {"properties": {}},
            }
        )

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
        """Apply job timeout / agent health now (it also runs before every agent call)."""
        self.state.run_maintenance()

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
    ) -> Fault:
        return self.faults.inject(
            path_regex, status=status, delay=delay, drop=drop, times=times, method=method, include_admin=include_admin
        )

    def set_down(self, down: bool) -> None:
        self.faults.set_down(down)

    def clear_faults(self) -> None:
        self.faults.clear()
