"""The tenant spec: the properties of a "kubernetes-cluster" service (../shared/TENANT-SPEC.md).

One pydantic model validates it everywhere: the agent before a job runs, `agentkube validate`, and the
playbooks' validate role (which calls `agentkube validate` logic through the vars file the agent wrote).
Field names are camelCase as in Fulcrum. Unknown fields are errors.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentkube.core.version_window import default_window

# Every pattern here is used with fullmatch: `$` would accept a trailing newline.
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
VERSION_RE = re.compile(r"v(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)")
# Kubernetes label keys: optional DNS-subdomain prefix + "/" + name (63 chars, alnum at both ends).
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
LABEL_KEY_RE = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?" + _LABEL_NAME)
LABEL_VALUE_RE = re.compile(r"(" + _LABEL_NAME + r")?")
# A DNS-1123 subdomain, optionally wildcarded: apimachinery's IsDNS1123Subdomain / IsWildcardDNS1123Subdomain
# (staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go), as kubeadm's ValidateCertSANs uses them.
_DNS_NAME_RE = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

def cert_san_problem(san: str) -> str:
    """'' when Kamaji's admission accepts `san` as a certSAN, else why not.

    Kamaji validates networkProfile.certSANs with kubeadm's ValidateCertSANs (clastix/kamaji
    internal/webhook/handlers/tcp_certsans.go; kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/validation/
    validation.go): each entry is a DNS-1123 subdomain, a wildcard one (`*.` + subdomain), both at most 253
    bytes, or an IP address. kubeadm reads IPs sloppily (IPv4 octets with leading zeros); here an IP must be
    canonical, and never carries a zone (`fe80::1%eth0`), which kubeadm refuses.
    """
    if "%" not in san and san.isascii():
        try:
            ipaddress.ip_address(san)
            return ""
        except ValueError:
            pass
    if len(san.encode("utf-8", "surrogatepass")) <= 253 and san.isascii() and _DNS_NAME_RE.fullmatch(san):
        return ""
    return ("is not an IP address, a DNS name or a wildcard DNS name (*.example.com) of at most 253 characters: "
            "lowercase letters, digits, '-' and '.', each label starting and ending with a letter or digit")


def parse_version(value: str) -> tuple[int, int, int]:
    """'v1.35.7' -> (1, 35, 7); ValueError with the expected form otherwise."""
    m = VERSION_RE.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a version of the form vMAJOR.MINOR.PATCH (e.g. v1.35.7)")
    return int(m["major"]), int(m["minor"]), int(m["patch"])


class FieldError(ValueError):
    """Raised by a model-level check to name the sub-field at fault (reported as '<model path>.<field>')."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=False)


class ControlPlane(_Strict):
    replicas: Annotated[int, Field(ge=1, le=5)] = 2
    serviceType: Literal["LoadBalancer", "NodePort", "ClusterIP"] = "LoadBalancer"
    address: str = ""
    port: Annotated[int, Field(ge=1, le=65535)] = 6443
    certSANs: list[str] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _ipv4(cls, v: str) -> str:
        if v:
            try:
                ipaddress.IPv4Address(v)
            except ValueError as e:
                raise ValueError(f"{v!r} is not an IPv4 address") from e
        return v

    @field_validator("certSANs")
    @classmethod
    def _sans(cls, v: list[str]) -> list[str]:
        for i, san in enumerate(v):
            problem = cert_san_problem(san)
            if problem:
                raise ValueError(f"entry {i} ({san!r}) {problem}")
        if len(set(v)) != len(v):
            raise ValueError("duplicate entries")
        return v

    @model_validator(mode="after")
    def _address_rules(self) -> ControlPlane:
        if self.serviceType == "NodePort" and not self.address:
            raise FieldError("address", "required when serviceType is NodePort")
        return self


class Network(_Strict):
    podCidr: str = "10.244.0.0/16"
    serviceCidr: str = "10.96.0.0/16"
    dnsServiceIP: str = ""

    @field_validator("podCidr", "serviceCidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.IPv4Network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"{v!r} is not an IPv4 network in CIDR form (e.g. 10.96.0.0/16)") from e
        if net.prefixlen > 28:
            raise ValueError(f"{v!r} is too small (prefix longer than /28)")
        return v

    @model_validator(mode="after")
    def _dns_ip(self) -> Network:
        svc = ipaddress.IPv4Network(self.serviceCidr)
        pod = ipaddress.IPv4Network(self.podCidr)
        if svc.overlaps(pod):
            raise FieldError("serviceCidr", f"{self.serviceCidr} overlaps podCidr {self.podCidr}")
        if not self.dnsServiceIP:
            self.dnsServiceIP = str(svc.network_address + 10)
            return self
        try:
            ip = ipaddress.IPv4Address(self.dnsServiceIP)
        except ValueError as e:
            raise FieldError("dnsServiceIP", f"{self.dnsServiceIP!r} is not an IPv4 address") from e
        # Kamaji's admission (clastix/kamaji internal/webhook/handlers/tcp_dns.go) refuses a dnsServiceIPs entry
        # outside every service CIDR; the network and broadcast addresses are refused here as well.
        if ip not in svc or ip in (svc.network_address, svc.broadcast_address):
            raise FieldError(
                "dnsServiceIP", f"{self.dnsServiceIP} must lie inside serviceCidr {self.serviceCidr}"
            )
        return self


class Addons(_Strict):
    coreDNS: bool = True
    kubeProxy: bool = True
    konnectivity: bool = True


class Taint(_Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not LABEL_KEY_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid taint key")
        return v

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        if not LABEL_VALUE_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid taint value")
        return v


class NodePool(_Strict):
    name: str
    count: Annotated[int, Field(ge=0, le=50)] = 2
    cores: Annotated[int, Field(ge=1, le=64)] = 2
    memoryMiB: Annotated[int, Field(ge=1024, le=262144)] = 4096
    diskGiB: Annotated[int, Field(ge=10, le=4096)] = 40
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DNS1123_LABEL.fullmatch(v) or len(v) > 20:
            raise ValueError(f"{v!r} is not a DNS-1123 label of at most 20 characters (a-z, 0-9, '-')")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL_KEY_RE.fullmatch(key):
                raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
            if not LABEL_VALUE_RE.fullmatch(value):
                raise ValueError(f"label value {value!r} (key {key!r}) is not a valid Kubernetes label value")
        return v


class Baseline(_Strict):
    cni: Literal["calico", "cilium", "none"] = "calico"
    podSecurity: Literal["privileged", "baseline", "restricted"] = "baseline"


class TenantSpec(_Strict):
    kubernetesVersion: str
    controlPlane: ControlPlane = Field(default_factory=ControlPlane)
    network: Network = Field(default_factory=Network)
    addons: Addons = Field(default_factory=Addons)
    nodePools: list[NodePool] = Field(default_factory=lambda: [NodePool(name="default")])
    baseline: Baseline = Field(default_factory=Baseline)

    @field_validator("kubernetesVersion")
    @classmethod
    def _version(cls, v: str) -> str:
        parse_version(v)
        return v

    @field_validator("nodePools")
    @classmethod
    def _unique_pools(cls, v: list[NodePool]) -> list[NodePool]:
        seen: set[str] = set()
        for pool in v:
            if pool.name in seen:
                raise ValueError(f"duplicate pool name {pool.name!r}")
            seen.add(pool.name)
        return v

    @property
    def minor(self) -> tuple[int, int]:
        major, minor, _ = parse_version(self.kubernetesVersion)
        return major, minor


class SpecError(ValueError):
    """A tenant spec failed validation; `errors` lists (field path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors))


RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


class TenantLimits(BaseModel):
    """The operator's quotas and address policy for tenant specs (agent.yaml `tenancy.limits`). One tenant must
    not drain what all share: the VMID range, the IP pool, the parent cluster's API objects."""

    model_config = ConfigDict(extra="forbid")

    max_node_pools: int = Field(10, ge=0, description="node pools per tenant")
    max_workers: int = Field(100, ge=0, description="worker VMs per tenant (sum of the pools' counts)")
    max_cert_sans: int = Field(32, ge=0, description="controlPlane.certSANs entries")
    max_labels: int = Field(32, ge=0, description="labels, and taints, per node pool")
    max_properties_bytes: int = Field(65536, ge=1024, description="size of the properties as JSON")
    control_plane_address_ranges: list[ipaddress.IPv4Network] = Field(
        default_factory=lambda: [ipaddress.IPv4Network(n) for n in RFC1918],
        description="controlPlane.address must be a global unicast address or lie in one of these ranges "
                    "(your load balancer pools); the default allows RFC 1918's private ranges")

    def address_problem(self, address: str) -> str:
        """'' when the address may be pinned, else why not."""
        ip = ipaddress.IPv4Address(address)
        if any(ip in net for net in self.control_plane_address_ranges):
            return ""
        if ip.is_global and not ip.is_multicast:
            return ""
        allowed = ", ".join(str(n) for n in self.control_plane_address_ranges) or "none"
        return (f"{address} is not a global unicast address and lies outside the allowed ranges ({allowed}); "
                "loopback, link-local, unspecified, multicast and reserved addresses are refused")

    def problems(self, spec: TenantSpec) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if len(spec.nodePools) > self.max_node_pools:
            out.append(("nodePools", f"{len(spec.nodePools)} pools exceed the limit of {self.max_node_pools}"))
        workers = sum(p.count for p in spec.nodePools)
        if workers > self.max_workers:
            out.append(("nodePools", f"{workers} workers in all exceed the limit of {self.max_workers}"))
        if len(spec.controlPlane.certSANs) > self.max_cert_sans:
            out.append(("controlPlane.certSANs",
                        f"{len(spec.controlPlane.certSANs)} entries exceed the limit of {self.max_cert_sans}"))
        for i, pool in enumerate(spec.nodePools):
            for what, n in (("labels", len(pool.labels)), ("taints", len(pool.taints))):
                if n > self.max_labels:
                    out.append((f"nodePools[{i}].{what}", f"{n} entries exceed the limit of {self.max_labels}"))
        if spec.controlPlane.address:
            problem = self.address_problem(spec.controlPlane.address)
            if problem:
                out.append(("controlPlane.address", problem))
        return out


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def validate_tenant_spec(
    data: Any,
    *,
    min_minor: tuple[int, int] | None = None,
    max_minor: tuple[int, int] | None = None,
    limits: TenantLimits | None = None,
) -> TenantSpec:
    """Validate raw properties; raise SpecError naming every bad field. The version window and the limits are
    the operator's (the kamaji_tcp role's default window and TenantLimits' defaults when none are given)."""
    if min_minor is None or max_minor is None:
        default_min, default_max = default_window()
        min_minor, max_minor = min_minor or default_min, max_minor or default_max
    if not isinstance(data, dict):
        raise SpecError([("(root)", "the tenant spec must be a mapping")])
    limits = limits or TenantLimits()
    try:
        size = len(json.dumps(data, separators=(",", ":")))
    except (TypeError, ValueError) as e:
        raise SpecError([("(root)", f"not plain JSON data: {e}")]) from None
    if size > limits.max_properties_bytes:
        raise SpecError([("(root)", f"{size} bytes of properties exceed the limit of {limits.max_properties_bytes}")])
    try:
        spec = TenantSpec.model_validate(data)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, FieldError):
                loc = (*loc, cause.field)
                msg = str(cause)
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            errors.append((_path(loc), msg))
        raise SpecError(errors) from None
    if not (min_minor <= spec.minor <= max_minor):
        raise SpecError([(
            "kubernetesVersion",
            f"{spec.kubernetesVersion} is outside the supported window "
            f"v{min_minor[0]}.{min_minor[1]} to v{max_minor[0]}.{max_minor[1]}",
        )])
    problems = limits.problems(spec)
    if problems:
        raise SpecError(problems)
    return spec
