"""Small typed values that connect the Fulcrum client, the job runner and the agent loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["completed", "failed"]


@dataclass(frozen=True)
class Service:
    id: str
    name: str
    group_id: str
    status: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    agent_instance_id: str | None = None
    agent_instance_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    id: str
    action: str
    service: Service
    params: dict[str, Any] | None = None
    priority: int = 0

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Job:
        """Build from a Fulcrum `JobRes` (service embedded). KeyError/TypeError on a malformed job."""
        if not isinstance(raw, dict):
            raise TypeError(f"a job must be a JSON object, not {type(raw).__name__}")
        svc = raw.get("service") or {}
        if not isinstance(svc, dict):
            raise TypeError(f"field 'service' must be an object, not {type(svc).__name__}")
        service = Service(
            id=str(svc.get("id") or raw["serviceId"]),
            name=str(svc.get("name") or ""),
            group_id=str(svc.get("groupId") or ""),
            status=str(svc.get("status") or ""),
            properties=dict(svc.get("properties") or {}),
            agent_instance_id=svc.get("agentInstanceId"),
            agent_instance_data=dict(svc.get("agentInstanceData") or {}),
        )
        params = raw.get("params")
        return cls(
            id=str(raw["id"]),
            action=str(raw["action"]),
            service=service,
            params=dict(params) if isinstance(params, dict) else None,
            priority=int(raw.get("priority") or 0),
        )

    def to_api(self) -> dict[str, Any]:
        """The subset of JobRes the agent relies on (what the journal stores to re-run a claimed job)."""
        return {
            "id": self.id,
            "action": self.action,
            "params": self.params,
            "priority": self.priority,
            "serviceId": self.service.id,
            "service": {
                "id": self.service.id,
                "name": self.service.name,
                "groupId": self.service.group_id,
                "status": self.service.status,
                "properties": self.service.properties,
                "agentInstanceId": self.service.agent_instance_id,
                "agentInstanceData": self.service.agent_instance_data,
            },
        }


@dataclass(frozen=True)
class JobResult:
    """What the agent reports for a job: `complete` with the payload, or `fail` with the message."""

    job_id: str
    outcome: Outcome
    agent_instance_id: str | None = None
    agent_instance_data: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    error_message: str = ""
    duration_s: float = 0.0
    action: str = ""

    @classmethod
    def failed(cls, job: Job, message: str, duration_s: float = 0.0) -> JobResult:
        return cls(job_id=job.id, outcome="failed", error_message=message, duration_s=duration_s,
                   action=job.action)

    def complete_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.agent_instance_id is not None:
            body["agentInstanceId"] = self.agent_instance_id
        if self.agent_instance_data is not None:
            body["agentInstanceData"] = self.agent_instance_data
        if self.properties:
            body["properties"] = self.properties
        return body

    def to_record(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "outcome": self.outcome, "agent_instance_id": self.agent_instance_id,
            "agent_instance_data": self.agent_instance_data, "properties": self.properties,
            "error_message": self.error_message, "duration_s": self.duration_s, "action": self.action,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> JobResult:
        return cls(**rec)
