"""Agent configuration: an optional YAML file plus environment variables prefixed AGENTKUBE_
(nested with '__', e.g. AGENTKUBE_FULCRUM__URL, AGENTKUBE_FULCRUM__TOKEN). Environment wins over the file.

Secrets are SecretStr and may come from a file (`token_file`), or be `vault://<ref>` strings that the agent
resolves through Fulcrum just before use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agentkube.core.project import project_dir
from agentkube.core.tenant_spec import TenantLimits

DEFAULT_ACTIONS = {a: f"playbooks/{a}.yml" for a in ("create", "start", "stop", "update", "delete")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FulcrumSettings(_Section):
    url: str = Field(description="Fulcrum Core API base, e.g. https://fulcrum.example/api/v1")
    allow_insecure_http: bool = Field(False, description="accept an http:// url (the token then travels in clear; "
                                      "the agent logs a warning)")
    token: SecretStr | None = None
    token_file: Path | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout_s: float = Field(30.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0, description="cap of one backoff sleep")
    retry_attempts: int = Field(8, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _token(self) -> FulcrumSettings:
        if self.url.startswith("http://") and not self.allow_insecure_http:
            raise ValueError("url must be https:// (set allow_insecure_http: true to accept plain http, which sends "
                             "the agent token in clear)")
        if self.token is None and self.token_file is not None:
            try:
                self.token = SecretStr(self.token_file.read_text().strip())
            except OSError as e:
                raise ValueError(f"token_file {self.token_file}: {e.strerror}") from e
        if self.token is None or not self.token.get_secret_value():
            raise ValueError("token (or token_file) is required")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} does not exist")
        return self

    @property
    def verify(self) -> bool | str:
        if not self.verify_tls:
            return False
        return str(self.ca_file) if self.ca_file else True


class AgentLoopSettings(_Section):
    heartbeat_interval_s: float = Field(15.0, gt=0)
    poll_interval_s: float = Field(5.0, gt=0)
    max_concurrent_jobs: int = Field(4, ge=1, le=64)
    shutdown_grace_s: float = Field(120.0, ge=0)
    state_dir: Path = Field(default_factory=lambda: Path(os.environ.get("XDG_STATE_HOME", "~/.local/state"))
                            .expanduser() / "agentkube")
    reconcile_interval_s: float = Field(60.0, gt=0, description="how often jobs Fulcrum holds in Processing for "
                                        "this agent, but that no run here knows, are taken over")
    report_max_refusals: int = Field(10, ge=1, description="a result Fulcrum answered with an error this many "
                                     "times is dropped (logged and counted); outages never count")
    report_retry_max_s: float = Field(300.0, gt=0, description="cap of one result's delivery backoff")


class RunnerSettings(_Section):
    project_dir: Path = Field(default_factory=project_dir, description="the Ansible project (default: the one "
                              "installed with the agent)")
    inventory: Path | None = None
    actions: dict[str, str] = Field(default_factory=dict, description="extra or overriding action -> playbook")
    timeout_s: dict[str, int] = Field(default_factory=dict, description="per-action job timeout")
    default_timeout_s: int = Field(3600, gt=0)
    idle_timeout_s: int = Field(900, gt=0, description="fail a job whose playbook emits no event this long")
    keep_artifacts: int = Field(20, ge=1, description="job directories kept (rotation)")
    extra_env: dict[str, str] = Field(default_factory=dict)

    @field_validator("actions")
    @classmethod
    def _actions(cls, v: dict[str, str]) -> dict[str, str]:
        for action, playbook in v.items():
            if not action or not playbook.endswith((".yml", ".yaml")):
                raise ValueError(f"action {action!r}: playbook {playbook!r} must be a .yml file")
        return v

    def action_map(self) -> dict[str, str]:
        return {**DEFAULT_ACTIONS, **self.actions}

    def timeout_for(self, action: str) -> int:
        return self.timeout_s.get(action, self.default_timeout_s)


# The version window and the tenants' namespace are role variables (one channel: role defaults < the Fulcrum
# agent configuration < inventory group_vars); the agent's own copies are gone.
MOVED_TENANCY_SETTINGS = {
    "min_version": "kamaji_tcp_min_version in the inventory's group_vars (or the Fulcrum agent configuration)",
    "max_version": "kamaji_tcp_max_version in the inventory's group_vars (or the Fulcrum agent configuration)",
    "namespace": "kamaji_tcp_namespace in the inventory's group_vars (or the Fulcrum agent configuration)",
}


class TenancySettings(_Section):
    """Operator rules the agent checks before a job touches anything (the playbooks check them again). The version
    window is not among them: it is a role variable (kamaji_tcp_min/max_version) the playbooks enforce."""

    validate_spec: bool = Field(True, description="validate params/properties as the tenant spec; false only for "
                                "an agent that serves another service type through custom playbooks")
    limits: TenantLimits = Field(default_factory=TenantLimits, description="quotas and the address policy")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """Settings that moved to the inventory, named with their new place rather than as unknown keys."""
        moved = sorted(set(data) & set(MOVED_TENANCY_SETTINGS)) if isinstance(data, dict) else []
        if moved:
            raise ValueError("; ".join(f"tenancy.{key} is no longer an agent setting: set {MOVED_TENANCY_SETTINGS[key]}"
                                       for key in moved))
        return data


class MetricsSettings(_Section):
    """Tenant metrics collection (playbooks/metrics.yml through the job runner, on its own thread)."""

    enabled: bool = Field(True, description="collect when a runner inventory is configured")
    playbook: str = "playbooks/metrics.yml"
    interval_s: float = Field(60.0, gt=0)
    timeout_s: int = Field(600, gt=0, description="cancel a collection running longer")
    post_concurrency: int = Field(8, ge=1, le=64, description="metric entries posted at the same time")
    post_attempts: int = Field(3, ge=1, description="attempts of one post before it counts as dropped")

    @field_validator("playbook")
    @classmethod
    def _playbook(cls, v: str) -> str:
        if not v.endswith((".yml", ".yaml")):
            raise ValueError(f"{v!r} must be a .yml file")
        return v


class HealthSettings(_Section):
    """The agent's health endpoint: /healthz, /readyz, /metrics (Prometheus text)."""

    enabled: bool = True
    host: str = Field("127.0.0.1", description="listen address (loopback by default)")
    port: int = Field(9465, ge=0, le=65535, description="0 = any free port")
    loop_max_age_s: float = Field(120.0, gt=0, description="/healthz: the agent loop ran this recently")
    heartbeat_max_age_s: float | None = Field(None, gt=0, description="/healthz: default 3 heartbeat intervals")
    fulcrum_max_age_s: float = Field(120.0, gt=0, description="/readyz: Fulcrum answered this recently")


class LeadershipSettings(_Section):
    """One active instance per agent token: a coordination.k8s.io Lease on the Kamaji parent cluster when a
    kubeconfig is given, otherwise a lock on the state directory."""

    mode: Literal["auto", "lease", "file", "none"] = "auto"
    kubeconfig: Path | None = Field(None, description="the Kamaji parent cluster's kubeconfig (for the Lease)")
    context: str | None = None
    namespace: str = Field("kamaji-tenants", description="the Lease's namespace")
    lease_name: str | None = Field(None, description="default agentkube-<agent id>")
    lease_duration_s: int = Field(15, ge=1)
    renew_deadline_s: float = Field(10.0, ge=1)
    retry_period_s: float = Field(2.0, gt=0)
    once_wait_s: float = Field(60.0, ge=0, description="`run --once`: how long to wait for an active instance")

    @model_validator(mode="after")
    def _timing(self) -> LeadershipSettings:
        # client-go's leaderelection.NewLeaderElector: leaseDuration > renewDeadline > JitterFactor * retryPeriod
        if not self.lease_duration_s > self.renew_deadline_s > 1.2 * self.retry_period_s:
            raise ValueError("lease_duration_s > renew_deadline_s > 1.2 * retry_period_s must hold")
        if self.mode == "lease" and self.kubeconfig is None:
            raise ValueError("mode lease needs kubeconfig")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTKUBE_", env_nested_delimiter="__", extra="forbid")

    fulcrum: FulcrumSettings
    agent: AgentLoopSettings = Field(default_factory=AgentLoopSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    tenancy: TenancySettings = Field(default_factory=TenancySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    leadership: LeadershipSettings = Field(default_factory=LeadershipSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment > file (passed as init kwargs by load_settings)
        return (env_settings, init_settings)


class ConfigError(Exception):
    """Invalid configuration; the message names each bad setting."""


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"config file {config_file}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {config_file}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except (yaml.YAMLError, RecursionError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"config file {config_file}: not valid YAML: {first}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file}: must be a YAML mapping")
        data = loaded
    if overrides:
        data = {**data, **overrides}
    try:
        return Settings(**data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            path = ".".join(str(p) for p in err["loc"])
            env = "AGENTKUBE_" + "__".join(str(p).upper() for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            lines.append(f"setting {path or '(root)'} ({env}): {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def scrub_secret_env() -> None:
    """Drop secret-bearing AGENTKUBE_ variables from this process's environment once the settings are
    loaded, so child processes (ansible-runner, ssh) never inherit them."""
    for key in list(os.environ):
        if key.startswith("AGENTKUBE_") and any(w in key for w in ("TOKEN", "SECRET", "PASSWORD", "KEY")):
            del os.environ[key]
