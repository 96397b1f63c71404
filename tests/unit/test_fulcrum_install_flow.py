"""The Fulcrum emulator's install flow, rule by rule as Core has it (pkg/api/handlers_agent_install_token.go,
pkg/domain/agent_install_token.go, agent_install.go, agent_type_template.go), and the text/template subset it
renders with (agentkube_lab.go_template)."""

from __future__ import annotations

import shlex

import pytest
import requests
import yaml

from agentkube.core.shipped import load_shipped
from agentkube_lab import go_template
from agentkube_lab.fulcrum_catalog import register_catalog
from agentkube_lab.fulcrum_emulator import FulcrumEmulator

CMD = "AGENTKUBE_INSTALL_AUTH_TOKEN='{{.authToken}}' agentkube install --config-url '{{.configUrl}}'"
SCHEMA = {"properties": {
    "host": {"type": "string", "label": "host"},
    "port": {"type": "integer", "label": "port", "default": 8006},
    "big": {"type": "integer", "label": "big", "default": 10000000},
    "apiKey": {"type": "string", "label": "key", "secret": {"type": "persistent"}},
}}
CONFIG = "host={{.host}}\nport={{.port}}\nbig={{.big}}\nkey={{printf \"%q\" .apiKey}}\n"
NOT_FOUND = {"status": "Resource not found"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def world():
    clock = Clock()
    with FulcrumEmulator(clock=clock) as emu:
        catalog = register_catalog(emu)
        yield emu, catalog, clock


def _call(emu: FulcrumEmulator, method: str, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = path if path.startswith("http") else emu.url + path
    return requests.request(method, url, headers=headers, timeout=10)


def _agent(emu: FulcrumEmulator, catalog, configuration: dict, config_template: str = CONFIG,
           schema: dict | None = None) -> str:
    at = emu.create_agent_type(f"t-{len(emu.state.agent_types)}", [catalog.service_type_id], schema or SCHEMA,
                               {"configTemplate": config_template, "cmdTemplate": CMD})
    return emu.create_agent("a", catalog.provider_id, at["id"], configuration)["id"]


def _mint(emu: FulcrumEmulator, agent_id: str) -> tuple[str, str]:
    """(install URL, bootstrap bearer) of a new install command."""
    resp = _call(emu, "POST", f"/agents/{agent_id}/install-command", emu.admin_token)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"installCommand", "url", "expiresAt"}
    bearer = shlex.split(body["installCommand"])[0].split("=", 1)[1]
    return body["url"], bearer


def test_fetch_renders_the_config_template_with_secrets_resolved_as_go_prints_json(world):
    emu, catalog, _ = world
    agent_id = _agent(emu, catalog, {"host": "pve.example", "apiKey": 'se"cret\n'})
    assert emu.get_agent(agent_id)["configuration"]["apiKey"].startswith("vault://")  # stored as a reference
    url, bearer = _mint(emu, agent_id)
    assert url.startswith(emu.url + "/agents/install/") and url.endswith("/config")
    resp = _call(emu, "GET", url, bearer)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/plain"  # configContentType's default
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["X-Content-Type-Options"] == "nosniff"
    # numbers are float64 in Go's map[string]any: 8006 prints as is, 10000000 as 1e+07
    assert resp.text == 'host=pve.example\nport=8006\nbig=1e+07\nkey="se\\"cret\\n"\n'


def test_the_token_is_single_use(world):
    emu, catalog, _ = world
    url, bearer = _mint(emu, _agent(emu, catalog, {"host": "h", "apiKey": "k"}))
    assert _call(emu, "GET", url, bearer).status_code == 200
    second = _call(emu, "GET", url, bearer)
    assert (second.status_code, second.json()) == (404, NOT_FOUND)
    assert emu.state.install_fetch_misses[-1] == "install token already used (emulator: single use)"


def test_the_token_and_its_bearer_expire_after_5_minutes(world):
    emu, catalog, clock = world
    agent_id = _agent(emu, catalog, {"host": "h", "apiKey": "k"})
    url, bearer = _mint(emu, agent_id)
    meta = _call(emu, "GET", f"/agents/{agent_id}/install-command", emu.admin_token).json()
    clock.now += 301
    try:
        resp = _call(emu, "GET", url, emu.admin_token)  # any admin/agent bearer passes the middleware
        assert (resp.status_code, resp.json()) == (404, NOT_FOUND)
        assert emu.state.install_fetch_misses[-1] == "install token expired"
        assert _call(emu, "GET", url, bearer).status_code == 403  # the bootstrap bearer expired with it
        # the metadata stays readable when expired (Get), so the admin knows to regenerate; no token in it
        after = _call(emu, "GET", f"/agents/{agent_id}/install-command", emu.admin_token)
        assert after.status_code == 200 and after.json() == meta and set(meta) == {"id", "expiresAt", "createdAt"}
        assert _call(emu, "POST", f"/agents/{agent_id}/install-command", emu.admin_token).status_code == 409
        url2, bearer2 = _mint_regenerated(emu, agent_id)
        assert url2 != url and _call(emu, "GET", url2, bearer2).status_code == 200
    finally:
        clock.now -= 301


def _mint_regenerated(emu: FulcrumEmulator, agent_id: str) -> tuple[str, str]:
    resp = _call(emu, "POST", f"/agents/{agent_id}/install-command/regenerate", emu.admin_token)
    assert resp.status_code == 200, resp.text
    return resp.json()["url"], shlex.split(resp.json()["installCommand"])[0].split("=", 1)[1]


def test_before_expiry_the_token_still_works(world):
    emu, catalog, clock = world
    url, bearer = _mint(emu, _agent(emu, catalog, {"host": "h", "apiKey": "k"}))
    clock.now += 299
    try:
        assert _call(emu, "GET", url, bearer).status_code == 200
    finally:
        clock.now -= 299


def test_every_failure_past_authentication_is_the_same_404(world):
    emu, catalog, _ = world
    answers, reasons = [], []

    def fetch(url: str) -> None:
        resp = _call(emu, "GET", url, emu.admin_token)
        answers.append((resp.status_code, resp.headers.get("Content-Type"), resp.text))
        reasons.append(emu.state.install_fetch_misses[-1])

    fetch(f"{emu.url}/agents/install/not-a-token/config")
    # regenerated: the old token is gone
    agent_id = _agent(emu, catalog, {"host": "h", "apiKey": "k"})
    old, _ = _mint(emu, agent_id)
    _mint_regenerated(emu, agent_id)
    fetch(old)
    # revoked
    agent_id = _agent(emu, catalog, {"host": "h", "apiKey": "k"})
    url, _ = _mint(emu, agent_id)
    assert _call(emu, "DELETE", f"/agents/{agent_id}/install-command", emu.admin_token).status_code == 204
    fetch(url)
    assert _call(emu, "GET", f"/agents/{agent_id}/install-command", emu.admin_token).status_code == 404
    # the vault cannot resolve the secret
    agent_id = _agent(emu, catalog, {"host": "h", "apiKey": "k"})
    url, _ = _mint(emu, agent_id)
    ref = emu.get_agent(agent_id)["configuration"]["apiKey"].removeprefix("vault://")
    del emu.state.vault[ref]
    fetch(url)
    # the configuration lacks a key the template reads (missingkey=error)
    url, _ = _mint(emu, _agent(emu, catalog, {"apiKey": "k"}))
    fetch(url)
    assert len(set(answers)) == 1 and answers[0][0] == 404
    assert reasons == ["install token not found", "install token not found", "install token not found",
                       f"vault resolution failed: secret {ref} not found",
                       'config template render failed: configTemplate references unknown property "host"']


def test_who_may_call(world):
    emu, catalog, _ = world
    agent_id = _agent(emu, catalog, {"host": "h", "apiKey": "k"})
    path = f"/agents/{agent_id}/install-command"
    # install-command: admins (participants in Core), never an agent, even for itself
    assert _call(emu, "POST", path, catalog.agent_token).status_code == 403
    assert _call(emu, "POST", path, None).status_code == 401
    other_agent = emu.create_agent("other", catalog.provider_id, catalog.agent_type_id)["id"]
    assert _call(emu, "POST", "/agents/00000000-0000-4000-8000-000000000000/install-command",
                 emu.admin_token).status_code == 403  # AuthzFromID: the loader fails -> 403, not 404
    assert _call(emu, "POST", "/agents/not-a-uuid/install-command", emu.admin_token).status_code == 400
    url, bearer = _mint(emu, agent_id)
    assert _call(emu, "POST", path, emu.admin_token).status_code == 409  # Regenerate rotates
    assert _call(emu, "DELETE", path, catalog.agent_token).status_code == 403
    assert _call(emu, "POST", path + "/regenerate", catalog.agent_token).status_code == 403
    # the metadata: an agent may read its own (ActionRead on agents), not another's
    assert _call(emu, "GET", path, bearer).status_code == 200
    assert _call(emu, "GET", f"/agents/{other_agent}/install-command", bearer).status_code == 403
    # the fetch: a bearer is needed before the token is even looked at; a bad one is 403
    assert _call(emu, "GET", url, None).status_code == 401
    assert _call(emu, "GET", url, "not-a-token").status_code == 403
    assert _call(emu, "GET", url, catalog.agent_token).status_code == 200  # any agent bearer passes the gate
    # an agent type without templates: 400 on create; regenerate without a token: 404
    plain = emu.create_agent_type("plain", [catalog.service_type_id])
    plain_agent = emu.create_agent("plain-agent", catalog.provider_id, plain["id"])["id"]
    resp = _call(emu, "POST", f"/agents/{plain_agent}/install-command", emu.admin_token)
    assert resp.status_code == 400 and "no install templates" in resp.json()["error"]
    assert _call(emu, "POST", f"/agents/{other_agent}/install-command/regenerate",
                 emu.admin_token).status_code == 404
    # the request log keeps neither the token nor the command
    token = url.split("/agents/install/")[1].split("/")[0]
    assert all(token not in r.path and token not in str(r.response) for r in emu.request_log)


@pytest.mark.parametrize(("templates", "message"), [
    ({"configTemplate": "x={{.nope}}", "cmdTemplate": CMD}, 'configTemplate references unknown property "nope"'),
    ({"configTemplate": "u={{.configUrl}}", "cmdTemplate": CMD},
     'configTemplate references unknown property "configUrl"'),
    ({"configTemplate": "h={{.host}}"}, "configTemplate and cmdTemplate must both be set or both be empty"),
    ({"configTemplate": "h={{.host}}", "cmdTemplate": "install {{.configUrl}}"},
     "cmdTemplate must reference {{.authToken}} when configTemplate is set"),
    ({"configTemplate": "h={{.host}}", "cmdTemplate": "install {{.authToken}}"},
     "cmdTemplate must reference {{.configUrl}} when configTemplate is set"),
    ({"configTemplate": "{{if .host}}h{{end}}", "cmdTemplate": CMD}, "is not implemented by the emulator"),
    ({"configTemplate": "h={{.host}}", "cmdTemplate": CMD, "configContentType": "yaml"},
     "configContentType 'yaml' is not a valid media type"),
])
def test_agent_types_templates_are_checked_at_create(world, templates, message):
    emu, catalog, _ = world
    resp = _call_json(emu, "/agent-types", {"name": "bad", "serviceTypeIds": [catalog.service_type_id],
                                            "configurationSchema": SCHEMA, **templates})
    assert resp.status_code == 400
    assert message in resp.json()["error"]


def _call_json(emu: FulcrumEmulator, path: str, body: dict) -> requests.Response:
    return requests.post(emu.url + path, json=body, headers={"Authorization": f"Bearer {emu.admin_token}"},
                         timeout=10)


def test_the_shipped_agent_type_renders_agent_yaml(world):
    emu, catalog, _ = world
    shipped = load_shipped("agent-type")
    assert "{{.configUrl}}" in shipped["cmdTemplate"] and "{{.authToken}}" in shipped["cmdTemplate"]
    registered = emu.state.agent_types[catalog.agent_type_id]
    assert registered["configTemplate"] == shipped["configTemplate"]
    configuration = {"proxmox_vm_api_token_secret": "pve-secret", "kamaji_tcp_namespace": "tenants: x"}
    agent_id = emu.create_agent("shipped", catalog.provider_id, catalog.agent_type_id, configuration)["id"]
    url, bearer = _mint(emu, agent_id)
    text = _call(emu, "GET", url, bearer).text
    assert "pve-secret" not in text  # no secret in agent.yaml: the agent reads its configuration from Fulcrum
    data = yaml.safe_load(text)
    assert data["leadership"]["namespace"] == "tenants: x"  # quoted (%q): a value cannot inject YAML
    assert data["fulcrum"] == {"token_file": "/etc/agentkube/fulcrum-token"}


def test_go_template_subset():
    data = {"a": "x", "n": None, "b": True, "f": 0.5, "m": {"k": 1}, "l": ["p", 2]}
    assert go_template.render("t", "{{.a}}|{{.n}}|{{.missing}}|{{.b}}|{{.f}}|{{.m}}|{{.l}}", data) == \
        "x|<no value>|<no value>|true|0.5|map[k:1]|[p 2]"
    with pytest.raises(go_template.TemplateError, match='map has no entry for key "missing"'):
        go_template.render("t", "{{.missing}}", data, missingkey="error")
    assert go_template.render("t", "a \n {{- .a -}} \n b{{/* note */}}", data) == "axb"
    assert go_template.render("t", '{{printf "%q" .a}} {{printf "%v-%s" .f .a}} {{printf "%d" .f}}', data) == \
        '"x" 0.5-x %!d(float64=0.5)'
    assert go_template.go_quote("é\x01\t") == '"é\\x01\\t"'
    for unsupported in ("{{range .l}}{{end}}", "{{.m.k}}", "{{.a | len}}", "{{$x := 1}}"):
        with pytest.raises(go_template.TemplateUnsupported):
            go_template.Template("t", unsupported)
    with pytest.raises(go_template.TemplateError, match="unclosed action"):
        go_template.Template("t", "{{.a")
