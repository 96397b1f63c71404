"""The Fulcrum objects the product ships (ServiceType, AgentType, metric types) and their registration
in a Fulcrum Core emulator, exactly as an admin registers them in a real Core."""

from __future__ import annotations

from dataclasses import dataclass

from agentkube.core.shipped import load_shipped
from agentkube_lab.fulcrum_emulator import FulcrumEmulator


@dataclass(frozen=True)
class Catalog:
    provider_id: str
    consumer_id: str
    service_type_id: str
    agent_type_id: str
    agent_id: str
    agent_token: str
    group_ids: tuple[str, ...]
    extra_service_type_ids: dict[str, str]  # name -> id of service types registered for tests/rehearsals


def register_catalog(emu: FulcrumEmulator, agent_configuration: dict | None = None, groups: int = 1,
                     extra_service_types: list[dict] | None = None) -> Catalog:
    provider = emu.create_provider("lab-provider")
    consumer = emu.create_participant("lab-consumer")
    service_type = emu.create_service_type(load_shipped("service-type"))
    extra = {st["name"]: emu.create_service_type(st)["id"] for st in extra_service_types or []}
    agent_type_doc = load_shipped("agent-type")
    install_templates = {k: agent_type_doc[k] for k in ("configTemplate", "cmdTemplate", "configContentType")
                         if k in agent_type_doc}
    agent_type = emu.create_agent_type(agent_type_doc["name"], [service_type["id"], *extra.values()],
                                       agent_type_doc.get("configurationSchema"), install_templates)
    for metric_type in load_shipped("metric-types"):
        emu.create_metric_type(metric_type["name"], metric_type["entityType"])
    agent = emu.create_agent("lab-agent", provider["id"], agent_type["id"], agent_configuration or {})
    token = emu.create_agent_token(agent["id"])
    group_ids = tuple(emu.create_service_group(f"lab-group-{i}", consumer["id"])["id"] for i in range(groups))
    return Catalog(provider["id"], consumer["id"], service_type["id"], agent_type["id"], agent["id"], token,
                   group_ids, extra)
