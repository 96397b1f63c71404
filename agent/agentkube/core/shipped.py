"""The Fulcrum objects the product ships (agentkube/data/fulcrum): the ServiceType, the AgentType and the metric
types an admin registers. The agent trusts its own copies, not what Fulcrum says they are: the agent type's
configurationSchema decides which configuration keys reach the playbooks, the service type's propertySchema which
properties may hold vault references."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def _text(name: str) -> str:
    return resources.files("agentkube").joinpath(f"data/fulcrum/{name}.json").read_text(encoding="utf-8")


def load_shipped(name: str) -> Any:
    """One of the shipped JSON files (service-type, agent-type, metric-types), a fresh copy each call."""
    return json.loads(_text(name))


def configuration_schema() -> dict[str, Any]:
    return load_shipped("agent-type").get("configurationSchema") or {}


def property_schema() -> dict[str, Any]:
    return load_shipped("service-type").get("propertySchema") or {}
