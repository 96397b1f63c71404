"""Who is asking and what they may do, as kube-apiserver decides it: request identities (user, groups) from
the lab's authenticators, request attributes from the URL, the system:masters bypass and the RBAC authorizer
over the Roles/ClusterRoles/bindings in an ObjectStore, the Node authorizer and NodeRestriction for kubelets,
bootstrap-token identities, and the RBAC kubeadm (and so Kamaji) creates in every tenant for bootstrap tokens.
Each rule cites the upstream file it is transcribed from (kubernetes/kubernetes unless said otherwise)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from agentkube_lab.kube_resources import ResourceCatalog
from agentkube_lab.kube_store import ApiError, ObjectStore

# staging/src/k8s.io/apiserver/pkg/authentication/user/user.go
SYSTEM_PRIVILEGED_GROUP = "system:masters"
ALL_AUTHENTICATED = "system:authenticated"
ANONYMOUS_USER = "system:anonymous"
ALL_UNAUTHENTICATED = "system:unauthenticated"
# staging/src/k8s.io/cluster-bootstrap/token/api/types.go
BOOTSTRAP_USER_PREFIX = "system:bootstrap:"
BOOTSTRAP_DEFAULT_GROUP = "system:bootstrappers"
KUBEADM_NODE_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"  # noqa: S105 - a group name
# staging/src/k8s.io/cluster-bootstrap/token/util/helpers.go: BootstrapGroupPattern
_BOOTSTRAP_GROUP = re.compile(r"\Asystem:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]\Z")


@dataclass(frozen=True)
class Identity:
    """An authenticated user as the apiserver sees it (user.Info): a name and its groups."""

    user: str
    groups: tuple[str, ...] = ()

    def with_authenticated(self) -> Identity:
        """Every authenticated request also carries system:authenticated
        (staging/src/k8s.io/apiserver/pkg/authentication/group/authenticated_group_adder.go)."""
        if ALL_AUTHENTICATED in self.groups or self.user == ANONYMOUS_USER:
            return self
        return Identity(self.user, (*self.groups, ALL_AUTHENTICATED))


ANONYMOUS = Identity(ANONYMOUS_USER, (ALL_UNAUTHENTICATED,))


def identity_of_client_cert(peer: dict | None) -> Identity | None:
    """The identity of a client certificate the TLS layer verified, as ssl.getpeercert() shows it: CN is the
    user, each O a group; no CN, no identity (staging/src/k8s.io/apiserver/pkg/authentication/request/x509/
    x509.go, CommonNameUserConversion)."""
    if not peer:
        return None
    user, groups = "", []
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                user = value
            elif key == "organizationName":
                groups.append(value)
    return Identity(user, tuple(groups)) if user else None
MASTERS = Identity("kubernetes-admin", (SYSTEM_PRIVILEGED_GROUP,))


def secret_field(secret: dict, key: str) -> str | None:
    """A Secret's data field, base64-decoded (None when absent or not base64). stringData is never stored: the
    store merges it into data."""
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw).decode()
    except ValueError:
        return None


def bootstrap_identity(secret: dict) -> Identity | None:
    """The identity of a valid bootstrap token's Secret (validity is checked by the caller): user
    system:bootstrap:<token-id>, groups system:bootstrappers plus `auth-extra-groups`; a malformed extra group
    fails the authentication. plugin/pkg/auth/authenticator/token/bootstrap/bootstrap.go (AuthenticateToken),
    staging/src/k8s.io/cluster-bootstrap/token/util/helpers.go (GetGroups)."""
    token_id = secret_field(secret, "token-id")
    if not token_id:
        return None
    groups = [BOOTSTRAP_DEFAULT_GROUP]
    for group in (secret_field(secret, "auth-extra-groups") or "").split(","):
        group = group.strip()
        if not group:
            continue
        if not _BOOTSTRAP_GROUP.match(group):
            return None
        if group not in groups:
            groups.append(group)
    return Identity(BOOTSTRAP_USER_PREFIX + token_id, tuple(groups))


# ---------------------------------------------------------------- request attributes
@dataclass(frozen=True)
class Attributes:
    """authorizer.Attributes (staging/src/k8s.io/apiserver/pkg/authorization/authorizer/interfaces.go)."""

    identity: Identity
    verb: str
    resource_request: bool
    path: str = ""
    api_group: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


_NAMESPACE_SUBRESOURCES = ("status", "finalize")


def request_attributes(identity: Identity, method: str, path: str, query: dict[str, str]) -> Attributes:
    """What the apiserver's RequestInfoFactory makes of a URL
    (staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go, NewRequestInfo): /api/v1/... and
    /apis/<group>/<version>/... are resource requests, everything else a non-resource path; the verb comes from
    the method (GET on a collection is list, or watch with watch=true; DELETE on a collection deletecollection)."""
    parts = [p for p in path.split("/") if p]
    lowered = method.lower()
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return Attributes(identity, lowered if lowered != "head" else "get", False, path=path)
    if not rest:
        return Attributes(identity, "get", False, path=path)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    verb = {"post": "create", "put": "update", "patch": "patch", "delete": "delete", "get": "get"}.get(
        lowered, lowered)
    if not name and verb == "get":
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
    elif not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(identity, verb, True, path=path, api_group=group, namespace=namespace,
                      resource=resource, subresource=subresource, name=name)


# ---------------------------------------------------------------- RBAC rule evaluation
# pkg/apis/rbac/v1/evaluation_helpers.go
def _verb_matches(rule: dict, verb: str) -> bool:
    return any(v in ("*", verb) for v in rule.get("verbs") or [])


def _group_matches(rule: dict, group: str) -> bool:
    return any(g in ("*", group) for g in rule.get("apiGroups") or [])


def _resource_matches(rule: dict, combined: str, subresource: str) -> bool:
    for r in rule.get("resources") or []:
        if r in ("*", combined):
            return True
        if subresource and len(r) == len(subresource) + 2 and r.startswith("*/") and r.endswith(subresource):
            return True
    return False


def _name_matches(rule: dict, name: str) -> bool:
    names = rule.get("resourceNames") or []
    return not names or name in names


def _url_matches(rule: dict, path: str) -> bool:
    for url in rule.get("nonResourceURLs") or []:
        if url == "*" or url == path or (url.endswith("*") and path.startswith(url[:-1])):
            return True
    return False


def rule_allows(attrs: Attributes, rule: dict) -> bool:
    """plugin/pkg/auth/authorizer/rbac/rbac.go (RuleAllows)."""
    if attrs.resource_request:
        combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        return (_verb_matches(rule, attrs.verb) and _group_matches(rule, attrs.api_group)
                and _resource_matches(rule, combined, attrs.subresource) and _name_matches(rule, attrs.name))
    return _verb_matches(rule, attrs.verb) and _url_matches(rule, attrs.path)


def _applies_to(subject: dict, identity: Identity, namespace: str) -> bool:
    """pkg/registry/rbac/validation/rule.go (appliesToUser); a ServiceAccount subject without a namespace takes
    the binding's."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return identity.user == name
    if kind == "Group":
        return name in identity.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or namespace
        return bool(ns) and identity.user == f"system:serviceaccount:{ns}:{name}"
    return False


# What the apiserver's bootstrap policy grants every authenticated (and, for version/health, every) user:
# ClusterRoles system:discovery, system:basic-user and system:public-info-viewer with their bindings
# (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go). Built in here instead of stored objects so that
# the lab's stores list only what the product and Kamaji create.
_DISCOVERY_RULES = ({"verbs": ["get"], "nonResourceURLs": [
    "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz",
    "/version", "/version/"]},
    {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
     "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]})


@dataclass
class Decision:
    allowed: bool
    reason: str = ""
    errors: list[str] = field(default_factory=list)


class RbacAuthorizer:
    """The apiserver's authorizer chain as kubeadm configures it (Node,RBAC): the system:masters group is always
    allowed (pkg/kubeapiserver/authorizer/config.go, the privileged-groups authorizer), then the Node authorizer
    for kubelets (node_authorizer_allows, the part the lab's kubelets use), then RBAC
    (plugin/pkg/auth/authorizer/rbac/rbac.go: ClusterRoleBindings, then the request namespace's RoleBindings; a
    binding whose role is missing denies with that error in the reason)."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def _type(self, kind: str):
        return self.store.catalog.by_kind("rbac.authorization.k8s.io/v1", kind)

    def _role_rules(self, ref: dict, namespace: str, errors: list[str]) -> list[dict]:
        kind, name = ref.get("kind"), ref.get("name", "")
        rtype = self._type(kind) if kind in ("Role", "ClusterRole") else None
        if rtype is None:
            errors.append(f"unsupported role reference kind: {kind!r}")
            return []
        role = self.store.find(rtype, namespace if kind == "Role" else None, name)
        if role is None:
            errors.append(f'{kind.lower()}.rbac.authorization.k8s.io "{name}" not found')
            return []
        return list(role.get("rules") or [])

    def authorize(self, attrs: Attributes) -> Decision:
        identity = attrs.identity
        if SYSTEM_PRIVILEGED_GROUP in identity.groups:
            return Decision(True)
        if node_authorizer_allows(attrs):  # --authorization-mode=Node,RBAC: the Node authorizer comes first
            return Decision(True)
        if ALL_AUTHENTICATED in identity.groups and any(rule_allows(attrs, r) for r in _DISCOVERY_RULES):
            return Decision(True)
        if not attrs.resource_request and attrs.path in ("/healthz", "/livez", "/readyz", "/version"):
            return Decision(True)  # system:public-info-viewer, bound to system:unauthenticated too
        errors: list[str] = []
        crb_type, rb_type = self._type("ClusterRoleBinding"), self._type("RoleBinding")
        if crb_type is not None:
            for binding in self.store.list(crb_type)[0]:
                if any(_applies_to(s, identity, "") for s in binding.get("subjects") or []):
                    ref = binding.get("roleRef") or {}
                    if ref.get("kind") != "ClusterRole":
                        continue
                    if any(rule_allows(attrs, r) for r in self._role_rules(ref, "", errors)):
                        return Decision(True)
        if attrs.namespace and rb_type is not None:
            for binding in self.store.list(rb_type, attrs.namespace)[0]:
                if any(_applies_to(s, identity, attrs.namespace) for s in binding.get("subjects") or []):
                    rules = self._role_rules(binding.get("roleRef") or {}, attrs.namespace, errors)
                    if any(rule_allows(attrs, r) for r in rules):
                        return Decision(True)
        reason = f"RBAC: [{', '.join(errors)}]" if len(errors) > 1 else (f"RBAC: {errors[0]}" if errors else "")
        return Decision(False, reason, errors)


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """The 403 the apiserver sends (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/
    errors.go, Forbidden/forbiddenMessage)."""
    user = attrs.identity.user
    if not attrs.resource_request:
        message = f'forbidden: User "{user}" cannot {attrs.verb} path "{attrs.path}"'
        if reason:
            message += f": {reason}"
        return ApiError(403, "Forbidden", message, {})
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    detail = f'User "{user}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.api_group}" {scope}'
    if reason:
        detail += f": {reason}"
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {detail}",
                    {"name": attrs.name, "group": attrs.api_group, "kind": attrs.resource})


# ---------------------------------------------------------------- what kubeadm creates in every tenant
def _cluster_role(name: str, rules: list[dict]) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": rules}


def _binding(kind: str, name: str, role_kind: str, role: str, subjects: list[dict],
             namespace: str | None = None) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects}


def _group(name: str) -> dict:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name}


def _get_configmap_role(namespace: str, name: str, configmap: str) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
                       "resourceNames": [configmap]}]}


def bootstrap_policy_roles() -> list[dict]:
    """The ClusterRoles of the apiserver's bootstrap policy that the lab's bindings refer to, which the
    apiserver creates at start (post-start hook rbac/bootstrap-roles, pkg/registry/rbac/rest/storage_rbac.go;
    roles from plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go and controller_policy.go)."""
    return [
        _cluster_role("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                                        {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        _cluster_role("system:node-bootstrapper", [{"apiGroups": ["certificates.k8s.io"],
                                                    "resources": ["certificatesigningrequests"],
                                                    "verbs": ["create", "get", "list", "watch"]}]),
        _cluster_role("system:certificates.k8s.io:certificatesigningrequests:nodeclient", [
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/nodeclient"],
             "verbs": ["create"]}]),
        _cluster_role("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/selfnodeclient"],
             "verbs": ["create"]}]),
    ]


def seed_bootstrap_policy(store: ObjectStore) -> None:
    """Creates the bootstrap-policy ClusterRoles that are missing (the hook never overwrites edits)."""
    rtype = store.catalog.by_kind("rbac.authorization.k8s.io/v1", "ClusterRole")
    if rtype is None:
        return
    for role in bootstrap_policy_roles():
        if store.find(rtype, None, role["metadata"]["name"]) is None:
            store.put(role)


def kubeadm_bootstrap_rbac() -> list[dict]:
    """The RBAC objects `kubeadm init` creates for joining nodes, which Kamaji runs in each tenant
    (clastix/kamaji internal/resources/kubeadm_phases.go, PhaseBootstrapToken / PhaseUploadConfig*):
    cmd/kubeadm/app/phases/bootstraptoken/node/tlsbootstrap.go (kubeadm:kubelet-bootstrap,
    kubeadm:node-autoapprove-bootstrap, kubeadm:node-autoapprove-certificate-rotation), .../node/token.go
    (kubeadm:get-nodes), cmd/kubeadm/app/phases/bootstraptoken/clusterinfo/clusterinfo.go
    (kubeadm:bootstrap-signer-clusterinfo), cmd/kubeadm/app/phases/uploadconfig/uploadconfig.go
    (kubeadm:nodes-kubeadm-config) and cmd/kubeadm/app/phases/kubelet/config.go (kubeadm:kubelet-config).
    The ClusterRoles they bind that are not kubeadm's come from the apiserver (bootstrap_policy_roles)."""
    nodes = [_group(KUBEADM_NODE_TOKEN_GROUP), _group("system:nodes")]
    return [
        _cluster_role("kubeadm:get-nodes", [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]),
        _binding("ClusterRoleBinding", "kubeadm:kubelet-bootstrap", "ClusterRole", "system:node-bootstrapper",
                 [_group(KUBEADM_NODE_TOKEN_GROUP)]),
        _binding("ClusterRoleBinding", "kubeadm:node-autoapprove-bootstrap", "ClusterRole",
                 "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                 [_group(KUBEADM_NODE_TOKEN_GROUP)]),
        _binding("ClusterRoleBinding", "kubeadm:node-autoapprove-certificate-rotation", "ClusterRole",
                 "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [_group("system:nodes")]),
        _binding("ClusterRoleBinding", "kubeadm:get-nodes", "ClusterRole", "kubeadm:get-nodes",
                 [_group(KUBEADM_NODE_TOKEN_GROUP)]),
        _get_configmap_role("kube-public", "kubeadm:bootstrap-signer-clusterinfo", "cluster-info"),
        _binding("RoleBinding", "kubeadm:bootstrap-signer-clusterinfo", "Role",
                 "kubeadm:bootstrap-signer-clusterinfo",
                 [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ANONYMOUS_USER}],
                 "kube-public"),
        _get_configmap_role("kube-system", "kubeadm:nodes-kubeadm-config", "kubeadm-config"),
        _binding("RoleBinding", "kubeadm:nodes-kubeadm-config", "Role", "kubeadm:nodes-kubeadm-config", nodes,
                 "kube-system"),
        _get_configmap_role("kube-system", "kubeadm:kubelet-config", "kubelet-config"),
        _binding("RoleBinding", "kubeadm:kubelet-config", "Role", "kubeadm:kubelet-config", nodes, "kube-system"),
    ]


def seed_kubeadm_bootstrap_rbac(store: ObjectStore) -> None:
    for obj in kubeadm_bootstrap_rbac():
        store.put(obj)


# ---------------------------------------------------------------- the Node authorizer and NodeRestriction
NODES_GROUP = "system:nodes"
NODE_USER_PREFIX = "system:node:"


def node_name_of(identity: Identity) -> str | None:
    """The node a request comes from: user system:node:<name> in group system:nodes
    (pkg/auth/nodeidentifier/default.go NodeIdentity); None for anyone else."""
    if NODES_GROUP not in identity.groups or not identity.user.startswith(NODE_USER_PREFIX):
        return None
    return identity.user[len(NODE_USER_PREFIX):]


def node_authorizer_allows(attrs: Attributes) -> bool:
    """The part of the Node authorizer (plugin/pkg/auth/authorizer/node/node_authorizer.go) the lab's kubelets
    use: Node objects (authorizeNode: create/update/patch, left to NodeRestriction; get/list/watch of its own
    Node only; update/patch of nodes/status), its Lease in kube-node-lease (authorizeLease) and, from the static
    node rules (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go NodeRules), create/get/list/watch of
    certificatesigningrequests for certificate rotation. Everything else: no opinion (RBAC decides)."""
    node = node_name_of(attrs.identity)
    if not node or not attrs.resource_request:
        return False
    group, resource, sub, verb = attrs.api_group, attrs.resource, attrs.subresource, attrs.verb
    if group == "" and resource == "nodes":
        if sub == "":
            return verb in ("create", "update", "patch") or (verb in ("get", "list", "watch") and attrs.name == node)
        return sub == "status" and verb in ("update", "patch")
    if group == "coordination.k8s.io" and resource == "leases":
        return (verb in ("get", "create", "update", "patch", "delete") and attrs.namespace == "kube-node-lease"
                and (verb == "create" or attrs.name == node))
    if group == "certificates.k8s.io" and resource == "certificatesigningrequests" and not sub:
        return verb in ("create", "get", "list", "watch")
    return False


def node_restriction_error(identity: Identity, requested: str) -> str | None:
    """plugin/pkg/admission/noderestriction/admission.go admitNode: a node may create or modify only its own Node
    object; the message the 403 carries, or None."""
    node = node_name_of(identity)
    if node is None or requested == node:
        return None
    return f'node "{node}" is not allowed to modify node "{requested}"'


def has_rbac_types(catalog: ResourceCatalog) -> bool:
    return catalog.by_kind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") is not None
