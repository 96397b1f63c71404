"""Jinja filters for the playbooks and roles: thin wrappers over agentkube.core, so a playbook and the agent
derive names, validate specs and plan upgrades with the same code (no logic lives here)."""

from __future__ import annotations

import ipaddress
from typing import Any

from ansible.errors import AnsibleFilterError
from pydantic import ValidationError

from agentkube.core.naming import tenant_name, tenant_name_belongs
from agentkube.core.tcp_manifest import TEMPLATE_FILTERS, TcpSettings, deep_merge
from agentkube.core.tcp_status import describe, reached, version_status
from agentkube.core.tcp_upgrade import UpgradeRefused, plan_upgrade
from agentkube.core.tenant_spec import SpecError, validate_tenant_spec
from agentkube.core.version_window import default_window, parse_minor
from ansible_collections.agentkube.kamaji.plugins.module_utils.plain_data import plain


def agentkube_tenant_name(service_name: Any, service_id: Any) -> str:
    """The tenant name derived from the service (naming.tenant_name); a service name that cannot become one
    fails naming the field, never with a traceback."""
    if not isinstance(service_id, str) or not service_id:
        raise AnsibleFilterError("agentkube_service.id: must be a non-empty string")
    try:
        return tenant_name(plain(service_name), str(service_id))
    except ValueError as e:  # naming's service-name error: says why the name cannot become a tenant name
        raise AnsibleFilterError(f"agentkube_service.name: {e}") from None


def agentkube_tenant_name_belongs(name: Any, service_id: Any) -> bool:
    """Whether `name` may be this service's tenant name (naming.tenant_name_belongs): a DNS-1035 label ending
    with the service id's suffix. False, never an error, for anything else (None, a number, a mapping)."""
    if not isinstance(service_id, str) or not service_id:
        return False
    return tenant_name_belongs(plain(name), str(service_id))


SERVICE_ID_LABEL = "agentkube.io/service-id"  # set by templates/tenant-control-plane.yaml.j2


def tcps_of_service(resources: Any, service_id: Any) -> list[dict[str, Any]]:
    """The TCPs (k8s_info resources) whose agentkube.io/service-id label is exactly `service_id`: the label
    selector's answer is checked again, so a selector the API server read differently never picks a TCP."""
    wanted = str(service_id)
    return [
        r for r in (resources or [])
        if isinstance(r, dict) and bool(wanted)
        and ((r.get("metadata") or {}).get("labels") or {}).get(SERVICE_ID_LABEL) == wanted
    ]


def _window(min_version: str | None, max_version: str | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """The window a play passes (kamaji_tcp_min/max_version); the role's default for a missing bound (a play
    outside the role does not see the role's defaults)."""
    default_min, default_max = default_window()
    return (parse_minor(min_version) if min_version else default_min,
            parse_minor(max_version) if max_version else default_max)


def tenant_spec_errors(data: Any, min_version: str | None = None, max_version: str | None = None) -> list[str]:
    """Every problem of a tenant spec as '<field path>: <message>'; [] when valid."""
    lo, hi = _window(min_version, max_version)
    try:
        validate_tenant_spec(plain(data), min_minor=lo, max_minor=hi)
    except SpecError as e:
        return [f"agentkube_tenant.{path}: {msg}" for path, msg in e.errors]
    return []


def tenant_spec(data: Any, min_version: str | None = None, max_version: str | None = None) -> dict[str, Any]:
    """The tenant spec with every default filled (camelCase); raises on an invalid spec."""
    lo, hi = _window(min_version, max_version)
    spec = validate_tenant_spec(plain(data), min_minor=lo, max_minor=hi)
    return spec.model_dump(mode="json")


def tcp_settings_errors(variables: dict[str, Any]) -> list[str]:
    """Problems of the operator settings given as role variables {kamaji_tcp_<field>: value}."""
    try:
        TcpSettings.from_vars(plain(variables))
    except ValidationError as e:
        return [
            f"kamaji_tcp_{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        ]
    return []


def tcp_upgrade_plan(
    current: str,
    desired: str,
    min_version: str | None,
    max_version: str | None,
    upgrade_path: dict[str, str] | None = None,
    step_minors: bool = True,
) -> dict[str, Any]:
    """{'steps': [versions to apply in order], 'error': ''} or {'steps': [], 'error': why it is refused}."""
    try:
        lo, hi = _window(min_version, max_version)
        steps = plan_upgrade(
            str(current),
            str(desired),
            min_minor=lo,
            max_minor=hi,
            upgrade_path=plain(upgrade_path),
            step_minors=bool(step_minors),
        )
    except (UpgradeRefused, ValueError) as e:
        return {"steps": [], "error": str(e)}
    return {"steps": steps, "error": ""}


def agentkube_deep_merge(base: Any, overlay: Any) -> Any:
    """Deep merge as `agentkube render` does it: mappings merge, lists replace, None deletes a key."""
    return deep_merge(plain(base), plain(overlay))


def agentkube_address_in(address: Any, networks: Any) -> bool:
    """Whether `address` is an IP address inside one of `networks` (CIDRs); False for anything not an address.
    The worker plays connect only to addresses in agentkube_worker_networks (the lab: 127.0.0.0/8)."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return False
    if isinstance(networks, str):
        networks = [networks]
    try:
        return any(ip in ipaddress.ip_network(str(net), strict=False) for net in networks or [])
    except ValueError as e:
        raise AnsibleFilterError(f"agentkube_worker_networks: {e}") from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        shared = {name: f for name, f in TEMPLATE_FILTERS.items() if name != "to_json"}  # Ansible has its own
        return {
            **shared,
            "agentkube_tenant_name": agentkube_tenant_name,
            "agentkube_tenant_name_belongs": agentkube_tenant_name_belongs,
            "agentkube_tcps_of_service": tcps_of_service,
            "agentkube_tenant_spec": tenant_spec,
            "agentkube_tenant_spec_errors": tenant_spec_errors,
            "agentkube_tcp_settings_errors": tcp_settings_errors,
            "agentkube_tcp_upgrade_plan": tcp_upgrade_plan,
            "agentkube_deep_merge": agentkube_deep_merge,
            "agentkube_address_in": agentkube_address_in,
            "agentkube_tcp_status": lambda tcp: version_status(plain(tcp)),
            "agentkube_tcp_reached": lambda tcp, wanted: reached(plain(tcp), str(wanted)),
            "agentkube_tcp_describe": lambda tcp: describe(plain(tcp)),
        }
