"""The TenantControlPlane manifest: rendered from templates/tenant-control-plane.yaml.j2.

The kamaji_tcp role renders the same template file through Ansible's `template` lookup, with the same
variables (`agentkube_tenant`, `agentkube_tenant_name`, `agentkube_service`, `kamaji_tcp_*`) and the filters
of TEMPLATE_FILTERS (the role gets them from plugins/filter/agentkube_filters.py), then
deep-merges `kamaji_tcp_extra_spec` into `.spec` with `deep_merge`. So `agentkube render tcp` prints what the
role applies.
Rendering reads the template file; nothing else here does I/O.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentkube.core.naming import tenant_name
from agentkube.core.project import COLLECTION, project_dir
from agentkube.core.tenant_spec import (
    DNS1123_LABEL,
    LABEL_VALUE_RE,
    TenantSpec,
)
from agentkube.core.version_window import default_window, minor_str, parse_minor

API_VERSION = "kamaji.clastix.io/v1alpha1"
KIND = "TenantControlPlane"

# Labels every TCP carries (the infrastructure is the source of truth: select on these).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "agentkube"
LABEL_TENANT = "agentkube.io/tenant"
LABEL_SERVICE_ID = "agentkube.io/service-id"
ANNOTATION_SERVICE_NAME = "agentkube.io/service-name"

TEMPLATE_NAME = "tenant-control-plane.yaml.j2"
TEMPLATES_DIR_ENV = "AGENTKUBE_TEMPLATES_DIR"

SETTINGS_VAR_PREFIX = "kamaji_tcp_"


def templates_dir() -> Path:
    """$AGENTKUBE_TEMPLATES_DIR if set, else the installed project's templates/."""
    override = os.environ.get(TEMPLATES_DIR_ENV)
    return Path(override) if override else project_dir() / "templates"


def datastore_schema(name: str) -> str:
    """The DataStore schema (SQL database / etcd prefix) of a tenant: its name with '_' for '-'.

    A tenant name is a DNS-1123 label (<= 63 chars of [a-z0-9-]), so the result is a plain SQL identifier
    ([a-z0-9_], <= 63 chars, the PostgreSQL limit) once a leading digit gets a 't_' prefix.
    """
    if not DNS1123_LABEL.fullmatch(name) or len(name) > 61:
        raise ValueError(f"{name!r} is not a tenant name (a DNS-1123 label of at most 61 characters)")
    schema = name.replace("-", "_")
    return f"t_{schema}" if schema[0].isdigit() else schema


def to_json(value: Any, *args: Any, **kwargs: Any) -> str:
    """The `to_json` filter as Ansible defines it for plain data (json.dumps)."""
    return json.dumps(value, *args, **kwargs)


# What PyYAML refuses, or reads as a line break, inside a double-quoted scalar: escaped as \uXXXX.
_YAML_UNSAFE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


def yaml_quote(value: Any) -> str:
    """A value as a JSON document that YAML reads back unchanged (any Unicode, any string content).

    Unlike `to_json` (ASCII escapes: astral characters become surrogate pairs that PyYAML does not rejoin),
    it keeps printable Unicode as is and escapes only what YAML cannot carry literally.
    """
    text = json.dumps(value, ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Filters the template may use besides jinja2's builtins; the role's filter plugin exports the same functions.
TEMPLATE_FILTERS = {
    "to_json": to_json,
    "agentkube_quote": yaml_quote,
    "agentkube_datastore_schema": datastore_schema,
    "agentkube_tenant_name": tenant_name,
}


def deep_merge(base: Any, overlay: Any) -> Any:
    """`overlay` merged into `base`, returning a new value; neither input is modified.

    Mappings merge key by key, recursively; anything else (lists included) in `overlay` replaces what is in
    `base`; a None value in `overlay` removes the key (as in a JSON merge patch).
    """
    if not isinstance(base, dict) or not isinstance(overlay, dict):
        return _copy(overlay)
    merged = {k: _copy(v) for k, v in base.items()}
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class TcpSettings(BaseModel):
    """Operator settings that shape a TCP. Each field is the role variable `kamaji_tcp_<field>`, with the
    same default as roles/kamaji_tcp/defaults/main.yml (a unit test keeps them equal)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "kamaji-tenants"
    datastore: str = "default"  # "" leaves spec.dataStore unset (Kamaji's default DataStore)
    cgroup_driver: Literal["systemd", "cgroupfs"] = "systemd"
    konnectivity_port: Annotated[int, Field(ge=1, le=65535)] = 8132
    konnectivity_agent_mode: Literal["DaemonSet", "Deployment"] = "DaemonSet"
    min_version: str = Field(default_factory=lambda: minor_str(default_window()[0]))
    max_version: str = Field(default_factory=lambda: minor_str(default_window()[1]))
    extra_spec: dict[str, Any] = Field(default_factory=dict)
    template: str = ""  # "" = templates/tenant-control-plane.yaml.j2

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not DNS1123_LABEL.fullmatch(v):
            raise ValueError(f"{v!r} is not a DNS-1123 label")
        return v

    @field_validator("datastore")
    @classmethod
    def _datastore(cls, v: str) -> str:
        if v and (len(v) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", v)):
            raise ValueError(f"{v!r} is not a DataStore name (a DNS-1123 subdomain)")
        return v

    @field_validator("min_version", "max_version")
    @classmethod
    def _minor(cls, v: str) -> str:
        parse_minor(v)
        return v

    @property
    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(min_minor, max_minor) for validate_tenant_spec."""
        return parse_minor(self.min_version), parse_minor(self.max_version)

    @property
    def template_path(self) -> Path:
        return Path(self.template) if self.template else templates_dir() / TEMPLATE_NAME

    @classmethod
    def from_vars(cls, variables: dict[str, Any]) -> TcpSettings:
        """Settings from Ansible variables (group_vars form: `kamaji_tcp_namespace: ...`); other keys are
        ignored, so an inventory's group_vars file can be read as is."""
        known = set(cls.model_fields)
        picked = {}
        for key, value in (variables or {}).items():
            if isinstance(key, str) and key.startswith(SETTINGS_VAR_PREFIX):
                field = key.removeprefix(SETTINGS_VAR_PREFIX)
                if field in known:
                    picked[field] = value
        return cls.model_validate(picked)

    def template_vars(self) -> dict[str, Any]:
        """The role variables the template reads (`kamaji_tcp_<field>`)."""
        return {f"{SETTINGS_VAR_PREFIX}{k}": v for k, v in self.model_dump().items()}


def service_vars(service_name: str, service_id: str) -> dict[str, Any]:
    """`agentkube_service` as in the vars contract (DEVELOPERS.md); the id becomes a label value."""
    if not service_id or len(service_id) > 63 or not LABEL_VALUE_RE.fullmatch(service_id):
        raise ValueError(
            f"agentkube_service.id: {service_id!r} is not usable as a label value "
            "(at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends)"
        )
    return {"id": service_id, "name": service_name}


def render_template(template_path: Path, variables: dict[str, Any]) -> dict[str, Any]:
    """Render a TCP template the way Ansible's `template` lookup does (trim_blocks, strict undefined)
    and parse the YAML it produces."""
    env = jinja2.Environment(  # noqa: S701 - renders YAML, not HTML
        loader=jinja2.FileSystemLoader(str(template_path.parent)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
    )
    # The template names the collection's filters by their FQCN (agentkube.kamaji.<name>), as the role's
    # Ansible needs it to; Jinja accepts dotted filter names as they are.
    env.filters.update({name if name == "to_json" else f"{COLLECTION}.{name}": f
                        for name, f in TEMPLATE_FILTERS.items()})
    text = env.get_template(template_path.name).render(**variables)
    manifest = yaml.safe_load(text)
    if not isinstance(manifest, dict):
        raise ValueError(f"{template_path} did not render a mapping")
    return manifest


def render_tcp(
    spec: TenantSpec,
    service_name: str,
    service_id: str,
    settings: TcpSettings | None = None,
) -> dict[str, Any]:
    """The TenantControlPlane the kamaji_tcp role applies for this tenant, as a dict."""
    settings = settings or TcpSettings()
    variables = {
        "agentkube_tenant": spec.model_dump(mode="json"),
        "agentkube_tenant_name": tenant_name(service_name, service_id),
        "agentkube_service": service_vars(service_name, service_id),
        **settings.template_vars(),
    }
    manifest = render_template(settings.template_path, variables)
    return deep_merge(manifest, {"spec": settings.extra_spec})
