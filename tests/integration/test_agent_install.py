"""Fulcrum's install flow end to end in the lab: an admin creates the install command (POST
/agents/{id}/install-command), the operator runs it as Core rendered it, `agentkube install` fetches the configuration
over TLS and writes a 0600 agent.yaml that the agent loads and runs with. The install token is spent: running the
command again fails and leaves the file alone. Nothing printed holds a token or the install URL."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from agentkube.core.settings import load_settings
from agentkube_lab.certs import LabCA
from agentkube_lab.fulcrum_catalog import Catalog, register_catalog
from agentkube_lab.fulcrum_emulator import FulcrumEmulator

pytestmark = pytest.mark.integration

AGENTKUBE = [sys.executable, "-m", "agentkube.cli"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("install")
    ca = LabCA(base / "ca")
    with FulcrumEmulator(cert=ca.issue("fulcrum")) as emu:
        catalog = register_catalog(emu)
        yield emu, catalog, Path(ca.ca_file), base


def _install_command(emu: FulcrumEmulator, catalog: Catalog, ca_file: Path) -> dict:
    resp = requests.post(f"{emu.url}/agents/{catalog.agent_id}/install-command",
                         headers={"Authorization": f"Bearer {emu.admin_token}"}, verify=str(ca_file), timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _run_as_rendered(command: str, extra: list[str], tmp: Path, verbose: bool = False) -> subprocess.CompletedProcess:
    """The installCommand as Core rendered it: `VAR='bearer' /opt/agentkube/bin/agentkube install --config-url
    '<url>'`, with this checkout's agentkube instead of /opt/agentkube/bin/agentkube and lab-only options added."""
    words = shlex.split(command)
    program_at = next(i for i, w in enumerate(words) if not re.match(r"[A-Za-z_][A-Za-z0-9_]*=", w))
    assignments = words[:program_at]
    assert words[program_at] == "/opt/agentkube/bin/agentkube"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    env.update(dict(a.split("=", 1) for a in assignments))
    env["HOME"] = str(tmp)
    argv = [*AGENTKUBE, *(["-v"] if verbose else []), *words[program_at + 1:], *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_install_command_writes_a_config_the_agent_runs_with_and_is_single_use(lab, tmp_path):
    emu, catalog, ca_file, _ = lab
    token_file = tmp_path / "fulcrum-token"
    token_file.write_text(catalog.agent_token + "\n")
    token_file.chmod(0o600)
    output = tmp_path / "etc" / "agent.yaml"
    minted = _install_command(emu, catalog, ca_file)
    assert minted["url"].startswith(emu.url + "/agents/install/")
    assert f"--config-url '{minted['url']}'" in minted["installCommand"]
    bearer = shlex.split(minted["installCommand"])[0].split("=", 1)[1]
    secrets_ = [catalog.agent_token, bearer, minted["url"].split("/agents/install/")[1].split("/")[0]]

    extra = ["--output", str(output), "--ca-file", str(ca_file), "--token-file", str(token_file)]
    first = _run_as_rendered(minted["installCommand"], extra, tmp_path, verbose=True)  # debug logs: no token either
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert sorted(p.name for p in output.parent.iterdir()) == ["agent.yaml"]  # no temporary file left
    settings = load_settings(output)
    assert settings.fulcrum.url == emu.url  # the API base of the install URL
    assert settings.fulcrum.token is not None and settings.fulcrum.token.get_secret_value() == catalog.agent_token
    assert settings.fulcrum.ca_file == ca_file.resolve()
    assert settings.leadership.namespace == "kamaji-tenants"  # rendered from the agent's kamaji_tcp_namespace
    assert "systemctl enable --now agentkube" in first.stdout and "podman run" in first.stdout
    text = output.read_text()
    for secret in secrets_:
        assert secret not in first.stdout + first.stderr
        assert secret not in text  # the config points at the token file; it holds no secret

    # the agent runs with what was written (its state dir moved out of /var/lib for the test)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKUBE_")}
    env.update({"AGENTKUBE_AGENT__STATE_DIR": str(tmp_path / "state"), "AGENTKUBE_HEALTH__PORT": "0",
                "HOME": str(tmp_path)})
    before = len(emu.request_log)
    ran = subprocess.run([*AGENTKUBE, "run", "--once", "--config", str(output)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert any(r.path.endswith("/agents/me") and r.status == 200 for r in emu.request_log[before:])

    # the token is spent: the same command fails with Core's uniform 404, the file stays as it was
    written = output.read_bytes()
    second = _run_as_rendered(minted["installCommand"], extra, tmp_path)
    assert second.returncode == 1
    assert "404" in second.stderr and "regenerate" in second.stderr
    assert output.read_bytes() == written
    for secret in secrets_:
        assert secret not in second.stdout + second.stderr
    # the emulator's request log never kept the token either
    assert all(secrets_[2] not in r.path for r in emu.request_log)


def test_checks_before_the_fetch_tls_and_a_config_that_does_not_validate(lab, tmp_path):
    emu, catalog, ca_file, _ = lab
    # an agent type whose template renders a setting the agent refuses (max_concurrent_jobs must be >= 1)
    agent_type = emu.create_agent_type("bad-install", [catalog.service_type_id], {"properties": {
        "jobs": {"type": "integer", "label": "jobs", "default": 0}}}, {
        "configTemplate": "agent:\n  max_concurrent_jobs: {{.jobs}}\n",
        "cmdTemplate": "AGENTKUBE_INSTALL_AUTH_TOKEN='{{.authToken}}' /opt/agentkube/bin/agentkube install "
                       "--config-url '{{.configUrl}}'"})
    agent = emu.create_agent("bad-install-agent", catalog.provider_id, agent_type["id"], {})
    minted = requests.post(f"{emu.url}/agents/{agent['id']}/install-command",
                           headers={"Authorization": f"Bearer {emu.admin_token}"}, verify=str(ca_file),
                           timeout=10).json()
    output = tmp_path / "agent.yaml"
    empty_token = tmp_path / "empty-token"
    empty_token.write_text("   \n")
    good_token = tmp_path / "token"
    good_token.write_text(catalog.agent_token)
    misses = len(emu.state.install_fetch_misses)

    # an empty token file is caught before the single-use fetch, and names the file
    r = _run_as_rendered(minted["installCommand"], ["--output", str(output), "--ca-file", str(ca_file),
                                                    "--token-file", str(empty_token)], tmp_path)
    assert r.returncode == 1 and f"token file {empty_token} is empty" in r.stderr and not output.exists()
    # TLS is verified: without the lab CA the fetch fails and says why
    r = _run_as_rendered(minted["installCommand"], ["--output", str(output), "--token-file", str(good_token)],
                         tmp_path)
    assert r.returncode == 1 and "TLS verification" in r.stderr and not output.exists()
    assert len(emu.state.install_fetch_misses) == misses  # neither reached the endpoint: the token is intact
    # fetched, but the agent would refuse it: nothing written, the setting named
    r = _run_as_rendered(minted["installCommand"], ["--output", str(output), "--ca-file", str(ca_file),
                                                    "--token-file", str(good_token)], tmp_path)
    assert r.returncode == 1
    assert "agent.max_concurrent_jobs" in r.stderr and "nothing written" in r.stderr
    assert not output.exists() and list(tmp_path.glob(".agent.yaml.*")) == []
    assert catalog.agent_token not in r.stdout + r.stderr
