"""The agent refuses, before touching anything, what Kamaji's admission refuses (agentkube.core.tenant_spec), and
every TenantControlPlane it renders for a valid spec is admitted by the lab's strict Kamaji webhooks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from agentkube.cli import main
from agentkube.core.tcp_manifest import TcpSettings, render_tcp
from agentkube.core.tenant_spec import SpecError, cert_san_problem, validate_tenant_spec
from agentkube_lab.kamaji_webhook import cert_san_problems, check_dns_service_ips
from agentkube_lab.kube_emulator import KubeEmulator
from agentkube_lab.kube_resources import TENANT_CONTROL_PLANE
from agentkube_lab.kube_store import ApiError

V = "v1.35.7"
NS = "kamaji-tenants"

# Cert SANs around kubeadm's ValidateCertSANs boundary (DNS-1123 subdomain, wildcard, IP; 253 bytes).
SANS = [
    "api.example.com", "*.apps.example.com", "10.1.2.3", "fd00::1", "FD00::1", "::ffff:10.0.0.1", "localhost",
    "1-2", "10.0.0.256", "a" * 253, "*." + "a" * 251,
    "", "fe80::1%eth0", "fe80::1%1", "*.*.example.com", "a.*.example.com", "*", "example.com.", "-a.example",
    "a-.example", "a" * 254, "*." + "a" * 252, "exämple.com", "10.0.0.0/8", "api example.com", "line\nbreak",
    "Api.example.com", "under_score.example", "010.1.2.3", "::1:", "[::1]",
]


@pytest.mark.parametrize("san", SANS)
def test_the_agent_accepts_a_cert_san_only_if_kamaji_does(san):
    kamaji_refuses = bool(cert_san_problems([san]))
    agent_refuses = bool(cert_san_problem(san))
    assert agent_refuses or not kamaji_refuses, f"the agent lets through {san!r}, which Kamaji refuses"
    if kamaji_refuses:
        with pytest.raises(SpecError) as e:
            validate_tenant_spec({"kubernetesVersion": V, "controlPlane": {"certSANs": ["ok.example", san]}})
        [(path, message)] = e.value.errors
        assert path == "controlPlane.certSANs" and message.startswith(f"entry 1 ({san!r}) is not an IP address")


def test_a_zoned_ipv6_cert_san_is_refused_although_python_reads_it_as_an_ip():
    with pytest.raises(SpecError) as e:
        validate_tenant_spec({"kubernetesVersion": V, "controlPlane": {"certSANs": ["fe80::1%eth0"]}})
    assert e.value.errors[0][0] == "controlPlane.certSANs"


def test_agentkube_validate_names_the_cert_sans_field(tmp_path: Path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"kubernetesVersion": V, "controlPlane": {"certSANs": ["fe80::1%eth0"]}}))
    assert main(["validate", "--properties", str(path)]) == 1
    assert any(line.startswith("controlPlane.certSANs: entry 0 ('fe80::1%eth0')")
               for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize(("service_cidr", "dns_ip"), [
    ("10.96.0.0/16", "10.97.0.10"), ("10.96.0.0/16", "10.96.0.0"), ("10.96.0.0/16", "10.96.255.255"),
    ("10.96.0.0/16", "10.96.0.010"), ("10.96.0.0/16", "fd00::a"), ("10.96.0.0/16", "::ffff:10.96.0.10"),
    ("10.96.0.0/16", "10.96.0.10"), ("10.100.0.0/24", "10.100.0.254"),
])
def test_the_agent_accepts_a_dns_service_ip_only_if_kamaji_does(service_cidr, dns_ip):
    network = {"serviceCidr": service_cidr, "dnsServiceIP": dns_ip}
    try:
        spec = validate_tenant_spec({"kubernetesVersion": V, "network": network})
    except SpecError as e:
        assert [path for path, _ in e.errors] == ["network.dnsServiceIP"]
        return
    check_dns_service_ips(render_tcp(spec, "a", "b"))  # raises Rejected if Kamaji would refuse


# ---------------------------------------------------------------- rendered TCPs through the strict lab
VALID_SPECS = [
    {},
    {"kubernetesVersion": "v1.33.0"},
    {"kubernetesVersion": "v1.36.4"},
    {"controlPlane": {"replicas": 3, "port": 7443, "certSANs": ["api.example.com", "10.1.2.3"]},
     "network": {"podCidr": "10.32.0.0/12", "serviceCidr": "10.112.0.0/16", "dnsServiceIP": "10.112.0.53"}},
    {"controlPlane": {"certSANs": ["*.apps.example.com", "fd00::1", "::ffff:10.0.0.1", "a" * 253, "10.0.0.256"]}},
    {"controlPlane": {"serviceType": "LoadBalancer", "address": "10.0.0.50"}},
    {"controlPlane": {"serviceType": "NodePort", "address": "10.0.0.9", "replicas": 1}},
    {"controlPlane": {"serviceType": "ClusterIP", "replicas": 5}},
    {"network": {"serviceCidr": "10.50.0.0/16"}},
    {"network": {"serviceCidr": "172.16.0.0/28", "podCidr": "192.168.0.0/16", "dnsServiceIP": "172.16.0.14"}},
    {"addons": {"coreDNS": False, "kubeProxy": False, "konnectivity": False}},
    {"addons": {"coreDNS": False, "kubeProxy": True, "konnectivity": False}},
]
SERVICE_NAMES = ["My Cluster", "1st cluster", "42", "émoji 🚀 name", "a b c", "x" * 100, "-", "Ünïcödé---"]
SETTINGS = [TcpSettings(), TcpSettings(datastore=""),
            TcpSettings(konnectivity_port=9000, konnectivity_agent_mode="Deployment", cgroup_driver="cgroupfs")]


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> KubeEmulator:
    """The strict parent cluster's store (CRD schema when ../shared/contracts is present, then Kamaji's webhooks),
    without its HTTP server: admission is what is under test."""
    emulator = KubeEmulator(tmp_path_factory.mktemp("kube"), ready_delay=0.0)
    emulator.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return emulator


def _cases() -> list[tuple[dict, str, TcpSettings]]:
    cases = [(props, "My Cluster", SETTINGS[0]) for props in VALID_SPECS]
    cases += [({}, name, SETTINGS[0]) for name in SERVICE_NAMES]
    cases += [(VALID_SPECS[3], "Settings", settings) for settings in SETTINGS]
    return cases


@pytest.mark.parametrize(("props", "service_name", "settings"), _cases())
def test_every_rendered_tcp_is_admitted_on_create_and_on_reapply(parent, props, service_name, settings):
    spec = validate_tenant_spec({"kubernetesVersion": V, **props})
    service_id = "svc-" + hashlib.sha256(repr((props, service_name, settings)).encode()).hexdigest()[:12]
    manifest = render_tcp(spec, service_name, service_id, settings)
    name = manifest["metadata"]["name"]
    try:
        created = parent.store.create(TENANT_CONTROL_PLANE, NS, manifest)
    except ApiError as e:  # pragma: no cover - the failure message is the point
        pytest.fail(f"Kamaji would refuse the TCP rendered for {props} / {service_name!r}: {e.message}")
    assert created["spec"]["dataStore"] == (settings.datastore or "default")
    assert created["spec"]["networkProfile"]["dnsServiceIPs"] == [spec.network.dnsServiceIP]
    # the next job re-applies the re-rendered TCP, one minor up where Kamaji allows it
    major, minor = spec.minor
    bumped = spec.model_copy(update={"kubernetesVersion": f"v{major}.{min(minor + 1, 36)}.0"})
    parent.store.patch(TENANT_CONTROL_PLANE, NS, name, "application/merge-patch+json",
                       render_tcp(bumped, service_name, service_id, settings))
    parent.store.delete(TENANT_CONTROL_PLANE, NS, name)
