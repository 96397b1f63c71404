"""The resource types the lab's Kubernetes API servers serve: one catalog entry per kind, with what discovery
publishes about it (plural, scope, verbs, short names, subresources)."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()  # "status", "scale", "eviction", ...
    custom: bool = False  # a CustomResource: strategic merge patch is refused like a real apiserver does
    # where the scale subresource reads/writes replicas (dotted paths), as a CRD's subresources.scale says
    scale_spec_path: str = ""
    scale_status_path: str = ""
    scale_selector_path: str = ""
    categories: tuple[str, ...] = field(default=())
    # the registry strategy's update policy (staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go,
    # Update): a PUT without metadata.resourceVersion is applied to the latest object only when the strategy's
    # AllowUnconditionalUpdate() is true (422 otherwise); a PUT of a missing object creates it (201) only when
    # AllowCreateOnUpdate() is true (404 otherwise)
    allow_unconditional_update: bool = True
    allow_create_on_update: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def discovery_entries(self) -> list[dict]:
        """The APIResourceList entries for this type and its subresources."""
        entries = [
            {
                "name": self.plural,
                "singularName": self.singular,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": list(self.verbs),
                **({"shortNames": list(self.short_names)} if self.short_names else {}),
                **({"categories": list(self.categories)} if self.categories else {}),
            }
        ]
        for sub in self.subresources:
            kind, verbs = {
                "status": (self.kind, ["get", "patch", "update"]),
                "scale": ("Scale", ["get", "patch", "update"]),
                "eviction": ("Eviction", ["create"]),
                "approval": (self.kind, ["get", "patch", "update"]),
            }.get(sub, (self.kind, ["get"]))
            entry = {"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                     "kind": kind, "verbs": verbs}
            if sub == "scale":
                entry.update(group="autoscaling", version="v1")
            elif sub == "eviction":
                entry.update(group="policy", version="v1")
            entries.append(entry)
        return entries


def _core(kind: str, plural: str, namespaced: bool, short: tuple[str, ...] = (), subs: tuple[str, ...] = ()):
    return ResourceType("", "v1", kind, plural, namespaced, short, subresources=subs)


CORE_TYPES: tuple[ResourceType, ...] = (
    _core("Namespace", "namespaces", False, ("ns",), ("status",)),
    _core("Node", "nodes", False, ("no",), ("status",)),
    _core("Pod", "pods", True, ("po",), ("status", "eviction")),
    _core("Secret", "secrets", True),
    _core("ConfigMap", "configmaps", True, ("cm",)),
    _core("ServiceAccount", "serviceaccounts", True, ("sa",)),
    _core("Service", "services", True, ("svc",), ("status",)),
    _core("Event", "events", True, ("ev",)),
)

# RBAC (rbac.authorization.k8s.io/v1): served by the parent and every tenant, and enforced (kube_rbac).
RBAC_TYPES: tuple[ResourceType, ...] = (
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True),
)

# PodDisruptionBudgets (policy/v1, enforced by the eviction subresource, kube_disruption) and the workload
# controllers whose scale a budget's maxUnavailable / percentage minAvailable is counted against.
POLICY_TYPES: tuple[ResourceType, ...] = (
    ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, ("pdb",),
                 subresources=("status",)),
    ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, ("rs",), subresources=("status", "scale"),
                 scale_spec_path="spec.replicas", scale_status_path="status.replicas",
                 scale_selector_path="spec.selector"),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", True, ("sts",), subresources=("status", "scale"),
                 scale_spec_path="spec.replicas", scale_status_path="status.replicas",
                 scale_selector_path="spec.selector"),
)

# certificates.k8s.io/v1 CertificateSigningRequests (k8s.io/api/certificates/v1/types.go: cluster-scoped, short
# name csr, subresources status and approval), served by every tenant for the kubelet's TLS bootstrap; their rules
# live in kube_certificates.
CERTIFICATE_SIGNING_REQUEST = ResourceType(
    "certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", False, ("csr",),
    subresources=("status", "approval"))

# What a tenant's API server also serves for the baseline (CNI manifests, policies, quotas) and for drains.
TENANT_EXTRA_TYPES: tuple[ResourceType, ...] = (
    _core("ResourceQuota", "resourcequotas", True, ("quota",), ("status",)),
    _core("LimitRange", "limitranges", True, ("limits",)),
    ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True, ("netpol",)),
    ResourceType("apps", "v1", "DaemonSet", "daemonsets", True, ("ds",), subresources=("status",)),
    ResourceType("apps", "v1", "Deployment", "deployments", True, ("deploy",), subresources=("status", "scale"),
                 scale_spec_path="spec.replicas", scale_status_path="status.replicas",
                 scale_selector_path="spec.selector"),
    *RBAC_TYPES,
    *POLICY_TYPES,
    ResourceType("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False,
                 ("crd",), subresources=("status",)),
    CERTIFICATE_SIGNING_REQUEST,
)

# coordination.k8s.io/v1 Leases (k8s.io/api/coordination/v1/types.go: namespaced, no subresource), served by the
# parent for leader election. pkg/registry/coordination/lease/strategy.go: AllowUnconditionalUpdate false,
# AllowCreateOnUpdate true.
LEASE = ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True, allow_unconditional_update=False,
                     allow_create_on_update=True)
COORDINATION_TYPES: tuple[ResourceType, ...] = (LEASE,)

KAMAJI_GROUP = "kamaji.clastix.io"
KAMAJI_VERSION = "v1alpha1"

TENANT_CONTROL_PLANE = ResourceType(
    KAMAJI_GROUP, KAMAJI_VERSION, "TenantControlPlane", "tenantcontrolplanes", True, ("tcp",),
    subresources=("status", "scale"), custom=True,
    scale_spec_path="spec.controlPlane.deployment.replicas",
    scale_status_path="status.kubernetesResources.deployment.replicas",
    scale_selector_path="status.kubernetesResources.deployment.selector",
    categories=("kamaji",),
)
DATA_STORE = ResourceType(
    KAMAJI_GROUP, KAMAJI_VERSION, "DataStore", "datastores", False, subresources=("status",), custom=True
)
KAMAJI_TYPES: tuple[ResourceType, ...] = (TENANT_CONTROL_PLANE, DATA_STORE)


class ResourceCatalog:
    """Looks resource types up by (group, version, plural) for URLs and by (apiVersion, kind) for objects."""

    def __init__(self, types: tuple[ResourceType, ...] | list[ResourceType]):
        self.types = tuple(types)
        self._by_plural = {(t.group, t.version, t.plural): t for t in self.types}
        self._by_kind = {(t.api_version, t.kind): t for t in self.types}

    def by_plural(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_plural.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((api_version, kind))

    def group_versions(self) -> dict[str, list[str]]:
        """Named groups (not the core group) and their versions, in catalog order."""
        groups: dict[str, list[str]] = {}
        for t in self.types:
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return groups

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self.types if t.group == group and t.version == version]
