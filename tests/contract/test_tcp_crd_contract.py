"""Every TCP `agentkube render tcp` / the kamaji_tcp role produces must pass Kamaji's real CRD schema
(../shared/contracts/kamaji/tenantcontrolplanes.crd.yaml).

The schema is made strict before use: a Kubernetes structural schema silently prunes unknown fields, so a
typo in the template would vanish on a real cluster instead of failing; here every object with declared
`properties` rejects keys it does not declare. CEL rules (x-kubernetes-validations) are not evaluated by
jsonschema; the ones that concern fields we render are checked by hand below.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
from pathlib import Path

import pytest
import yaml

from agentkube.core.tcp_manifest import TcpSettings, render_tcp
from agentkube.core.tenant_spec import validate_tenant_spec

jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.contract

CONTRACTS = Path(__file__).resolve().parents[2].parent / "shared" / "contracts" / "kamaji"
CRD = CONTRACTS / "tenantcontrolplanes.crd.yaml"
SAMPLE = CONTRACTS / "sample-tenantcontrolplane.yaml"


def _strict(schema):
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def validator():
    if not CRD.exists():
        pytest.skip(f"Kamaji contract absent: {CRD} (the shared contracts folder sits next to the repo)")
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def _errors(validator, obj) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def _check_cel_rules(tcp: dict) -> None:
    """The CRD's CEL rules that touch fields we render."""
    net = tcp["spec"]["networkProfile"]
    for key in ("podCidr", "serviceCidr"):
        ipaddress.ip_network(net[key])  # "must be empty or a valid CIDR"
    agent = tcp["spec"].get("addons", {}).get("konnectivity", {}).get("agent", {})
    if agent.get("mode") == "DaemonSet":
        assert agent.get("replicas", 0) == 0
    if agent.get("mode") == "Deployment":
        assert agent.get("replicas", 1) != 0
    service = tcp["spec"]["controlPlane"]["service"]
    if "allocateLoadBalancerNodePorts" in service:
        assert service["serviceType"] == "LoadBalancer"


def test_the_strict_validator_accepts_kamajis_own_sample(validator):
    if not SAMPLE.exists():
        pytest.skip(f"Kamaji sample absent: {SAMPLE}")
    assert _errors(validator, yaml.safe_load(SAMPLE.read_text())) == []


def test_the_strict_validator_rejects_what_kamaji_would_drop_or_refuse(validator):
    tcp = render_tcp(validate_tenant_spec({"kubernetesVersion": "v1.35.7"}), "svc", "id-1")
    typo = copy.deepcopy(tcp)
    typo["spec"]["networkProfile"]["certSans"] = ["x"]
    assert any("certSans" in e for e in _errors(validator, typo))
    bad_type = copy.deepcopy(tcp)
    bad_type["spec"]["controlPlane"]["service"]["serviceType"] = "External"
    assert _errors(validator, bad_type)
    missing = copy.deepcopy(tcp)
    del missing["spec"]["kubernetes"]["kubelet"]
    assert any("kubelet" in e for e in _errors(validator, missing))
    # an operator's extra spec in the wrong place (resources are per component) is caught too
    misplaced = render_tcp(
        validate_tenant_spec({"kubernetesVersion": "v1.35.7"}), "svc", "id-1",
        TcpSettings(extra_spec={"controlPlane": {"deployment": {"resources": {"limits": {"cpu": "1"}}}}}),
    )
    assert any("limits" in e for e in _errors(validator, misplaced))


SERVICE_TYPES = ("LoadBalancer", "NodePort", "ClusterIP")
ADDRESSES = ("", "10.0.0.50")
ADDONS = (
    {"coreDNS": True, "kubeProxy": True, "konnectivity": True},
    {"coreDNS": True, "kubeProxy": False, "konnectivity": True},
    {"coreDNS": False, "kubeProxy": True, "konnectivity": False},
    {"coreDNS": False, "kubeProxy": False, "konnectivity": False},
)
REPLICAS = (1, 3, 5)
VERSIONS = ("v1.33.0", "v1.35.7", "v1.36.2")
CERT_SANS = ((), ("api.example.com", "10.0.0.51", "*.apps.example.com"))
EXTRA_SPECS = (
    {},
    {"controlPlane": {"deployment": {"resources": {"apiServer": {"limits": {"cpu": "2", "memory": "2Gi"}}}}}},
    {
        "networkProfile": {"clusterDomain": "tenant.local"},
        "addons": {"konnectivity": {"agent": {"mode": "Deployment", "replicas": 2}}},
    },
)
SETTINGS = (
    TcpSettings(),
    TcpSettings(namespace="tenants-b", datastore="", konnectivity_port=9132, konnectivity_agent_mode="Deployment"),
)

MATRIX = [
    combo
    for combo in itertools.product(SERVICE_TYPES, ADDRESSES, ADDONS, REPLICAS, VERSIONS, CERT_SANS, EXTRA_SPECS)
    if not (combo[0] == "NodePort" and not combo[1])  # the spec refuses NodePort without an address
]


def _spec(service_type, address, addons, replicas, version, sans):
    return validate_tenant_spec({
        "kubernetesVersion": version,
        "controlPlane": {
            "replicas": replicas,
            "serviceType": service_type,
            "address": address,
            "certSANs": list(sans),
        },
        "network": {"podCidr": "10.32.0.0/12", "serviceCidr": "10.112.0.0/16", "dnsServiceIP": "10.112.0.53"}
        if replicas == 3
        else {},
        "addons": addons,
    })


def test_the_matrix_is_broad():
    assert len(MATRIX) > 500


def test_every_rendered_tcp_in_the_matrix_passes_the_crd_schema(validator):
    failures = []
    for i, (stype, address, addons, replicas, version, sans, extra) in enumerate(MATRIX):
        settings = SETTINGS[i % len(SETTINGS)].model_copy(update={"extra_spec": extra})
        spec = _spec(stype, address, addons, replicas, version, sans)
        tcp = render_tcp(spec, f"Service {i} With Spaces", f"svc-{i}", settings)
        errors = _errors(validator, tcp)
        if errors:
            failures.append((stype, address, addons, replicas, version, sans, extra, errors))
            continue
        _check_cel_rules(tcp)
        # what the tenant asked for is what the TCP says
        assert tcp["spec"]["kubernetes"]["version"] == version
        assert tcp["spec"]["controlPlane"]["deployment"]["replicas"] == replicas
        assert tcp["spec"]["controlPlane"]["service"]["serviceType"] == stype
        assert tcp["spec"]["networkProfile"].get("certSANs", []) == list(sans)
        assert tcp["spec"]["networkProfile"]["dnsServiceIPs"] == [spec.network.dnsServiceIP]
    assert failures == []
