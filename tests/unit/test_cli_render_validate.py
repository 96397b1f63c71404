"""`agentkube render tcp` and `agentkube validate`: what they print, where, and their exit codes.
Sockets are blocked in every test: these commands never call an API."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import yaml

from agentkube.cli import main
from agentkube.core.naming import tenant_name
from agentkube.core.tcp_manifest import TcpSettings, render_tcp
from agentkube.core.tenant_spec import DNS1123_LABEL, validate_tenant_spec

GOOD = {"kubernetesVersion": "v1.35.7", "controlPlane": {"replicas": 3, "address": "10.0.0.50"}}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network call was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write(tmp_path, name, data, as_json=False):
    path = tmp_path / name
    path.write_text(json.dumps(data) if as_json else yaml.safe_dump(data))
    return str(path)


def test_render_tcp_prints_only_the_manifest_on_stdout(tmp_path, capsys):
    props = write(tmp_path, "props.yaml", GOOD)
    rc = main(["render", "tcp", "--properties", props, "--service-name", "Team A", "--service-id", "abc-1"])
    out, _ = capsys.readouterr()
    assert rc == 0
    printed = yaml.safe_load(out)
    assert printed == render_tcp(validate_tenant_spec(GOOD), "Team A", "abc-1", TcpSettings())
    assert printed["metadata"]["name"] == tenant_name("Team A", "abc-1")
    assert "INFO" not in out


def test_render_tcp_reads_json_and_defaults_the_service(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    props = write(tmp_path, "my-tenant.json", GOOD, as_json=True)
    assert main(["render", "tcp", "--properties", props]) == 0
    tcp = yaml.safe_load(capsys.readouterr().out)
    assert tcp["metadata"]["name"].startswith("my-tenant-")
    assert "no --service-id" in caplog.text  # logged (stderr outside pytest), never on stdout


@pytest.mark.parametrize(
    "service_name",
    ["Production Cluster For The Finance Team", "ALL CAPS", "x" * 100, "  spaced   out  ", "émoji 🚀 name"],
)
def test_any_service_name_renders_a_dns_1123_name(tmp_path, capsys, service_name):
    props = write(tmp_path, "p.yaml", GOOD)
    assert main(["render", "tcp", "--properties", props, "--service-name", service_name, "--service-id", "9"]) == 0
    tcp = yaml.safe_load(capsys.readouterr().out)
    name = tcp["metadata"]["name"]
    assert DNS1123_LABEL.match(name) and len(name) <= 63
    assert tcp["metadata"]["annotations"]["agentkube.io/service-name"] == service_name


def test_render_uses_the_operator_config(tmp_path, capsys):
    props = write(tmp_path, "p.yaml", GOOD)
    config = write(tmp_path, "all.yml", {
        "kamaji_tcp_namespace": "tenants-eu",
        "kamaji_tcp_extra_spec": {"networkProfile": {"clusterDomain": "eu.local"}},
        "proxmox_vm_storage": "ceph",  # other roles' settings in the same group_vars file
    })
    assert main(["render", "tcp", "--properties", props, "--config", config]) == 0
    tcp = yaml.safe_load(capsys.readouterr().out)
    assert tcp["metadata"]["namespace"] == "tenants-eu"
    assert tcp["spec"]["networkProfile"]["clusterDomain"] == "eu.local"


def test_render_refuses_a_bad_config_naming_the_variable(tmp_path, capsys):
    props = write(tmp_path, "p.yaml", GOOD)
    config = write(tmp_path, "all.yml", {"kamaji_tcp_namespace": "Not_Valid"})
    assert main(["render", "tcp", "--properties", props, "--config", config]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "kamaji_tcp_namespace" in err


def test_the_config_window_applies_to_validate(tmp_path, capsys):
    props = write(tmp_path, "p.yaml", GOOD)
    config = write(tmp_path, "all.yml", {"kamaji_tcp_max_version": "v1.34"})
    assert main(["validate", "--properties", props, "--config", config]) == 1
    assert "kubernetesVersion: v1.35.7 is outside the supported window v1.33 to v1.34" in capsys.readouterr().out


BAD_SPECS = [
    ({"kubernetesVersion": "1.35.7"}, "kubernetesVersion"),
    ({"kubernetesVersion": "v1.35"}, "kubernetesVersion"),
    ({"kubernetesVersion": "v1.35.7", "controlPlane": {"serviceType": "NodePort"}}, "controlPlane.address"),
    (
        {"kubernetesVersion": "v1.35.7", "network": {"serviceCidr": "10.96.0.0/16", "dnsServiceIP": "10.97.0.10"}},
        "network.dnsServiceIP",
    ),
    ({"kubernetesVersion": "v1.35.7", "nodePools": [{"name": "a"}, {"name": "a"}]}, "nodePools"),
    ({"kubernetesVersion": "v1.35.7", "flavour": "large"}, "flavour"),
    ({"kubernetesVersion": "v1.35.7", "controlPlane": {"replica": 2}}, "controlPlane.replica"),
    ({"kubernetesVersion": "v1.37.0"}, "kubernetesVersion"),
]


@pytest.mark.parametrize(("props", "field"), BAD_SPECS)
def test_validate_names_the_field_and_fails(tmp_path, capsys, props, field):
    path = write(tmp_path, "p.yaml", props)
    assert main(["validate", "--properties", path]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{field}: ") for line in lines), lines


@pytest.mark.parametrize(("props", "field"), BAD_SPECS)
def test_render_refuses_bad_specs_with_nothing_on_stdout(tmp_path, capsys, props, field):
    path = write(tmp_path, "p.yaml", props)
    assert main(["render", "tcp", "--properties", path]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{field}: " in err


def test_validate_prints_every_error_one_per_line(tmp_path, capsys):
    path = write(tmp_path, "p.yaml", {
        "kubernetesVersion": "latest",
        "controlPlane": {"serviceType": "NodePort", "port": 0},
        "nodePools": [{"name": "Bad_Name"}],
        "extra": True,
    })
    assert main(["validate", "--properties", path]) == 1
    fields = [line.split(": ", 1)[0] for line in capsys.readouterr().out.splitlines()]
    assert set(fields) >= {"kubernetesVersion", "controlPlane.port", "nodePools[0].name", "extra"}


def test_validate_accepts_a_good_spec(tmp_path, capsys):
    assert main(["validate", "--properties", write(tmp_path, "p.json", GOOD, as_json=True)]) == 0
    assert capsys.readouterr().out.strip() == "valid"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "No such file"), ("a: [unclosed", "not valid YAML"), ("- a\n- b\n", "expected a mapping")],
)
def test_unreadable_properties_fail_with_the_file_named(tmp_path, capsys, content, message):
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["validate", "--properties", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_render_is_a_group_of_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["render"])
    assert "tcp" in capsys.readouterr().err
