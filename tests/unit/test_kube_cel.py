"""kube_cel (cel-python with Kubernetes' CEL library) and the CRD validator's x-kubernetes-validations: every rule
of Kamaji's CRDs with an object it admits and one it refuses, the library functions, and rules that must not
compile."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agentkube_lab.kube_cel import CelCompileError, CelError, CelEvalError, compile_rule, evaluate
from agentkube_lab.kube_crd_schema import CrdSchemaValidator
from agentkube_lab.kube_resources import ResourceType
from agentkube_lab.kube_store import ApiError

CONTRACTS = Path(__file__).resolve().parents[3] / "shared" / "contracts" / "kamaji"
needs_contracts = pytest.mark.skipif(not (CONTRACTS / "tenantcontrolplanes.crd.yaml").exists(),
                                     reason="../shared/contracts/kamaji is absent")

TCP_TYPE = ResourceType("kamaji.clastix.io", "v1alpha1", "TenantControlPlane", "tenantcontrolplanes", True)
DS_TYPE = ResourceType("kamaji.clastix.io", "v1alpha1", "DataStore", "datastores", False)


@pytest.fixture(scope="module")
def tcp_crd() -> CrdSchemaValidator:
    return CrdSchemaValidator.from_file(CONTRACTS / "tenantcontrolplanes.crd.yaml")


@pytest.fixture(scope="module")
def ds_crd() -> CrdSchemaValidator:
    return CrdSchemaValidator.from_file(CONTRACTS / "datastores.crd.yaml")


def _tcp(**spec: object) -> dict:
    base = {"dataStore": "default", "dataStoreSchema": "ns_t1", "dataStoreUsername": "ns_t1",
            "controlPlane": {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}},
            "kubernetes": {"version": "v1.34.2", "kubelet": {}}, "networkProfile": {}}
    base.update(spec)
    return {"apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": "t1", "namespace": "ns"}, "spec": base}


def _lb(**network: object) -> dict:
    return _tcp(controlPlane={"deployment": {"replicas": 1}, "service": {"serviceType": "LoadBalancer"}},
                networkProfile=dict(network))


def _causes(validator: CrdSchemaValidator, rtype: ResourceType, obj: dict, old: dict | None = None) -> list[dict]:
    stored = None
    if old is not None:  # the stored object is the admitted (defaulted) one
        stored = copy.deepcopy(old)
        validator.admit(rtype, stored, None)
    try:
        validator.admit(rtype, copy.deepcopy(obj), stored)
    except ApiError as e:
        assert e.code == 422
        return e.details["causes"]
    return []


def _messages(causes: list[dict]) -> list[str]:
    return [f"{c['field']}: {c['message']}" for c in causes]


# (description, new object, old object or None, expected "field: message" or None when admitted)
TCP_CASES = [
    ("dataStore kept", _tcp(), _tcp(), None),
    ("dataStore unset", _tcp(dataStore=None), _tcp(),
     "spec: Invalid value: unsetting the dataStore is not supported"),
    ("dataStoreSchema unset", _tcp(dataStoreSchema=None), _tcp(),
     "spec: Invalid value: unsetting the dataStoreSchema is not supported"),
    ("dataStoreUsername unset", _tcp(dataStoreUsername=None), _tcp(),
     "spec: Invalid value: unsetting the dataStoreUsername is not supported"),
    ("source ranges with a LoadBalancer", _lb(loadBalancerSourceRanges=["10.0.0.0/8"]), None, None),
    ("source ranges without a LoadBalancer", _tcp(networkProfile={"loadBalancerSourceRanges": ["10.0.0.0/8"]}),
     None, "spec: Invalid value: LoadBalancer source ranges are supported only with LoadBalancer service type"),
    ("loadBalancerClass with a LoadBalancer", _lb(loadBalancerClass="metallb"), None, None),
    ("loadBalancerClass without a LoadBalancer", _tcp(networkProfile={"loadBalancerClass": "metallb"}), None,
     "spec: Invalid value: LoadBalancerClass is supported only with LoadBalancer service type"),
    ("allocateLoadBalancerNodePorts with a LoadBalancer",
     _tcp(controlPlane={"service": {"serviceType": "LoadBalancer", "allocateLoadBalancerNodePorts": False}}),
     None, None),
    ("allocateLoadBalancerNodePorts without a LoadBalancer",
     _tcp(controlPlane={"service": {"serviceType": "NodePort", "allocateLoadBalancerNodePorts": False}}), None,
     "spec: Invalid value: allocateLoadBalancerNodePorts is supported only with LoadBalancer service type"),
    ("loadBalancerClass set when turning into a LoadBalancer", _lb(loadBalancerClass="metallb"), _tcp(), None),
    ("loadBalancerClass set on a running LoadBalancer", _lb(loadBalancerClass="metallb"), _lb(),
     "spec: Invalid value: LoadBalancerClass cannot be set or unset at runtime"),
    ("konnectivity DaemonSet without replicas",
     _tcp(addons={"konnectivity": {"agent": {"mode": "DaemonSet", "replicas": 0}}}), None, None),
    ("konnectivity DaemonSet with replicas",
     _tcp(addons={"konnectivity": {"agent": {"mode": "DaemonSet", "replicas": 2}}}), None,
     "spec.addons.konnectivity.agent: Invalid value: replicas must be 0 (or unset) when mode is DaemonSet, and "
     "greater than 0 (or unset) when mode is Deployment"),
    ("ingress only", _tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "ingress": {"hostname": "a.b"}}),
     None, None),
    ("ingress and gateway", _tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "ingress": {"hostname": "a"},
                                               "gateway": {"hostname": "b"}}), None,
     "spec.controlPlane: Invalid value: using both ingress and gateway is not supported"),
    ("dataStoreSchema changed", _tcp(dataStoreSchema="other"), _tcp(),
     'spec.dataStoreSchema: Invalid value: "other": changing the dataStoreSchema is not supported'),
    ("dataStoreUsername changed", _tcp(dataStoreUsername="other"), _tcp(),
     'spec.dataStoreUsername: Invalid value: "other": changing the dataStoreUsername is not supported'),
    ("advertiseAddress an IP", _tcp(networkProfile={"address": "10.0.0.1", "advertiseAddress": "10.0.0.1"}),
     None, None),
    ("advertiseAddress not an IP", _tcp(networkProfile={"advertiseAddress": "10.0.0.256"}), None,
     'spec.networkProfile.advertiseAddress: Invalid value: "10.0.0.256": advertiseAddress must be a valid IP '
     'address'),
    ("clusterDomain kept", _tcp(networkProfile={"clusterDomain": "corp.local"}),
     _tcp(networkProfile={"clusterDomain": "corp.local"}), None),
    ("clusterDomain changed", _tcp(networkProfile={"clusterDomain": "corp.local"}), _tcp(),
     'spec.networkProfile.clusterDomain: Invalid value: "corp.local": changing the cluster domain is not supported'),
    ("loadBalancerClass changed", _lb(loadBalancerClass="b"), _lb(loadBalancerClass="a"),
     'spec.networkProfile.loadBalancerClass: Invalid value: "b": LoadBalancerClass is immutable'),
    ("source range not a CIDR", _lb(loadBalancerSourceRanges=["10.0.0.0/8", "10.0.0.1"]), None,
     "spec.networkProfile.loadBalancerSourceRanges: Invalid value: all LoadBalancer source range entries must be "
     "valid CIDR"),
    ("podCidr a CIDR", _tcp(networkProfile={"podCidr": "10.32.0.0/12"}), None, None),
    ("podCidr not a CIDR", _tcp(networkProfile={"podCidr": "10.32.0.0"}), None,
     'spec.networkProfile.podCidr: Invalid value: "10.32.0.0": podCidr must be empty or a valid CIDR'),
    ("podCidrs CIDRs", _tcp(networkProfile={"podCidrs": ["10.32.0.0/12", "fd00:10:32::/56"]}), None, None),
    ("podCidrs with a zone", _tcp(networkProfile={"podCidrs": ["fe80::%eth0/64"]}), None,
     "spec.networkProfile.podCidrs: Invalid value: all podCidrs entries must be valid CIDRs"),
    ("serviceCidr empty", _tcp(networkProfile={"serviceCidr": ""}), None, None),
    ("serviceCidr with a leading-zero prefix length", _tcp(networkProfile={"serviceCidr": "10.96.0.0/016"}), None,
     'spec.networkProfile.serviceCidr: Invalid value: "10.96.0.0/016": serviceCidr must be empty or a valid CIDR'),
    ("serviceCidrs IPv4-mapped", _tcp(networkProfile={"serviceCidrs": ["::ffff:10.96.0.0/112"]}), None,
     "spec.networkProfile.serviceCidrs: Invalid value: all serviceCidrs entries must be valid CIDRs"),
]


@needs_contracts
@pytest.mark.parametrize(("new", "old", "expected"), [c[1:] for c in TCP_CASES], ids=[c[0] for c in TCP_CASES])
def test_tenant_control_plane_rules(tcp_crd: CrdSchemaValidator, new: dict, old: dict | None,
                                    expected: str | None) -> None:
    for obj in (new, old):
        if obj is not None:
            obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    messages = _messages(_causes(tcp_crd, TCP_TYPE, new, old))
    assert messages == ([] if expected is None else [expected])


@needs_contracts
def test_a_tcp_without_network_profile_is_an_evaluation_error(tcp_crd: CrdSchemaValidator) -> None:
    """`has(self.networkProfile.x)` with no networkProfile: cel-go's has() propagates the operand's error."""
    tcp = _tcp()
    del tcp["spec"]["networkProfile"]
    causes = _causes(tcp_crd, TCP_TYPE, tcp)
    assert {c["reason"] for c in causes} == {"FieldValueInvalid"}
    assert 'spec: Invalid value: "object": no such key: networkProfile evaluating rule: LoadBalancer source ranges ' \
           "are supported only with LoadBalancer service type" in _messages(causes)


def _ds(driver: str = "etcd", **spec: object) -> dict:
    body: dict = {"driver": driver, "endpoints": ["etcd-0:2379"]}
    body.update(spec)
    return {"apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "DataStore", "metadata": {"name": "ds"},
            "spec": body}


def _ref(name: str) -> dict:
    return {"secretReference": {"name": name, "namespace": "kamaji", "keyPath": "tls.crt"}}


ETCD_TLS = {"certificateAuthority": {"certificate": _ref("ca"), "privateKey": _ref("ca")},
            "clientCertificate": {"certificate": _ref("c"), "privateKey": _ref("c")}}
BASIC = {"username": {"content": "dXNlcg=="}, "password": {"content": "cGFzcw=="}}
DS_CASES = [
    ("etcd with TLS", _ds(tlsConfig=ETCD_TLS), None, None),
    ("etcd without TLS", _ds(), None,
     'spec: Invalid value: "object": no such key: tlsConfig evaluating rule: certificateAuthority privateKey must '
     "have secretReference or content when driver is etcd"),
    ("etcd without CA key", _ds(tlsConfig={**ETCD_TLS, "certificateAuthority": {"certificate": _ref("ca"),
                                                                              "privateKey": {}}}), None,
     "spec: Invalid value: certificateAuthority privateKey must have secretReference or content when driver is etcd"),
    ("etcd without client certificate", _ds(tlsConfig={**ETCD_TLS, "clientCertificate": {
        "certificate": {}, "privateKey": _ref("c")}}), None,
     "spec: Invalid value: clientCertificate must have secretReference or content when driver is etcd"),
    ("etcd without client key", _ds(tlsConfig={**ETCD_TLS, "clientCertificate": {
        "certificate": _ref("c"), "privateKey": {}}}), None,
     "spec: Invalid value: clientCertificate privateKey must have secretReference or content when driver is etcd"),
    ("PostgreSQL with basic auth", _ds("PostgreSQL", basicAuth=BASIC), None, None),
    ("PostgreSQL with an empty client certificate",
     _ds("PostgreSQL", tlsConfig={"certificateAuthority": {"certificate": _ref("ca")},
                                  "clientCertificate": {"certificate": {}, "privateKey": _ref("c")}}), None,
     "spec: Invalid value: When driver is not etcd and tlsConfig exists, clientCertificate must be null or contain "
     "valid content"),
    ("PostgreSQL without a username", _ds("PostgreSQL", basicAuth={**BASIC, "username": {}}), None,
     "spec: Invalid value: When driver is not etcd and basicAuth exists, username must have secretReference or "
     "content"),
    ("PostgreSQL without a password", _ds("PostgreSQL", basicAuth={**BASIC, "password": {}}), None,
     "spec: Invalid value: When driver is not etcd and basicAuth exists, password must have secretReference or "
     "content"),
    ("PostgreSQL without credentials", _ds("PostgreSQL"), None,
     "spec: Invalid value: When driver is not etcd, either tlsConfig or basicAuth must be provided"),
    ("driver kept", _ds("MySQL", basicAuth=BASIC), _ds("MySQL", basicAuth=BASIC), None),
]


@needs_contracts
@pytest.mark.parametrize(("new", "old", "expected"), [c[1:] for c in DS_CASES], ids=[c[0] for c in DS_CASES])
def test_datastore_rules(ds_crd: CrdSchemaValidator, new: dict, old: dict | None, expected: str | None) -> None:
    messages = _messages(_causes(ds_crd, DS_TYPE, new, old))
    assert (messages[:1] if expected else messages) == ([] if expected is None else [expected])


@needs_contracts
def test_datastore_driver_is_immutable(ds_crd: CrdSchemaValidator) -> None:
    messages = _messages(_causes(ds_crd, DS_TYPE, _ds("MySQL", basicAuth=BASIC), _ds("PostgreSQL", basicAuth=BASIC)))
    assert sorted(messages) == ['spec.driver: Invalid value: "MySQL": Datastore driver is immutable',
                                "spec: Invalid value: driver is immutable and cannot be changed after creation"]


@pytest.mark.parametrize(("value", "ok"), [
    ("10.0.0.1", True), ("::1", True), ("2001:db8::abcd", True),
    ("10.0.0.256", False), ("010.0.0.1", False), (":::1", False), ("fe80::1%eth0", False),
    ("::ffff:10.0.0.1", False), ("10.0.0.0/8", False), ("", False),
])
def test_is_ip(value: str, ok: bool) -> None:  # library/ip.go isIP
    assert evaluate("isIP(self)", {"self": value}) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("10.0.0.0/8", True), ("10.0.0.1/8", True), ("fd00::/64", True), ("0.0.0.0/0", True), ("::/0", True),
    ("10.0.0.0/33", False), ("::/129", False), ("10.0.0.0", False), ("10.0.0.0/08", False), ("10.0.0.0/+8", False),
    ("010.0.0.0/8", False), ("::ffff:10.0.0.0/104", False), ("fe80::%eth0/64", False), ("10.0.0.0/8/8", False),
])
def test_is_cidr(value: str, ok: bool) -> None:  # library/cidr.go isCIDR (netip.ParsePrefix)
    assert evaluate("isCIDR(self)", {"self": value}) is ok


@pytest.mark.parametrize(("rule", "value", "expected"), [
    ("ip(self).family()", "::1", 6),
    ("ip(self).isLoopback()", "127.0.0.2", True),
    ("ip(self).isGlobalUnicast()", "192.168.0.1", True),
    ("ip(self).isGlobalUnicast()", "255.255.255.255", False),
    ("ip(self).isLinkLocalMulticast()", "ff02::1", True),
    ("ip.isCanonical(self)", "2001:db8::abcd", True),
    ("ip.isCanonical(self)", "2001:DB8::ABCD", False),
    ("cidr(self).containsIP('192.168.0.1')", "192.168.0.0/24", True),
    ("cidr(self).containsIP(ip('192.168.1.1'))", "192.168.0.0/24", False),
    ("cidr(self).containsCIDR('192.168.10.0/24')", "192.168.0.0/16", True),
    ("cidr(self).containsCIDR(cidr('192.168.0.0/15'))", "192.168.0.0/16", False),
    ("cidr(self).prefixLength()", "fd00::/56", 56),
    ("cidr(self).masked() == cidr('192.168.0.0/24')", "192.168.0.1/24", True),
    ("cidr(self) == cidr(self).masked()", "192.168.0.1/24", False),
    ("format.dns1123Label().validate(self).hasValue()", "my-name", False),
    ("format.dns1123Label().validate(self).hasValue()", "My_Name", True),
    ("format.named('dns1035Label').value().validate(self).hasValue()", "1abc", True),
    ("format.named('dns1123Subdomain').value().validate(self).hasValue()", "a.b-c.d", False),
    ("format.dns1123LabelPrefix().validate(self).hasValue()", "my-prefix-", False),
    ("format.named('noSuchFormat').hasValue()", "x", False),
    ("format.dns1035Label().validate(self).orValue([]).size() == 0", "abc-123", True),
])
def test_kubernetes_library_functions(rule: str, value: str, expected: object) -> None:
    assert evaluate(rule, {"self": value}) == expected


def test_format_validate_returns_the_apimachinery_messages() -> None:
    errors = evaluate("format.dns1035Label().validate(self).value()", {"self": "1" + "a" * 63})
    assert errors == ["must be no more than 63 characters",
                      "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                      "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                      "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"]


@pytest.mark.parametrize("rule", [
    "self.noSuchFunction()", "noSuchFunction(self)", "self.lowerAscii() == 'a'", "format.uri().validate(self)",
    "self.reduce(a, b)", "other == self", "has(self)", "self ==", "ip == self",
])
def test_what_kube_apiserver_would_not_compile_raises(rule: str) -> None:
    with pytest.raises(CelCompileError):
        compile_rule(rule)


def test_evaluation_errors_and_heterogeneous_equality() -> None:
    with pytest.raises(CelEvalError, match="no such key: missing"):
        evaluate("self.missing == 1", {"self": {}})
    with pytest.raises(CelEvalError, match="no such key: a"):
        evaluate("has(self.a.b)", {"self": {}})  # cel-spec: the operand's error, not false
    with pytest.raises(CelEvalError):
        evaluate("cidr(self).prefixLength() > 0", {"self": "10.0.0.0"})
    assert evaluate("self.missing == 1 || true", {"self": {}}) is True  # commutative over errors
    assert evaluate("false && self.missing == 1", {"self": {}}) is False
    assert evaluate("self != null && 1 == 1.0 && self != 'x'", {"self": {"a": 1}}) is True
    assert compile_rule("!has(oldSelf.a) || has(self.a)").uses_old_self
    assert not compile_rule("self == ''").uses_old_self


def _crd(rules: list[dict], prop: dict | None = None) -> dict:
    spec = {"type": "object", "properties": {"name": {"type": "string"}, "replicas": {"type": "integer"},
                                             **(prop or {})}, "x-kubernetes-validations": rules}
    return {"kind": "CustomResourceDefinition", "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "names": {"kind": "Thing", "plural": "things"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "properties": {"spec": spec}}}}]}}


THING = ResourceType("example.com", "v1", "Thing", "things", True)


def test_a_crd_with_an_unknown_function_is_refused() -> None:
    with pytest.raises(CelError, match="undeclared reference to 'nope'"):
        CrdSchemaValidator(_crd([{"rule": "nope(self.name)"}]))
    with pytest.raises(CelError, match="optionalOldSelf"):
        CrdSchemaValidator(_crd([{"rule": "self == oldSelf", "optionalOldSelf": True}]))


def test_message_expression_reason_and_field_path() -> None:
    validator = CrdSchemaValidator(_crd([
        {"rule": "self.replicas < 3", "messageExpression": "'too many replicas: ' + string(self.replicas)",
         "reason": "FieldValueForbidden", "fieldPath": ".replicas"},
        {"rule": "self.name.startsWith('a')"},
        {"rule": "self.name.size() < 2", "message": "short", "messageExpression": "self.missing"},
    ]))
    thing = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"},
             "spec": {"name": "bob", "replicas": 5}}
    causes = _causes(validator, THING, thing)
    assert causes == [
        {"reason": "FieldValueForbidden", "field": "spec.replicas", "message": "Forbidden: too many replicas: 5"},
        {"reason": "FieldValueInvalid", "field": "spec",
         "message": "Invalid value: failed rule: self.name.startsWith('a')"},
        {"reason": "FieldValueInvalid", "field": "spec", "message": "Invalid value: short"},  # messageExpression
    ]                                                                                        # failed: the message
    assert _causes(validator, THING, {**thing, "spec": {"name": "a", "replicas": 1}}) == []


def test_transition_rules_only_run_on_update_with_an_old_value() -> None:
    validator = CrdSchemaValidator(_crd([], {"mode": {"type": "string", "x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "mode is immutable"}]}}))
    thing = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}, "spec": {"mode": "a"}}
    assert _causes(validator, THING, thing) == []
    assert _causes(validator, THING, thing, {**thing, "spec": {}}) == []  # no old value: not evaluated
    assert _messages(_causes(validator, THING, thing, {**thing, "spec": {"mode": "b"}})) == [
        'spec.mode: Invalid value: "a": mode is immutable']


def test_contract_crds_compile() -> None:
    if not CONTRACTS.exists():
        pytest.skip("../shared/contracts/kamaji is absent")
    for name in ("tenantcontrolplanes.crd.yaml", "datastores.crd.yaml"):
        crd = next(d for d in yaml.safe_load_all((CONTRACTS / name).read_text()) if d)
        assert CrdSchemaValidator(crd)._programs  # every rule compiled (an unknown function would raise)


def test_schema_errors_that_block_cel_and_those_that_do_not() -> None:
    """strategy.go hasBlockingErr: an enum/required/type/size error stops CEL (one more cause says so); a pattern
    error does not, and the CEL causes follow."""
    validator = CrdSchemaValidator(_crd([{"rule": "self.replicas < 3", "message": "too many"}], {
        "mode": {"type": "string", "enum": ["a", "b"]}, "tag": {"type": "string", "pattern": "^v"}}))
    thing = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"},
             "spec": {"replicas": 5, "tag": "1.0"}}
    assert [c["field"] for c in _causes(validator, THING, thing)] == ["spec.tag", "spec"]
    blocked = _causes(validator, THING, {**thing, "spec": {"replicas": 5, "mode": "c"}})
    assert blocked[-1] == {"reason": "FieldValueInvalid", "field": "<nil>", "message": 'Invalid value: "null": some '
                           "validation rules were not checked because the object was invalid; correct the existing "
                           "errors to complete validation"}
    assert [c["field"] for c in blocked] == ["spec.mode", "<nil>"]
