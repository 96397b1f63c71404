"""The lab's Kamaji admission webhooks (agentkube_lab.kamaji_webhook), rule by rule, with Kamaji's messages.

Each rule is driven through the hook as the lab's ObjectStore calls it (an AdmissionRequest), and once through
the store itself, so the seam the emulator uses is covered too."""

from __future__ import annotations

import copy
import itertools

import pytest

from agentkube_lab.kamaji_admission_rules import (
    aggregate,
    go_parse_cidr,
    go_parse_ip,
    go_quote,
    is_dns1035_label,
    parse_ip_sloppy,
    semver_parse,
)
from agentkube_lab.kamaji_webhook import (
    MUTATING_WEBHOOK,
    VALIDATING_WEBHOOK,
    KamajiTcpWebhook,
    cert_san_problems,
    default_dns_service_ip,
)
from agentkube_lab.kube_resources import CORE_TYPES, DATA_STORE, KAMAJI_TYPES, TENANT_CONTROL_PLANE, ResourceCatalog
from agentkube_lab.kube_store import AdmissionRequest, ApiError, ObjectStore

UID = "0f6b2a4e-9c1d-4e8a-b1f0-6d2c3a4b5c6d"
DENIED = 'admission webhook "{}" denied the request: '


def tcp(name: str = "t1", version: str = "v1.35.2", **spec: object) -> dict:
    body = {"apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": "tenants", "uid": UID},
            "spec": {"dataStore": "default", "dataStoreSchema": "t1",
                     "controlPlane": {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}},
                     "kubernetes": {"version": version, "kubelet": {}},
                     "networkProfile": {"serviceCidr": "10.96.0.0/16", "dnsServiceIPs": ["10.96.0.10"]}}}
    body["spec"].update(spec)
    return body


def network(**profile: object) -> dict:
    return {"serviceCidr": "10.96.0.0/16", "dnsServiceIPs": ["10.96.0.10"], **profile}


@pytest.fixture
def hook() -> KamajiTcpWebhook:
    return KamajiTcpWebhook("v1.36", datastore_exists=lambda name: name in {"default", "pg"})


def create(hook: KamajiTcpWebhook, obj: dict) -> dict:
    request = AdmissionRequest("CREATE", TENANT_CONTROL_PLANE, copy.deepcopy(obj), None)
    hook(request)
    assert request.obj is not None
    return request.obj


def update(hook: KamajiTcpWebhook, obj: dict, old: dict) -> dict:
    request = AdmissionRequest("UPDATE", TENANT_CONTROL_PLANE, copy.deepcopy(obj), copy.deepcopy(old))
    hook(request)
    assert request.obj is not None
    return request.obj


def refusal(call, *args: object, webhook: str = VALIDATING_WEBHOOK) -> str:
    with pytest.raises(ApiError) as e:
        call(*args)
    assert (e.value.code, e.value.reason) == (403, "Forbidden")
    prefix = DENIED.format(webhook)
    assert e.value.message.startswith(prefix), e.value.message
    return e.value.message.removeprefix(prefix)


# ---------------------------------------------------------------- tcp_name.go
@pytest.mark.parametrize("name", ["a", "t1", "my-cluster-1a2b3c", "a" * 63])
def test_dns_1035_names_are_admitted(hook, name):
    create(hook, tcp(name))


def test_a_name_starting_with_a_digit_is_refused_with_kamajis_message(hook):
    assert refusal(create, hook, tcp("1st-cluster")) == (
        "the provided name is invalid, a DNS-1035 label must consist of lower case alphanumeric characters or "
        "'-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
        "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")


def test_a_long_name_gets_both_apimachinery_errors_joined_by_a_comma(hook):
    message = refusal(create, hook, tcp("a" * 63 + "-"))
    assert message.startswith("the provided name is invalid, must be no more than 63 characters,a DNS-1035 label")


@pytest.mark.parametrize("name", ["a.b", "A", "a_b", "é", "a-"])
def test_other_non_dns_1035_names_are_refused(hook, name):
    assert "the provided name is invalid" in refusal(create, hook, tcp(name))


def test_the_name_is_only_checked_on_create(hook):
    bad = tcp("1st")  # an object that predates the rule can still be updated
    update(hook, bad, bad)


# ---------------------------------------------------------------- tcp_dns.go
@pytest.mark.parametrize("profile", [
    network(),
    network(dnsServiceIPs=["10.96.255.255"]),
    network(serviceCidrs=["10.100.0.0/16", "fd00:10:96::/112"], dnsServiceIPs=["10.100.0.10", "fd00:10:96::a"]),
    network(dnsServiceIPs=["::ffff:10.96.0.10"]),  # Go's Contains reads an IPv4-mapped address as IPv4
    {"dnsServiceIPs": []},
])
def test_dns_service_ips_inside_the_service_cidrs_are_admitted(hook, profile):
    create(hook, tcp(networkProfile=profile))


@pytest.mark.parametrize(("profile", "message"), [
    (network(dnsServiceIPs=["10.97.0.10"]),
     'DNS service IP "10.97.0.10" is not contained in any configured service CIDR'),
    (network(serviceCidrs=["10.100.0.0/16"]),  # serviceCidrs wins over the deprecated serviceCidr
     'DNS service IP "10.96.0.10" is not contained in any configured service CIDR'),
    (network(dnsServiceIPs=["10.96.0.010"]), 'DNS service IP "10.96.0.010" is not a valid IP address'),
    (network(dnsServiceIPs=["fe80::a%eth0"]), 'DNS service IP "fe80::a%eth0" is not a valid IP address'),
    (network(serviceCidr="10.96.0.0/33"),
     'invalid service CIDR "10.96.0.0/33": invalid CIDR address: 10.96.0.0/33'),
    ({"dnsServiceIPs": ["10.96.0.10"]}, "no service CIDRs defined"),
])
def test_dns_service_ips_outside_the_service_cidrs_are_refused(hook, profile, message):
    assert refusal(create, hook, tcp(networkProfile=profile)) == message
    assert refusal(update, hook, tcp(networkProfile=profile), tcp()) == message


# ---------------------------------------------------------------- tcp_certsans.go (kubeadm ValidateCertSANs)
@pytest.mark.parametrize("san", [
    "api.example.com", "*.apps.example.com", "10.1.2.3", "010.001.002.003", "fd00::1", "::ffff:10.0.0.1",
    "localhost", "1-2", "a" * 253, "*." + "a" * 251, "10.0.0.256",  # digits-only labels make a DNS name
])
def test_cert_sans_kubeadm_accepts_are_admitted(hook, san):
    assert cert_san_problems([san]) == []
    create(hook, tcp(networkProfile=network(certSANs=[san])))


def test_a_bad_cert_san_is_refused_with_kubeadms_field_error(hook):
    message = refusal(create, hook, tcp(networkProfile=network(certSANs=["ok.example", "Bad_Name"])))
    assert message == (
        'spec.networkProfile.certSANs: Invalid value: "Bad_Name": altname is not a valid IP address, DNS label or '
        "a DNS label with subdomain wildcards: a lowercase RFC 1123 subdomain must consist of lower case "
        "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
        "'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
        "[a-z0-9])?)*'); a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, "
        "which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric "
        "character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?"
        "(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")


@pytest.mark.parametrize("san", [
    "", "fe80::1%eth0", "*.*.example.com", "a.*.example.com", "*", "example.com.", "-a.example", "a" * 254,
    "*." + "a" * 252, "exämple.com", "10.0.0.0/8", "api example.com", "line\nbreak",
])
def test_cert_sans_kubeadm_refuses_are_refused(hook, san):
    assert len(cert_san_problems([san])) == 1
    message = refusal(create, hook, tcp(networkProfile=network(certSANs=[san])))
    assert message.startswith(f"spec.networkProfile.certSANs: Invalid value: {go_quote(san)}: altname is not")


def test_too_long_cert_sans_name_both_length_errors(hook):
    [problem] = cert_san_problems(["a" * 254])
    assert ("wildcards: must be no more than 253 characters; must be no more than 253 characters; a wildcard "
            "DNS-1123 subdomain must start with '*.'") in problem  # the name itself matches the subdomain regex


def test_several_bad_cert_sans_are_aggregated_once_each_and_checked_on_update(hook):
    profile = network(certSANs=["A", "ok", "B", "A"])
    message = refusal(update, hook, tcp(networkProfile=profile), tcp())
    assert message.startswith('[spec.networkProfile.certSANs: Invalid value: "A": ')
    assert message.count("Invalid value") == 2 and message.endswith("')]")
    assert ', spec.networkProfile.certSANs: Invalid value: "B": ' in message


# ---------------------------------------------------------------- tcp_version.go (kept from the former webhook)
def test_versions_above_the_supported_one_are_refused_on_create(hook):
    create(hook, tcp(version="v1.36.9"))
    create(hook, tcp(version="1.33.0"))  # the leading 'v' is optional
    assert refusal(create, hook, tcp(version="v1.37.0")) == (
        "unable to create a TenantControlPlane with a Kubernetes version greater than the supported one, "
        "actually v1.36")


@pytest.mark.parametrize(("version", "message"), [
    ("v1.35", "No Major.Minor.Patch elements found"),
    ("", "Version string empty"),
    ("v01.35.0", 'Major number must not contain leading zeroes "01"'),
    ("v1.35.x", 'Invalid character(s) found in patch number "x"'),
    ("vv1.35.0", 'Invalid character(s) found in major number "v1"'),
])
def test_unparsable_versions_are_refused_with_semvers_message(hook, version, message):
    assert refusal(create, hook, tcp(version=version)) == f"unable to parse the desired Kubernetes version: {message}"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("v1.34.2", "v1.36.0", "unable to upgrade to a minor version in a non-sequential mode"),
    ("v1.34.2", "v1.33.9", "unable to downgrade a TenantControlPlane from 1.34.0 to 1.33.0"),
    ("v1.35.0", "v1.35.0-rc.1", "unable to downgrade a TenantControlPlane from 1.35.0 to 1.35.0-rc.1"),
    ("v1.36.1", "v1.37.0", "unable to upgrade to a version greater than the supported one (v1.36)"),
    ("v1.34", "v1.35.0", "unable to parse the previous Kubernetes version: No Major.Minor.Patch elements found"),
])
def test_version_updates_kamaji_refuses(hook, old, new, message):
    assert refusal(update, hook, tcp(version=new), tcp(version=old)) == message


def test_version_updates_kamaji_admits(hook):
    for old, new in (("v1.34.2", "v1.35.0"), ("v1.34.2", "v1.34.1"), ("v1.34.2", "v1.34.2")):
        update(hook, tcp(version=new), tcp(version=old))  # patch versions are ignored, a downgrade of one too
    deleting = tcp(version="v1.33.0")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    update(hook, deleting, tcp(version="v1.35.0"))  # an object being deleted is not version-checked


def test_a_major_version_jump_is_non_sequential_when_allowed_by_the_maximum():
    hook = KamajiTcpWebhook("v2.5")
    message = refusal(update, hook, tcp(version="v2.0.0"), tcp(version="v1.36.0"))
    assert message == "unable to upgrade to a minor version in a non-sequential mode"  # uint64 wrap, as in Go


# ---------------------------------------------------------------- tcp_datastore.go
def test_a_missing_datastore_is_refused_on_create_and_update(hook):
    assert refusal(create, hook, tcp(dataStore="nope")) == "nope DataStore does not exist"
    assert refusal(update, hook, tcp(dataStore="nope"), tcp()) == "nope DataStore does not exist"
    create(hook, tcp(dataStore="pg"))


def test_datastore_overrides_are_checked_only_without_a_datastore_and_on_create():
    hook = KamajiTcpWebhook(datastore_exists=lambda name: name == "default", default_datastore="")
    overrides = [{"resource": "/events", "dataStore": "default"}, {"resource": "/leases", "dataStore": "gone"}]
    body = tcp(dataStoreOverrides=overrides)
    del body["spec"]["dataStore"]
    assert refusal(create, hook, body) == "gone DataStore does not exist"
    twice = copy.deepcopy(body)
    twice["spec"]["dataStoreOverrides"] = [overrides[0], overrides[0]]
    assert refusal(create, hook, twice) == "duplicate resource override in Spec.DataStoreOverrides"
    update(hook, body, body)  # OnUpdate only looks at spec.dataStore
    body["spec"]["dataStore"] = "default"
    create(hook, body)  # with a DataStore, the overrides are not looked at on create


# ---------------------------------------------------------------- tcp_deployment.go (the DataStore reads)
def test_changing_additional_containers_reads_the_datastores(hook):
    old = tcp(dataStoreOverrides=[{"resource": "/events", "dataStore": "gone"}])
    new = copy.deepcopy(old)
    update(hook, new, old)  # no additional containers: no check
    new["spec"]["controlPlane"]["deployment"]["additionalContainers"] = [{"name": "x", "image": "busybox"}]
    assert refusal(update, hook, new, old) == 'datastores.kamaji.clastix.io "gone" not found'
    old["spec"]["dataStoreOverrides"] = new["spec"]["dataStoreOverrides"] = []
    update(hook, new, old)


# ---------------------------------------------------------------- tcp_gateway_validate.go
def test_a_gateway_needs_the_gateway_api_and_tlsroute(hook):
    body = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "gateway": {"hostname": "api.example"}})
    assert refusal(create, hook, body) == (
        "the Gateway API is not available in this cluster, cannot use gatewayRoute configuration")
    assert refusal(update, hook, body, tcp()).startswith("the Gateway API is not available")
    partial = KamajiTcpWebhook(gateway_kinds={"Gateway", "HTTPRoute"})
    assert refusal(create, partial, body) == "TLSRoute resource is not available in this cluster"
    create(KamajiTcpWebhook(gateway_kinds={"Gateway", "TLSRoute"}), body)


# ---------------------------------------------------------------- tcp_defaults.go (the mutating webhook)
def test_defaults_on_create():
    hook = KamajiTcpWebhook(datastore_exists=lambda name: name == "default")
    body = tcp(networkProfile={"serviceCidr": "10.96.0.0/16", "podCidr": "10.244.0.0/16"})
    for key in ("dataStore", "dataStoreSchema"):
        del body["spec"][key]
    del body["spec"]["controlPlane"]["deployment"]["replicas"]
    spec = create(hook, body)["spec"]
    assert spec["dataStore"] == "default"
    assert spec["controlPlane"]["deployment"]["replicas"] == 2
    assert spec["dataStoreSchema"] == spec["dataStoreUsername"] == UID
    assert spec["networkProfile"] == {
        "serviceCidr": "10.96.0.0/16", "podCidr": "10.244.0.0/16", "serviceCidrs": ["10.96.0.0/16"],
        "podCidrs": ["10.244.0.0/16"], "dnsServiceIPs": ["10.96.0.10"]}


def test_defaults_keep_what_is_set_and_sleeping_replicas(hook):
    body = tcp(dataStore="pg", dataStoreSchema="mine", dataStoreUsername="me", networkProfile=network(
        serviceCidrs=["10.100.0.0/16"], dnsServiceIPs=["10.100.0.53"]))
    body["spec"]["controlPlane"]["deployment"]["replicas"] = 0
    spec = create(hook, body)["spec"]
    assert (spec["dataStore"], spec["dataStoreSchema"], spec["dataStoreUsername"]) == ("pg", "mine", "me")
    assert spec["controlPlane"]["deployment"]["replicas"] == 0
    assert spec["networkProfile"]["serviceCidrs"] == ["10.100.0.0/16"]
    assert spec["networkProfile"]["dnsServiceIPs"] == ["10.100.0.53"]


def test_defaults_do_nothing_on_update(hook):
    old = tcp()
    new = copy.deepcopy(old)
    del new["spec"]["networkProfile"]["dnsServiceIPs"]
    assert update(hook, new, old) == new


@pytest.mark.parametrize(("cidr", "ip"), [
    ("10.96.0.0/16", "10.96.0.10"),
    ("10.96.3.7/16", "10.96.3.17"),     # the address as written, not its network
    ("10.96.0.250/16", "10.96.0.4"),    # the last byte wraps
    ("fd00:10:96::/112", "fd00:10:96::10"),
    ("2001:db8:abcd::/64", "2001:db8:abcd::10"),
    ("::ffff:10.0.0.0/104", "10.0.0.10"),
])
def test_default_dns_service_ip_adds_ten_or_sixteen_to_the_last_byte(cidr, ip):
    assert default_dns_service_ip(cidr) == ip


def test_a_bad_service_cidr_is_refused_by_the_mutating_webhook(hook):
    body = tcp(networkProfile={"serviceCidrs": ["10.96.0.0/16", "nonsense"]})
    assert refusal(create, hook, body, webhook=MUTATING_WEBHOOK) == (
        "cannot define resulting DNS Service IP: invalid CIDR address: nonsense")


# ---------------------------------------------------------------- the seam: the store's admission hooks
def test_the_store_runs_the_webhook_and_keeps_the_defaults(hook):
    store = ObjectStore(ResourceCatalog(CORE_TYPES + KAMAJI_TYPES))
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenants"}})
    store.put({"apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "DataStore", "metadata": {"name": "default"},
               "spec": {"driver": "etcd"}})
    store.admission_hooks.append(KamajiTcpWebhook(datastore_exists=lambda n: store.find(DATA_STORE, None, n)
                                                  is not None))
    body = tcp()
    del body["metadata"]["uid"]
    del body["spec"]["networkProfile"]["dnsServiceIPs"]
    created = store.create(TENANT_CONTROL_PLANE, "tenants", body)
    assert created["spec"]["networkProfile"]["dnsServiceIPs"] == ["10.96.0.10"]
    assert created["spec"]["dataStoreUsername"] == created["metadata"]["uid"]  # the UID exists before admission
    with pytest.raises(ApiError) as e:
        store.create(TENANT_CONTROL_PLANE, "tenants", tcp("9lives"))
    assert e.value.code == 403 and store.find(TENANT_CONTROL_PLANE, "tenants", "9lives") is None
    status_only = store.get(TENANT_CONTROL_PLANE, "tenants", "t1")
    status_only["status"] = {"kubernetesResources": {}}
    store.replace(TENANT_CONTROL_PLANE, "tenants", "t1", status_only, subresource="status")  # not sent


# ---------------------------------------------------------------- the transcribed library rules
def test_go_ip_parsing_matches_net_parseip_and_parseipsloppy():
    assert go_parse_ip("10.0.0.1") is not None and go_parse_ip("010.0.0.1") is None
    assert go_parse_ip("fe80::1%eth0") is None and go_parse_ip("1.2.3") is None
    assert parse_ip_sloppy("010.0.0.1") == go_parse_ip("10.0.0.1")
    assert parse_ip_sloppy("::ffff:010.0.0.1") == go_parse_ip("10.0.0.1")
    assert parse_ip_sloppy("00001::1") == go_parse_ip("1::1")
    assert parse_ip_sloppy("256.0.0.1") is None and parse_ip_sloppy("fe80::1%1") is None


def test_go_cidr_parsing():
    _, net = go_parse_cidr("10.96.0.0/08")  # Go reads the prefix length with leading zeros
    assert net.contains(go_parse_ip("10.200.0.1"))
    for bad in ("10.96.0.0", "10.96.0.0/", "10.96.0.0/-1", "fe80::/129", "010.0.0.0/8", "fe80::%1/64"):
        with pytest.raises(ValueError, match=f"^invalid CIDR address: {bad}$"):
            go_parse_cidr(bad)
    _, v6 = go_parse_cidr("fd00::/8")
    assert not v6.contains(go_parse_ip("10.0.0.1")) and v6.contains(go_parse_ip("fd12::1"))


def test_semver_precedence_and_text():
    assert str(semver_parse("1.36.0-rc.1+build.5")) == "1.36.0-rc.1+build.5"
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
               "1.0.0-rc.1", "1.0.0"]
    for lower, higher in itertools.pairwise(ordered):
        assert semver_parse(lower).compare(semver_parse(higher)) == -1
        assert semver_parse(higher).compare(semver_parse(lower)) == 1
    assert semver_parse("1.2.3+a").compare(semver_parse("1.2.3+b")) == 0


def test_go_quote_and_aggregate():
    assert go_quote('a"b\\\n\x00é\u00a0🚀') == '"a\\"b\\\\\\n\\x00é\\u00a0🚀"'
    assert aggregate(["x"]) == "x" and aggregate(["x", "y", "x"]) == "[x, y]"
    assert is_dns1035_label("a" * 64)[0] == "must be no more than 63 characters"
