"""Kamaji's admission webhooks for TenantControlPlanes, as one admission hook of the lab store.

Kamaji registers (clastix/kamaji cmd/manager/cmd.go, webhook.Register; routes in internal/webhook/routes/, the
webhook configurations in charts/kamaji/controller-gen/*-webhook.yaml):
- `mtenantcontrolplane.kb.io` (/mutate-kamaji-clastix-io-v1alpha1-tenantcontrolplane, CREATE and UPDATE,
  failurePolicy Fail): TenantControlPlaneDefaults (handlers/tcp_defaults.go), which only acts on CREATE;
- `vtenantcontrolplane.kb.io` (/validate-..., CREATE and UPDATE, failurePolicy Fail): the handlers
  CertSANs, DNS, Name, Version, DataStore, Deployment and GatewayValidation, in that order; the first error
  denies the request (internal/webhook/chainer.go);
- `telemetry.kamaji.clastix.io` (failurePolicy Ignore, never denies): nothing to model.
The /migrate (Freeze) and /write-permission routes are not TenantControlPlane webhooks: Kamaji installs them
inside a tenant's own API server during a DataStore migration or when writes are limited.

The apiserver runs mutating webhooks before validating ones and the validating ones see the mutated object;
the hook does the same (it runs after the CRD schema hook, which prunes and applies the schema's defaults as
the apiserver does when decoding). Status and scale subresources are not sent to these webhooks (their rules
name `tenantcontrolplanes` only). A denial is answered as the apiserver answers one (403 Forbidden,
`admission webhook "<name>" denied the request: <message>`), with Kamaji's own messages.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Collection

from agentkube_lab.kamaji_admission_rules import (
    GoParseError,
    SemVer,
    SemVerError,
    aggregate,
    field_invalid,
    go_parse_cidr,
    go_parse_ip,
    go_quote,
    ip_string,
    ip_to4,
    is_dns1035_label,
    is_dns1123_subdomain,
    is_wildcard_dns1123_subdomain,
    parse_ip_sloppy,
    semver_parse,
)
from agentkube_lab.kube_resources import TENANT_CONTROL_PLANE
from agentkube_lab.kube_store import AdmissionRequest, ApiError

VALIDATING_WEBHOOK = "vtenantcontrolplane.kb.io"
MUTATING_WEBHOOK = "mtenantcontrolplane.kb.io"
WEBHOOK_NAME = VALIDATING_WEBHOOK
# charts/kamaji/values.yaml defaultDatastoreName, passed as --datastore (charts/kamaji/templates/controller.yaml)
DEFAULT_DATASTORE = "default"
# internal/upgrade/kubeadm_version.go KubeadmVersion of the Kamaji snapshot in ../shared/contracts/kamaji
DEFAULT_MAX_VERSION = "v1.36"
_MAX = re.compile(r"v?(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?")


class Rejected(Exception):
    """A handler's error: the chainer turns it into admission.Denied(err.Error())."""


def denied(message: str, webhook: str = WEBHOOK_NAME) -> ApiError:
    """What kube-apiserver returns when a webhook (controller-runtime admission.Denied) says no."""
    return ApiError(403, "Forbidden", f'admission webhook "{webhook}" denied the request: {message}')


def parse_version(text: object) -> tuple[int, int] | None:
    """(major, minor) of a version Kamaji's version handler accepts (blang/semver after dropping one leading
    'v'), or None."""
    try:
        ver = semver_parse(_normalize_version(text)) if isinstance(text, str) else None
    except SemVerError:
        return None
    return (ver.major, ver.minor) if ver else None


def _normalize_version(text: str) -> str:
    # tcp_version.go normalizeKubernetesVersion: strings.Replace(input, "v", "", 1) when it starts with "v"
    return text[1:] if text.startswith("v") else text


def _spec(obj: dict) -> dict:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _get(obj: object, *path: str) -> object:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _strings(value: object) -> list[str]:
    return [v if isinstance(v, str) else str(v) for v in value] if isinstance(value, list) else []


# ---------------------------------------------------------------- handlers/tcp_name.go
def check_name(obj: dict) -> None:
    """CREATE only: metadata.name must be a DNS-1035 label (validation.IsDNS1035Label)."""
    errs = is_dns1035_label(str(_get(obj, "metadata", "name") or ""))
    if errs:
        raise Rejected("the provided name is invalid, " + ",".join(errs))


# ---------------------------------------------------------------- handlers/tcp_dns.go
def check_dns_service_ips(obj: dict) -> None:
    """CREATE and UPDATE: each networkProfile.dnsServiceIPs entry is an IP inside one of the service CIDRs
    (serviceCidrs, else the deprecated serviceCidr)."""
    profile = _spec(obj).get("networkProfile") or {}
    dns_ips = _strings(profile.get("dnsServiceIPs"))
    if not dns_ips:
        return
    cidrs = _strings(profile.get("serviceCidrs"))
    if not cidrs and profile.get("serviceCidr"):
        cidrs = [str(profile["serviceCidr"])]
    if not cidrs:
        raise Rejected("no service CIDRs defined")
    for dns_ip in dns_ips:
        ip = go_parse_ip(dns_ip)
        if ip is None:
            raise Rejected(f"DNS service IP {go_quote(dns_ip)} is not a valid IP address")
        found = False
        for cidr in cidrs:
            try:
                _, network = go_parse_cidr(cidr)
            except GoParseError as e:
                raise Rejected(f"invalid service CIDR {go_quote(cidr)}: {e}") from None
            if network.contains(ip):
                found = True
                break
        if not found:
            raise Rejected(f"DNS service IP {go_quote(dns_ip)} is not contained in any configured service CIDR")


# ---------------------------------------------------------------- handlers/tcp_certsans.go
CERT_SANS_PATH = "spec.networkProfile.certSANs"


def cert_san_problems(sans: list[str], path: str = CERT_SANS_PATH) -> list[str]:
    """kubeadm's ValidateCertSANs (cmd/kubeadm/app/apis/kubeadm/validation/validation.go): every entry is a
    DNS-1123 subdomain, a wildcard DNS-1123 subdomain or an IP address (ParseIPSloppy)."""
    out = []
    for san in sans:
        errs = is_dns1123_subdomain(san)
        if not errs:
            continue
        errs2 = is_wildcard_dns1123_subdomain(san)
        if not errs2 or parse_ip_sloppy(san) is not None:
            continue
        out.append(field_invalid(
            path, san, "altname is not a valid IP address, DNS label or a DNS label with subdomain wildcards: "
            + "; ".join(errs) + "; " + "; ".join(errs2)))
    return out


def check_cert_sans(obj: dict) -> None:
    """CREATE and UPDATE: networkProfile.certSANs per ValidateCertSANs, errors aggregated."""
    problems = cert_san_problems(_strings(_get(_spec(obj), "networkProfile", "certSANs")))
    if problems:
        raise Rejected(aggregate(problems))


# ---------------------------------------------------------------- handlers/tcp_version.go
class VersionRules:
    """No version above Kamaji's KubeadmVersion, no downgrade, no skipped minor; the patch is ignored."""

    def __init__(self, max_version: str = DEFAULT_MAX_VERSION):
        m = _MAX.fullmatch(max_version)
        if not m:
            raise ValueError(f"max_version: expected vMAJOR.MINOR[.PATCH], got {max_version!r}")
        self.supported = SemVer(int(m["major"]), int(m["minor"]), int(m["patch"] or 0))
        self.max = (self.supported.major, self.supported.minor)

    @staticmethod
    def _version(obj: dict, what: str) -> SemVer:
        text = _get(obj, "spec", "kubernetes", "version")
        try:
            return semver_parse(_normalize_version(text if isinstance(text, str) else "")).with_patch(0)
        except SemVerError as e:
            raise Rejected(f"unable to parse the {what} Kubernetes version: {e}") from None

    def on_create(self, obj: dict) -> None:
        ver = self._version(obj, "desired")
        if ver.compare(self.supported) > 0:
            raise Rejected("unable to create a TenantControlPlane with a Kubernetes version greater than the "
                           f"supported one, actually v{self.max[0]}.{self.max[1]}")

    def on_update(self, obj: dict, old: dict) -> None:
        if _get(obj, "metadata", "deletionTimestamp"):
            return
        old_ver = self._version(old, "previous")
        new_ver = self._version(obj, "desired")
        if new_ver.compare(self.supported) > 0:
            raise Rejected(f"unable to upgrade to a version greater than the supported one "
                           f"(v{self.max[0]}.{self.max[1]})")
        if new_ver.compare(old_ver) < 0:
            raise Rejected(f"unable to downgrade a TenantControlPlane from {old_ver} to {new_ver}")
        # Minor is a uint64 in blang/semver: the difference wraps when the new minor is smaller
        if (new_ver.minor - old_ver.minor) % (1 << 64) > 1:
            raise Rejected("unable to upgrade to a minor version in a non-sequential mode")


# ---------------------------------------------------------------- handlers/tcp_datastore.go
class DataStoreRules:
    """The named DataStore exists (CREATE and UPDATE); without one, on CREATE, each dataStoreOverrides entry
    names an existing DataStore and no resource is overridden twice."""

    def __init__(self, exists: Callable[[str], bool]):
        self.exists = exists

    def _check(self, name: str) -> None:
        if not self.exists(name):
            raise Rejected(f"{name} DataStore does not exist")

    def on_create(self, obj: dict) -> None:
        spec = _spec(obj)
        if spec.get("dataStore"):
            self._check(str(spec["dataStore"]))
            return
        seen: set[str] = set()
        for override in spec.get("dataStoreOverrides") or []:
            resource = str((override or {}).get("resource") or "")
            if resource in seen:
                raise Rejected("duplicate resource override in Spec.DataStoreOverrides")
            seen.add(resource)
            self._check(str((override or {}).get("dataStore") or ""))

    def on_update(self, obj: dict) -> None:
        spec = _spec(obj)
        if spec.get("dataStore"):
            self._check(str(spec["dataStore"]))


# ---------------------------------------------------------------- handlers/tcp_deployment.go
_EXTRA_KEYS = ("additionalContainers", "additionalInitContainers", "additionalVolumes")


def deployment_check_needed(obj: dict, old: dict) -> bool:
    """shouldTriggerCheck: only an UPDATE that sets or changes the Deployment's additional containers, init
    containers, volumes or volume mounts is checked."""
    new_dep = _get(obj, "spec", "controlPlane", "deployment") or {}
    old_dep = _get(old, "spec", "controlPlane", "deployment") or {}
    if new_dep.get("additionalVolumeMounts") is None and not any(new_dep.get(k) for k in _EXTRA_KEYS):
        return False
    if new_dep.get("additionalVolumeMounts") is not None and old_dep.get("additionalVolumeMounts") is None:
        return True
    return any((new_dep.get(k) or None) != (old_dep.get(k) or None)
               for k in (*_EXTRA_KEYS, "additionalVolumeMounts"))


def check_deployment_datastores(obj: dict, exists: Callable[[str], bool]) -> None:
    """The part of the Deployment handler the lab models: it reads the DataStore and every override's DataStore
    (a client Get, whose NotFound error is returned as it is). The dry-run of the resulting Deployment is not
    modelled."""
    spec = _spec(obj)
    names = [str(spec.get("dataStore") or "")]
    names += [str((o or {}).get("dataStore") or "") for o in spec.get("dataStoreOverrides") or []]
    for name in names:
        if not name:
            raise Rejected("resource name may not be empty")
        if not exists(name):
            raise Rejected(f'datastores.kamaji.clastix.io "{name}" not found')


# ---------------------------------------------------------------- handlers/tcp_gateway_validate.go
def check_gateway(obj: dict, served_kinds: Collection[str]) -> None:
    """CREATE and UPDATE: spec.controlPlane.gateway needs the Gateway API (gateway.networking.k8s.io) and its
    TLSRoute served by the parent cluster (internal/utilities/gateway_discovery.go)."""
    if _get(obj, "spec", "controlPlane", "gateway") is None:
        return
    if not served_kinds:
        raise Rejected("the Gateway API is not available in this cluster, cannot use gatewayRoute configuration")
    if "TLSRoute" not in served_kinds:
        raise Rejected("TLSRoute resource is not available in this cluster")


# ---------------------------------------------------------------- handlers/tcp_defaults.go
def default_dns_service_ip(cidr: str) -> str:
    """The address part of the CIDR (not its network) with 10 added to its last byte (16 for IPv6), the byte
    wrapping as a Go byte does."""
    try:
        ip16, _ = go_parse_cidr(cidr)
    except GoParseError as e:
        raise Rejected(f"cannot define resulting DNS Service IP: {e}") from None
    ip = bytearray(ip16)
    ip[-1] = (ip[-1] + (10 if ip_to4(bytes(ip)) is not None else 16)) % 256
    return ip_string(bytes(ip))


def apply_defaults(obj: dict, default_datastore: str = DEFAULT_DATASTORE) -> None:
    """CREATE only; mutates `obj` in place as Kamaji's JSON patch does: the default DataStore, 2 replicas,
    dataStoreSchema and dataStoreUsername from the object's UID, serviceCidrs/podCidrs from the deprecated
    singular fields, and one DNS service IP per service CIDR when none is given. (On UPDATE the handler does
    nothing: immutability is left to the CRD's CEL rules.)"""
    spec = obj.setdefault("spec", {})
    uid = str(_get(obj, "metadata", "uid") or "")
    if not spec.get("dataStore") and default_datastore:
        spec["dataStore"] = default_datastore
    deployment = spec.setdefault("controlPlane", {}).setdefault("deployment", {})
    if deployment.get("replicas") is None:
        deployment["replicas"] = 2
    if not spec.get("dataStoreSchema"):
        spec["dataStoreSchema"] = uid  # tenantcontrolplane_funcs.go GetDefaultDatastoreSchema
    if not spec.get("dataStoreUsername"):
        spec["dataStoreUsername"] = uid  # GetDefaultDatastoreUsername
    profile = spec.setdefault("networkProfile", {})
    if not profile.get("serviceCidrs") and profile.get("serviceCidr"):
        profile["serviceCidrs"] = [profile["serviceCidr"]]
    if not profile.get("podCidrs") and profile.get("podCidr"):
        profile["podCidrs"] = [profile["podCidr"]]
    if not profile.get("dnsServiceIPs"):
        cidrs = _strings(profile.get("serviceCidrs"))
        if not cidrs and profile.get("serviceCidr"):
            cidrs = [str(profile["serviceCidr"])]
        profile["dnsServiceIPs"] = [default_dns_service_ip(c) for c in cidrs]


# ---------------------------------------------------------------- the hook
class KamajiTcpWebhook:
    """Kamaji's mutating then validating TenantControlPlane webhooks. `datastore_exists` answers whether a
    DataStore exists (None: the DataStore rules are off, for tests of the other rules); `default_datastore` is
    Kamaji's --datastore; `gateway_kinds` the Gateway API kinds the parent cluster serves (none in the lab)."""

    def __init__(self, max_version: str = DEFAULT_MAX_VERSION,
                 datastore_exists: Callable[[str], bool] | None = None,
                 default_datastore: str = DEFAULT_DATASTORE, gateway_kinds: Collection[str] = ()):
        self.versions = VersionRules(max_version)
        self.max = self.versions.max
        self.datastores = DataStoreRules(datastore_exists) if datastore_exists else None
        self.default_datastore = default_datastore
        self.gateway_kinds = frozenset(gateway_kinds)

    def __call__(self, request: AdmissionRequest) -> None:
        if request.rtype != TENANT_CONTROL_PLANE or request.subresource or request.obj is None:
            return
        if request.operation == "CREATE":
            self.mutate(request.obj)
            self.on_create(request.obj)
        elif request.operation == "UPDATE" and request.old is not None:
            self.on_update(request.obj, request.old)

    def mutate(self, obj: dict) -> None:
        """The mutating webhook on CREATE: defaults applied to `obj`, or a denial by mtenantcontrolplane."""
        patched = copy.deepcopy(obj)
        try:
            apply_defaults(patched, self.default_datastore)
        except Rejected as e:
            raise denied(str(e), MUTATING_WEBHOOK) from None
        obj.clear()
        obj.update(patched)

    def on_create(self, obj: dict) -> None:
        try:
            check_cert_sans(obj)
            check_dns_service_ips(obj)
            check_name(obj)
            self.versions.on_create(obj)
            if self.datastores:
                self.datastores.on_create(obj)
            check_gateway(obj, self.gateway_kinds)  # the Deployment handler does nothing on CREATE
        except Rejected as e:
            raise denied(str(e)) from None

    def on_update(self, obj: dict, old: dict) -> None:
        try:
            check_cert_sans(obj)
            check_dns_service_ips(obj)
            self.versions.on_update(obj, old)  # the Name handler does nothing on UPDATE
            if self.datastores:
                self.datastores.on_update(obj)
                if deployment_check_needed(obj, old):
                    check_deployment_datastores(obj, self.datastores.exists)
            check_gateway(obj, self.gateway_kinds)
        except Rejected as e:
            raise denied(str(e)) from None
