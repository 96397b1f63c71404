"""The TCP manifest renderer (agentkube.core.tcp_manifest) and its agreement with the kamaji_tcp role."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from agentkube.core import tcp_manifest
from agentkube.core.naming import ServiceNameError, tenant_name
from agentkube.core.tcp_manifest import (
    TcpSettings,
    datastore_schema,
    deep_merge,
    render_tcp,
    service_vars,
)
from agentkube.core.tenant_spec import DNS1123_LABEL, validate_tenant_spec

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "kamaji_tcp"


def spec(**overrides):
    return validate_tenant_spec({"kubernetesVersion": "v1.35.7", **overrides})


def test_identity_labels_and_names_come_from_the_service():
    tcp = render_tcp(spec(), "My Cluster", "3f1c-77aa")
    name = tenant_name("My Cluster", "3f1c-77aa")
    assert tcp["apiVersion"] == "kamaji.clastix.io/v1alpha1"
    assert tcp["kind"] == "TenantControlPlane"
    assert tcp["metadata"]["name"] == name
    assert tcp["metadata"]["namespace"] == "kamaji-tenants"
    labels = tcp["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "agentkube"
    assert labels["agentkube.io/service-id"] == "3f1c-77aa"
    assert labels["agentkube.io/tenant"] == name
    assert tcp["metadata"]["annotations"]["agentkube.io/service-name"] == "My Cluster"
    assert tcp["spec"]["dataStore"] == "default"
    assert tcp["spec"]["dataStoreSchema"] == name.replace("-", "_")


def test_kubelet_uses_json_patches_not_the_deprecated_cgroupfs_field():
    kubelet = render_tcp(spec(), "a", "b")["spec"]["kubernetes"]["kubelet"]
    assert "cgroupfs" not in kubelet
    assert kubelet["configurationJSONPatches"] == [{"op": "add", "path": "/cgroupDriver", "value": "systemd"}]
    kubelet = render_tcp(spec(), "a", "b", TcpSettings(cgroup_driver="cgroupfs"))["spec"]["kubernetes"]["kubelet"]
    assert kubelet["configurationJSONPatches"][0]["value"] == "cgroupfs"


def test_tenant_fields_reach_the_spec():
    tcp = render_tcp(
        spec(
            kubernetesVersion="v1.34.2",
            controlPlane={"replicas": 3, "port": 7443, "certSANs": ["api.example.com", "10.1.2.3"]},
            network={"podCidr": "10.32.0.0/12", "serviceCidr": "10.112.0.0/16", "dnsServiceIP": "10.112.0.53"},
        ),
        "a",
        "b",
    )
    assert tcp["spec"]["kubernetes"]["version"] == "v1.34.2"
    assert tcp["spec"]["controlPlane"]["deployment"]["replicas"] == 3
    net = tcp["spec"]["networkProfile"]
    assert net["port"] == 7443
    assert net["certSANs"] == ["api.example.com", "10.1.2.3"]
    assert (net["podCidr"], net["serviceCidr"], net["dnsServiceIPs"]) == (
        "10.32.0.0/12", "10.112.0.0/16", ["10.112.0.53"],
    )


def test_default_dns_service_ip_is_the_tenth_address_of_the_service_cidr():
    net = render_tcp(spec(network={"serviceCidr": "10.50.0.0/16"}), "a", "b")["spec"]["networkProfile"]
    assert net["dnsServiceIPs"] == ["10.50.0.10"]
    assert "certSANs" not in net and "address" not in net


def test_load_balancer_address_is_pinned_with_metallb_and_the_network_profile():
    tcp = render_tcp(spec(controlPlane={"serviceType": "LoadBalancer", "address": "10.0.0.50"}), "a", "b")
    service = tcp["spec"]["controlPlane"]["service"]
    assert service["additionalMetadata"]["annotations"] == {"metallb.io/loadBalancerIPs": "10.0.0.50"}
    assert tcp["spec"]["networkProfile"]["address"] == "10.0.0.50"


def test_load_balancer_without_address_lets_the_pool_choose():
    tcp = render_tcp(spec(controlPlane={"serviceType": "LoadBalancer"}), "a", "b")
    assert "additionalMetadata" not in tcp["spec"]["controlPlane"]["service"]
    assert "address" not in tcp["spec"]["networkProfile"]


def test_node_port_carries_the_address_but_no_metallb_annotation():
    tcp = render_tcp(spec(controlPlane={"serviceType": "NodePort", "address": "10.0.0.9"}), "a", "b")
    assert tcp["spec"]["controlPlane"]["service"] == {"serviceType": "NodePort"}
    assert tcp["spec"]["networkProfile"]["address"] == "10.0.0.9"


def test_addons_follow_the_spec_and_konnectivity_the_settings():
    tcp = render_tcp(spec(), "a", "b", TcpSettings(konnectivity_port=9000, konnectivity_agent_mode="Deployment"))
    assert tcp["spec"]["addons"] == {
        "coreDNS": {},
        "kubeProxy": {},
        "konnectivity": {"server": {"port": 9000}, "agent": {"mode": "Deployment"}},
    }
    tcp = render_tcp(spec(addons={"coreDNS": False, "kubeProxy": True, "konnectivity": False}), "a", "b")
    assert tcp["spec"]["addons"] == {"kubeProxy": {}}
    tcp = render_tcp(spec(addons={"coreDNS": False, "kubeProxy": False, "konnectivity": False}), "a", "b")
    assert tcp["spec"]["addons"] == {}


def test_settings_choose_namespace_and_datastore():
    tcp = render_tcp(spec(), "a", "b", TcpSettings(namespace="tenants", datastore=""))
    assert tcp["metadata"]["namespace"] == "tenants"
    assert "dataStore" not in tcp["spec"]
    assert tcp["spec"]["dataStoreSchema"]


def test_hostile_strings_stay_strings():
    tcp = render_tcp(spec(), 'name: "x"  evil: {a: 1} {{ 7*7 }}', "id-1")
    assert tcp["metadata"]["annotations"]["agentkube.io/service-name"] == 'name: "x"  evil: {a: 1} {{ 7*7 }}'
    assert set(tcp["metadata"]) == {"name", "namespace", "labels", "annotations"}


def test_extra_spec_is_deep_merged_last():
    extra = {
        "controlPlane": {"deployment": {"resources": {"apiServer": {"limits": {"cpu": "2"}}}}},
        "networkProfile": {"certSANs": ["only.this"], "podCidr": None},
        "kubernetes": {"version": "v1.35.8"},
    }
    tcp = render_tcp(spec(controlPlane={"certSANs": ["a.example"]}), "a", "b", TcpSettings(extra_spec=extra))
    deployment = tcp["spec"]["controlPlane"]["deployment"]
    assert deployment == {"replicas": 2, "resources": {"apiServer": {"limits": {"cpu": "2"}}}}
    assert tcp["spec"]["networkProfile"]["certSANs"] == ["only.this"]  # lists replace
    assert "podCidr" not in tcp["spec"]["networkProfile"]  # None removes
    assert tcp["spec"]["kubernetes"]["version"] == "v1.35.8"  # last word is the operator's
    assert tcp["spec"]["kubernetes"]["kubelet"]["configurationJSONPatches"]  # siblings kept


def test_deep_merge_leaves_its_inputs_alone():
    base = {"a": {"b": [1, 2], "c": 1}}
    overlay = {"a": {"b": [3], "d": {"e": None, "f": 2}}}
    merged = deep_merge(base, overlay)
    assert merged == {"a": {"b": [3], "c": 1, "d": {"f": 2}}}
    assert base == {"a": {"b": [1, 2], "c": 1}}
    assert overlay == {"a": {"b": [3], "d": {"e": None, "f": 2}}}
    merged["a"]["b"].append(4)
    assert overlay["a"]["b"] == [3]


def test_operator_template_path(tmp_path):
    own = tmp_path / "mine.yaml.j2"
    own.write_text(
        "apiVersion: kamaji.clastix.io/v1alpha1\nkind: TenantControlPlane\n"
        "metadata: {name: {{ agentkube_tenant_name | to_json }}, namespace: {{ kamaji_tcp_namespace | to_json }}}\n"
        "spec: {dataStoreSchema: {{ agentkube_tenant_name | agentkube.kamaji.agentkube_datastore_schema | to_json }},"
        " kubernetes: {version: {{ agentkube_tenant.kubernetesVersion | to_json }}}}\n"
    )
    tcp = render_tcp(spec(), "Own", "id-9", TcpSettings(template=str(own), extra_spec={"x": 1}))
    assert tcp == {
        "apiVersion": "kamaji.clastix.io/v1alpha1",
        "kind": "TenantControlPlane",
        "metadata": {"name": tenant_name("Own", "id-9"), "namespace": "kamaji-tenants"},
        "spec": {
            "dataStoreSchema": tenant_name("Own", "id-9").replace("-", "_"),
            "kubernetes": {"version": "v1.35.7"},
            "x": 1,
        },
    }


def test_templates_dir_override(tmp_path, monkeypatch):
    (tmp_path / tcp_manifest.TEMPLATE_NAME).write_text("kind: Marker\nspec: {}\n")
    monkeypatch.setenv(tcp_manifest.TEMPLATES_DIR_ENV, str(tmp_path))
    assert render_tcp(spec(), "a", "b") == {"kind": "Marker", "spec": {}}


def test_an_undefined_template_variable_fails(tmp_path):
    own = tmp_path / "t.j2"
    own.write_text("kind: {{ no_such_variable }}\n")
    with pytest.raises(Exception, match="no_such_variable"):
        render_tcp(spec(), "a", "b", TcpSettings(template=str(own)))


@pytest.mark.parametrize(
    ("name", "schema"),
    [
        ("my-cluster-1a2b3c", "my_cluster_1a2b3c"),
        ("9lives-abcdef", "t_9lives_abcdef"),
        ("a", "a"),
    ],
)
def test_datastore_schema_is_a_sql_identifier(name, schema):
    assert datastore_schema(name) == schema


@pytest.mark.parametrize("bad", ["", "Upper", "under_score", "-lead", "x" * 62])
def test_datastore_schema_refuses_what_is_not_a_tenant_name(bad):
    with pytest.raises(ValueError, match="tenant name"):
        datastore_schema(bad)


@pytest.mark.parametrize("service_name", ["x", "My Cluster", "ÜBER cluster!!", "-" * 10, "Ab " * 40])
def test_any_service_name_gives_a_dns_1123_tcp_name(service_name):
    tcp = render_tcp(spec(), service_name, "4e6f-11")
    name = tcp["metadata"]["name"]
    assert DNS1123_LABEL.match(name) and len(name) <= 63
    assert DNS1123_LABEL.match(tcp["spec"]["dataStoreSchema"].replace("_", "-"))


@pytest.mark.parametrize("bad_id", ["", "has space", "x" * 64, "-lead"])
def test_service_id_must_be_a_label_value(bad_id):
    with pytest.raises(ValueError, match=r"agentkube_service\.id"):
        service_vars("n", bad_id)


def test_settings_from_group_vars():
    settings = TcpSettings.from_vars({
        "kamaji_tcp_namespace": "t1",
        "kamaji_tcp_min_version": "v1.34",
        "kamaji_tcp_ready_timeout": 5,  # a role knob that does not shape the manifest
        "proxmox_vm_storage": "local",
    })
    assert settings.namespace == "t1"
    assert settings.window == ((1, 34), (1, 36))


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"kamaji_tcp_namespace": "Bad_NS"}, "namespace"),
        ({"kamaji_tcp_max_version": "1.x"}, "max_version"),
        ({"kamaji_tcp_konnectivity_port": 0}, "konnectivity_port"),
        ({"kamaji_tcp_datastore": "Not A Name"}, "datastore"),
    ],
)
def test_bad_settings_name_the_field(variables, field):
    with pytest.raises(ValidationError) as err:
        TcpSettings.from_vars(variables)
    assert err.value.errors()[0]["loc"] == (field,)


def _role_defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def test_python_settings_defaults_equal_the_roles_defaults():
    defaults = _role_defaults()
    for field, value in TcpSettings().model_dump().items():
        assert defaults[f"kamaji_tcp_{field}"] == value, field


def test_argument_specs_defaults_equal_defaults_main():
    defaults = _role_defaults()
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    for name, value in defaults.items():
        assert name in options, f"{name} missing from argument_specs"
        assert options[name].get("default") == value, name


@pytest.mark.parametrize(
    "text", ["émoji 🚀 name", "sep\u2028par\u2029", 'q"uo\\te', "#: -", "{% raw %}", "*anchor &a !!python/object"],
)
def test_any_string_survives_the_template(text):
    tcp = render_tcp(spec(), text, "id-1")
    assert tcp["metadata"]["annotations"]["agentkube.io/service-name"] == text


@pytest.mark.parametrize("text", ["line\nbreak", "nel\x85", "ctl\x01\x7f\x9f", "bom\ufeff", "bidi\u202eevil", ""])
def test_a_service_name_with_control_characters_is_refused(text):
    with pytest.raises(ServiceNameError):
        render_tcp(spec(), text, "id-1")
