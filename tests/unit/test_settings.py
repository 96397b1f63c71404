"""Agent settings: environment only, a YAML file with environment overrides, token_file, errors that name the
setting and its environment variable, unknown settings, TLS defaults, and scrubbing secret variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from agentkube.core.settings import DEFAULT_ACTIONS, ConfigError, load_settings, scrub_secret_env

URL = "https://fulcrum.example/api/v1"
TOKEN = "fulcrum-agent-token-5b1e"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Only what a test sets: no AGENTKUBE_ variable from the outside environment."""
    for key in list(os.environ):
        if key.startswith("AGENTKUBE_"):
            monkeypatch.delenv(key)


def config_file(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        load_settings(*args, **kwargs)
    return str(e.value)


def test_environment_alone_is_enough(monkeypatch):
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL + "/")
    monkeypatch.setenv("AGENTKUBE_FULCRUM__TOKEN", TOKEN)
    monkeypatch.setenv("AGENTKUBE_AGENT__MAX_CONCURRENT_JOBS", "2")
    s = load_settings()
    assert s.fulcrum.url == URL  # trailing slash dropped
    assert s.fulcrum.token.get_secret_value() == TOKEN
    assert s.agent.max_concurrent_jobs == 2
    assert TOKEN not in repr(s)
    assert TOKEN not in str(s.model_dump())


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    s = load_settings(overrides={"fulcrum": {"url": URL, "token": TOKEN}})
    assert s.fulcrum.verify is True  # TLS verification is on unless switched off
    assert (s.fulcrum.retry_attempts, s.fulcrum.timeout_s) == (8, 30.0)
    assert s.agent.state_dir == tmp_path / "agentkube"
    assert s.runner.action_map() == DEFAULT_ACTIONS
    assert s.tenancy.validate_spec is True


def test_the_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    path = config_file(tmp_path, {
        "fulcrum": {"url": "https://file.example/api/v1", "token": "from-file-token"},
        "agent": {"poll_interval_s": 3, "max_concurrent_jobs": 6},
    })
    s = load_settings(path)
    assert (s.fulcrum.url, s.agent.poll_interval_s, s.agent.max_concurrent_jobs) == (
        "https://file.example/api/v1", 3.0, 6)
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL)
    monkeypatch.setenv("AGENTKUBE_AGENT__POLL_INTERVAL_S", "0.5")
    s = load_settings(path)
    assert s.fulcrum.url == URL
    assert s.agent.poll_interval_s == 0.5
    # what the environment does not set still comes from the file, even inside the same section
    assert s.fulcrum.token.get_secret_value() == "from-file-token"
    assert s.agent.max_concurrent_jobs == 6


def test_token_file(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL)
    monkeypatch.setenv("AGENTKUBE_FULCRUM__TOKEN_FILE", str(token_file))
    assert load_settings().fulcrum.token.get_secret_value() == TOKEN


def test_an_explicit_token_wins_over_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file")
    s = load_settings(overrides={"fulcrum": {"url": URL, "token": TOKEN, "token_file": str(token_file)}})
    assert s.fulcrum.token.get_secret_value() == TOKEN


def test_a_missing_token_file_is_named(tmp_path):
    missing = tmp_path / "nope"
    message = config_error(overrides={"fulcrum": {"url": URL, "token_file": str(missing)}})
    assert "setting fulcrum (AGENTKUBE_FULCRUM)" in message
    assert f"token_file {missing}: No such file or directory" in message


def test_plain_http_is_refused_unless_explicitly_allowed():
    message = config_error(overrides={"fulcrum": {"url": "http://fulcrum.example/api/v1", "token": TOKEN}})
    assert "must be https:// (set allow_insecure_http: true" in message
    s = load_settings(overrides={"fulcrum": {"url": "http://fulcrum.example/api/v1", "token": TOKEN,
                                             "allow_insecure_http": True}})
    assert s.fulcrum.url == "http://fulcrum.example/api/v1"


def test_tenant_limits_are_operator_settings():
    s = load_settings(overrides={"fulcrum": {"url": URL, "token": TOKEN},
                                 "tenancy": {"limits": {"max_workers": 5,
                                                        "control_plane_address_ranges": ["203.0.113.0/24"]}}})
    assert s.tenancy.limits.max_workers == 5
    assert s.tenancy.limits.address_problem("203.0.113.7") == ""
    assert "outside the allowed ranges (203.0.113.0/24)" in s.tenancy.limits.address_problem("10.0.0.5")
    assert "setting tenancy.limits.max_cluster" in config_error(
        overrides={"fulcrum": {"url": URL, "token": TOKEN}, "tenancy": {"limits": {"max_cluster": 1}}})
    message = config_error(overrides={"fulcrum": {"url": URL, "token": TOKEN},
                                      "tenancy": {"limits": {"max_workers": -1}}})
    assert "setting tenancy.limits.max_workers (AGENTKUBE_TENANCY__LIMITS__MAX_WORKERS)" in message


@pytest.mark.parametrize("fulcrum", [{"url": URL}, {"url": URL, "token": ""}])
def test_a_token_is_required(fulcrum):
    assert "token (or token_file) is required" in config_error(overrides={"fulcrum": fulcrum})


def test_fulcrum_itself_is_required():
    message = config_error(overrides={})
    assert "setting fulcrum (AGENTKUBE_FULCRUM): Field required" in message


@pytest.mark.parametrize(("env", "value", "setting", "words"), [
    ("AGENTKUBE_FULCRUM__URL", "fulcrum.example/api", "fulcrum.url", "must start with http:// or https://"),
    ("AGENTKUBE_FULCRUM__TIMEOUT_S", "0", "fulcrum.timeout_s", "greater than 0"),
    ("AGENTKUBE_FULCRUM__RETRY_ATTEMPTS", "zero", "fulcrum.retry_attempts", "integer"),
    ("AGENTKUBE_FULCRUM__VERIFY_TLS", "perhaps", "fulcrum.verify_tls", "boolean"),
    ("AGENTKUBE_AGENT__POLL_INTERVAL_S", "-1", "agent.poll_interval_s", "greater than 0"),
    ("AGENTKUBE_AGENT__MAX_CONCURRENT_JOBS", "65", "agent.max_concurrent_jobs", "less than or equal to 64"),
    ("AGENTKUBE_RUNNER__DEFAULT_TIMEOUT_S", "-5", "runner.default_timeout_s", "greater than 0"),
])
def test_an_invalid_value_names_the_setting_and_its_variable(monkeypatch, env, value, setting, words):
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL)
    monkeypatch.setenv("AGENTKUBE_FULCRUM__TOKEN", TOKEN)
    monkeypatch.setenv(env, value)
    message = config_error()
    line = next(x for x in message.splitlines() if x.strip().startswith(f"setting {setting} "))
    assert f"setting {setting} ({env}): " in line
    assert words in line
    assert TOKEN not in message


def test_a_setting_that_moved_to_the_inventory_says_where(monkeypatch):
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL)
    monkeypatch.setenv("AGENTKUBE_FULCRUM__TOKEN", TOKEN)
    monkeypatch.setenv("AGENTKUBE_TENANCY__MIN_VERSION", "v1.33")
    message = config_error()
    assert "tenancy.min_version is no longer an agent setting: set kamaji_tcp_min_version in the inventory" in message


def test_every_bad_setting_is_listed(tmp_path):
    path = config_file(tmp_path, {
        "fulcrum": {"url": URL, "token": TOKEN, "tokne": "x"},
        "agnet": {"poll_interval_s": 1},
        "agent": {"heartbeat_interval_s": 0, "wat": True},
        "runner": {"actions": {"backup": "playbooks/backup.sh"}},
    })
    message = config_error(path)
    assert "setting fulcrum.tokne (AGENTKUBE_FULCRUM__TOKNE): unknown setting" in message
    assert "setting agnet (AGENTKUBE_AGNET): unknown setting" in message
    assert "setting agent.wat (AGENTKUBE_AGENT__WAT): unknown setting" in message
    assert "setting agent.heartbeat_interval_s (AGENTKUBE_AGENT__HEARTBEAT_INTERVAL_S)" in message
    assert "setting runner.actions (AGENTKUBE_RUNNER__ACTIONS): action 'backup': playbook" in message
    assert TOKEN not in message


def test_an_unknown_setting_in_the_environment_is_rejected(monkeypatch):
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL)
    monkeypatch.setenv("AGENTKUBE_FULCRUM__TOKEN", TOKEN)
    monkeypatch.setenv("AGENTKUBE_AGENT__POLL_INTERVALS", "1")
    assert "setting agent.poll_intervals (AGENTKUBE_AGENT__POLL_INTERVALS): unknown setting" in config_error()


@pytest.mark.parametrize(("content", "words"), [
    ("fulcrum: [unclosed", "config file"),
    ("- just\n- a list\n", "must be a YAML mapping"),
])
def test_an_unreadable_file_is_named(tmp_path, content, words):
    path = tmp_path / "agent.yaml"
    path.write_text(content)
    message = config_error(path)
    assert str(path) in message
    assert words in message


def test_a_missing_file_is_named(tmp_path):
    assert str(tmp_path / "absent.yaml") in config_error(tmp_path / "absent.yaml")


def test_an_empty_file_with_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "agent.yaml"
    path.write_text("")
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL)
    monkeypatch.setenv("AGENTKUBE_FULCRUM__TOKEN", TOKEN)
    assert load_settings(path).fulcrum.url == URL


def test_tls_verification_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    base = {"url": URL, "token": TOKEN}
    assert load_settings(overrides={"fulcrum": {**base, "ca_file": str(ca)}}).fulcrum.verify == str(ca)
    assert load_settings(overrides={"fulcrum": {**base, "verify_tls": False}}).fulcrum.verify is False
    message = config_error(overrides={"fulcrum": {**base, "ca_file": str(tmp_path / "missing.pem")}})
    assert f"ca_file {tmp_path / 'missing.pem'} does not exist" in message


def test_runner_actions_and_timeouts():
    s = load_settings(overrides={
        "fulcrum": {"url": URL, "token": TOKEN},
        "runner": {"actions": {"backup": "playbooks/backup.yml", "create": "site/create.yaml"},
                   "timeout_s": {"create": 7200}, "default_timeout_s": 600},
    })
    actions = s.runner.action_map()
    assert actions["backup"] == "playbooks/backup.yml"
    assert actions["create"] == "site/create.yaml"
    assert actions["delete"] == DEFAULT_ACTIONS["delete"]
    assert (s.runner.timeout_for("create"), s.runner.timeout_for("delete")) == (7200, 600)


def test_scrub_secret_env_drops_only_secret_agentkube_variables(monkeypatch):
    keep = {"AGENTKUBE_FULCRUM__URL": URL, "AGENTKUBE_AGENT__POLL_INTERVAL_S": "1", "OTHER_TOKEN": "not-ours"}
    drop = {"AGENTKUBE_FULCRUM__TOKEN": TOKEN, "AGENTKUBE_FULCRUM__TOKEN_FILE": "/run/secrets/t",
            "AGENTKUBE_RUNNER__EXTRA_ENV__PVE_SECRET": "pve", "AGENTKUBE_X__PASSWORD": "pw",
            "AGENTKUBE_X__SSH_KEY": "key"}
    monkeypatch.setenv("AGENTKUBE_FULCRUM__URL", URL)
    monkeypatch.setenv("AGENTKUBE_FULCRUM__TOKEN", TOKEN)
    s = load_settings()
    for key, value in {**keep, **drop}.items():
        monkeypatch.setenv(key, value)
    scrub_secret_env()
    assert all(os.environ.get(k) == v for k, v in keep.items())
    assert not [k for k in drop if k in os.environ]
    assert s.fulcrum.token.get_secret_value() == TOKEN  # loaded settings keep the value
