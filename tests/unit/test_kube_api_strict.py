"""The lab Kubernetes API as strict as kube-apiserver where the product relies on it: PodDisruptionBudget status
and evictions (429 with the DisruptionBudget cause), graceful pod termination, RBAC (roles, bindings, verbs,
subresources, resourceNames, apiGroups, system:masters, bootstrap tokens, the agent's own identity), Secret
stringData, and garbage collection of owned objects. Through the official `kubernetes` client over HTTPS."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from unit_support import wait_for

from agentkube_lab.kube_disruption import DisruptionController, scaled_value
from agentkube_lab.kube_emulator import KubeEmulator
from agentkube_lab.kube_rbac import Identity, RbacAuthorizer, bootstrap_identity, request_attributes, rule_allows
from agentkube_lab.kube_resources import CORE_TYPES, TENANT_EXTRA_TYPES, ResourceCatalog
from agentkube_lab.kube_store import ObjectStore
from agentkube_lab.kube_tenant import TenantApi

NS = "default"


@pytest.fixture(scope="module")
def tenant(tmp_path_factory) -> Iterator[TenantApi]:
    t = TenantApi(tmp_path_factory.mktemp("tenant"), "tenants", "strict", "v1.35.7")
    t.start()
    yield t
    t.stop()


@pytest.fixture
def core(tenant: TenantApi, tmp_path: Path) -> client.CoreV1Api:
    (tmp_path / "admin.conf").write_text(tenant.kubeconfig)
    return client.CoreV1Api(config.new_client_from_config(str(tmp_path / "admin.conf")))


@pytest.fixture
def policy(core: client.CoreV1Api) -> client.PolicyV1Api:
    return client.PolicyV1Api(core.api_client)


def pod(name: str, labels: dict | None = None, node: str = "w1", ready: bool = True, grace: int | None = 0,
        owner: dict | None = None, namespace: str = NS) -> dict:
    spec: dict = {"nodeName": node, "containers": [{"name": "main", "image": "pause"}]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    meta: dict = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pdb(name: str, app: str, namespace: str = NS, **spec) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec}}


def evict(core: client.CoreV1Api, name: str, namespace: str = NS, **options) -> None:
    body: dict = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
    if options:
        body["deleteOptions"] = options
    core.create_namespaced_pod_eviction(name, namespace, body)


def status_of(error: ApiException) -> dict:
    return json.loads(error.body)


@pytest.fixture
def ns(tenant: TenantApi, request) -> str:
    """A fresh namespace per test (the tenant is shared by the module)."""
    name = request.node.name.replace("_", "-")[:50].strip("-").lower()
    tenant.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


# ---------------------------------------------------------------- PodDisruptionBudgets
def test_pdb_status_is_computed_from_the_matching_ready_pods(tenant, policy, ns) -> None:
    for i in range(3):
        tenant.store.put(pod(f"web-{i}", {"app": "web"}, ready=i < 2, namespace=ns))
    tenant.store.put(pod("other", {"app": "db"}, namespace=ns))
    policy.create_namespaced_pod_disruption_budget(ns, pdb("web", "web", ns, minAvailable=1))

    status = policy.read_namespaced_pod_disruption_budget("web", ns).status
    assert (status.current_healthy, status.desired_healthy, status.expected_pods, status.disruptions_allowed) == (
        2, 1, 3, 1)
    assert status.observed_generation == 1
    assert [(c.type, c.status, c.reason) for c in status.conditions] == [("DisruptionAllowed", "True",
                                                                          "SufficientPods")]


def test_an_eviction_that_would_violate_a_budget_answers_429_with_the_budget_cause(tenant, core, policy, ns) -> None:
    for i in range(2):
        tenant.store.put(pod(f"web-{i}", {"app": "web"}, namespace=ns))
    policy.create_namespaced_pod_disruption_budget(ns, pdb("web-pdb", "web", ns, minAvailable=2))

    with pytest.raises(ApiException) as refused:
        evict(core, "web-0", ns)

    assert refused.value.status == 429
    body = status_of(refused.value)
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["reason"] == "TooManyRequests"
    assert body["details"]["causes"] == [{"reason": "DisruptionBudget",
                                          "message": "The disruption budget web-pdb needs 2 healthy pods and has 2 "
                                                     "currently"}]
    assert core.read_namespaced_pod("web-0", ns).metadata.deletion_timestamp is None  # nothing was touched


def test_an_allowed_eviction_spends_the_budget_until_it_is_refused(tenant, core, policy, ns) -> None:
    for i in range(3):
        tenant.store.put(pod(f"web-{i}", {"app": "web"}, grace=5, namespace=ns))
    policy.create_namespaced_pod_disruption_budget(ns, pdb("web", "web", ns, maxUnavailable=1))
    # maxUnavailable counts against the controllers' scale: these pods have none, so expectedPods is 0
    assert policy.read_namespaced_pod_disruption_budget("web", ns).status.disruptions_allowed == 0
    policy.patch_namespaced_pod_disruption_budget("web", ns, {"spec": {"maxUnavailable": None, "minAvailable": 2}})

    evict(core, "web-0", ns)

    status = policy.read_namespaced_pod_disruption_budget("web", ns).status
    assert (status.current_healthy, status.disruptions_allowed) == (2, 0)
    assert core.read_namespaced_pod("web-0", ns).metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as refused:
        evict(core, "web-1", ns)
    assert refused.value.status == 429


def test_max_unavailable_counts_against_the_controllers_scale(tenant, core, policy, ns) -> None:
    apps = client.AppsV1Api(core.api_client)
    rs = apps.create_namespaced_replica_set(ns, {
        "metadata": {"name": "web-rs"}, "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                                                 "template": {"metadata": {"labels": {"app": "web"}},
                                                              "spec": {"containers": [{"name": "c",
                                                                                       "image": "pause"}]}}}})
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-rs", "uid": rs.metadata.uid,
             "controller": True}
    for i in range(3):
        tenant.store.put(pod(f"web-{i}", {"app": "web"}, owner=owner, namespace=ns))
    policy.create_namespaced_pod_disruption_budget(ns, pdb("web", "web", ns, maxUnavailable="25%"))

    status = policy.read_namespaced_pod_disruption_budget("web", ns).status
    # expected 4 (the ReplicaSet's replicas), maxUnavailable ceil(25% of 4) = 1, desired 3, healthy 3
    assert (status.expected_pods, status.desired_healthy, status.current_healthy, status.disruptions_allowed) == (
        4, 3, 3, 0)


def test_a_budget_whose_controller_is_missing_fails_safe(tenant, policy, ns) -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "gone", "uid": "0000", "controller": True}
    for i in range(3):
        tenant.store.put(pod(f"web-{i}", {"app": "web"}, owner=owner, namespace=ns))
    policy.create_namespaced_pod_disruption_budget(ns, pdb("web", "web", ns, maxUnavailable=1))

    status = policy.read_namespaced_pod_disruption_budget("web", ns).status
    assert status.disruptions_allowed == 0
    assert [(c.status, c.reason, c.message) for c in status.conditions] == [
        ("False", "SyncFailed", 'found no controllers for pod "web-0"')]


def test_unready_and_terminal_pods_are_evicted_without_spending_the_budget(tenant, core, policy, ns) -> None:
    for i in range(2):
        tenant.store.put(pod(f"web-{i}", {"app": "web"}, namespace=ns))
    tenant.store.put(pod("web-unready", {"app": "web"}, ready=False, namespace=ns))
    done = pod("web-done", {"app": "web"}, namespace=ns)
    done["status"]["phase"] = "Succeeded"
    tenant.store.put(done)
    policy.create_namespaced_pod_disruption_budget(ns, pdb("web", "web", ns, minAvailable=2))

    evict(core, "web-unready", ns)
    evict(core, "web-done", ns)

    names = {p.metadata.name for p in core.list_namespaced_pod(ns).items}
    assert names == {"web-0", "web-1"}
    assert policy.read_namespaced_pod_disruption_budget("web", ns).status.disruptions_allowed == 0


def test_a_pod_under_two_budgets_cannot_be_evicted(tenant, core, policy, ns) -> None:
    tenant.store.put(pod("web-0", {"app": "web"}, namespace=ns))
    policy.create_namespaced_pod_disruption_budget(ns, pdb("a", "web", ns, minAvailable=0))
    policy.create_namespaced_pod_disruption_budget(ns, pdb("b", "web", ns, minAvailable=0))

    with pytest.raises(ApiException) as refused:
        evict(core, "web-0", ns)

    assert refused.value.status == 500
    assert "more than one PodDisruptionBudget" in status_of(refused.value)["message"]


def test_a_budget_not_yet_observed_is_still_being_processed(tenant, ns) -> None:
    store = ObjectStore(ResourceCatalog(CORE_TYPES + TENANT_EXTRA_TYPES))  # no disruption controller attached
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    store.put(pod("web-0", {"app": "web"}))
    store.put(pdb("web", "web", minAvailable=0))
    from agentkube_lab.kube_disruption import evict as evict_in_store
    from agentkube_lab.kube_store import ApiError

    pods = store.resolve("v1", "Pod")
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web-0"}}
    with pytest.raises(ApiError) as refused:
        evict_in_store(store, pods, "default", "web-0", body)
    assert refused.value.code == 429 and refused.value.details["retryAfterSeconds"] == 10
    assert "web is still being processed" in refused.value.details["causes"][0]["message"]
    DisruptionController(store).sync(store.list(store.resolve("policy/v1", "PodDisruptionBudget"))[0][0])
    assert evict_in_store(store, pods, "default", "web-0", body)[0] == 201


def test_scaled_values_round_up_like_intstr() -> None:
    assert [scaled_value(2, 10), scaled_value("25%", 3), scaled_value("50%", 5), scaled_value("0%", 4)] == [2, 1, 3, 0]
    with pytest.raises(ValueError, match="invalid value"):
        scaled_value("25", 4)


# ---------------------------------------------------------------- graceful termination
def test_a_deleted_pod_is_terminating_through_its_grace_period(tenant, core, ns) -> None:
    tenant.store.put(pod("slow", grace=1, namespace=ns))
    tenant.store.put(pod("unscheduled", node="", grace=30, namespace=ns))

    core.delete_namespaced_pod("slow", ns)
    core.delete_namespaced_pod("unscheduled", ns)

    terminating = core.read_namespaced_pod("slow", ns)
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 1
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod("unscheduled", ns)  # a pod bound to no node goes at once
    assert gone.value.status == 404
    wait_for(lambda: not core.list_namespaced_pod(ns, field_selector="metadata.name=slow").items)


def test_the_default_grace_period_is_30_seconds_and_can_only_be_shortened(tenant, core, ns) -> None:
    tenant.store.put(pod("long", grace=None, namespace=ns))
    assert core.read_namespaced_pod("long", ns).spec.termination_grace_period_seconds == 30

    core.delete_namespaced_pod("long", ns)
    assert core.read_namespaced_pod("long", ns).metadata.deletion_grace_period_seconds == 30
    core.delete_namespaced_pod("long", ns, grace_period_seconds=60)  # longer: ignored
    assert core.read_namespaced_pod("long", ns).metadata.deletion_grace_period_seconds == 30
    core.delete_namespaced_pod("long", ns, grace_period_seconds=0)  # force

    assert not core.list_namespaced_pod(ns).items


# ---------------------------------------------------------------- Secrets
def test_string_data_is_merged_into_data_and_never_stored(core, ns) -> None:
    created = core.create_namespaced_secret(ns, {
        "metadata": {"name": "s"}, "data": {"a": base64.b64encode(b"old").decode(), "b": "YmJi"},
        "stringData": {"a": "new", "c": "ccc"}})

    assert created.string_data is None
    decoded = {k: base64.b64decode(v).decode() for k, v in created.data.items()}
    assert decoded == {"a": "new", "b": "bbb", "c": "ccc"}
    patched = core.patch_namespaced_secret("s", ns, {"stringData": {"b": "patched"}})
    assert base64.b64decode(patched.data["b"]).decode() == "patched" and patched.string_data is None
    with pytest.raises(ApiException) as bad:
        core.create_namespaced_secret(ns, {"metadata": {"name": "bad"}, "data": {"x": "not base64!"}})
    assert bad.value.status == 400


# ---------------------------------------------------------------- garbage collection
def test_dependents_go_with_their_owner_unless_orphaned_or_owned_elsewhere(tenant, core, ns) -> None:
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    other = core.create_namespaced_config_map(ns, {"metadata": {"name": "other-owner"}})

    def ref(cm) -> dict:
        return {"apiVersion": "v1", "kind": "ConfigMap", "name": cm.metadata.name, "uid": cm.metadata.uid}

    core.create_namespaced_config_map(ns, {"metadata": {"name": "dep", "ownerReferences": [ref(owner)]}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "shared",
                                                        "ownerReferences": [ref(owner), ref(other)]}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "orphan", "ownerReferences": [ref(other)]}})

    core.delete_namespaced_config_map("owner", ns)
    core.delete_namespaced_config_map("other-owner", ns, propagation_policy="Orphan")

    names = {c.metadata.name for c in core.list_namespaced_config_map(ns).items}
    assert names == {"shared", "orphan"}
    assert core.read_namespaced_config_map("shared", ns).metadata.owner_references is None
    assert core.read_namespaced_config_map("orphan", ns).metadata.owner_references is None


# ---------------------------------------------------------------- RBAC
def test_rbac_rules_match_verbs_groups_resources_subresources_and_names() -> None:
    who = Identity("u", ("system:authenticated",))

    def allows(rule: dict, method: str, path: str, query: dict | None = None) -> bool:
        return rule_allows(request_attributes(who, method, path, query or {}), rule)

    get_cm = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["one"]}
    assert allows(get_cm, "GET", "/api/v1/namespaces/x/configmaps/one")
    assert not allows(get_cm, "GET", "/api/v1/namespaces/x/configmaps/two")
    assert not allows(get_cm, "GET", "/api/v1/namespaces/x/configmaps")  # list is another verb
    evictions = {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}
    assert allows(evictions, "POST", "/api/v1/namespaces/x/pods/p/eviction")
    assert not allows(evictions, "DELETE", "/api/v1/namespaces/x/pods/p")
    any_status = {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}
    assert allows(any_status, "PATCH", "/apis/apps/v1/namespaces/x/deployments/d/status")
    assert not allows(any_status, "PATCH", "/apis/apps/v1/namespaces/x/deployments/d")
    tcps = {"apiGroups": ["kamaji.clastix.io"], "resources": ["tenantcontrolplanes"], "verbs": ["list", "watch"]}
    assert allows(tcps, "GET", "/apis/kamaji.clastix.io/v1alpha1/tenantcontrolplanes", {"watch": "1"})
    assert not allows({**tcps, "verbs": ["watch"]}, "GET", "/apis/kamaji.clastix.io/v1alpha1/tenantcontrolplanes")
    assert not allows(tcps, "GET", "/apis/other.io/v1alpha1/tenantcontrolplanes")
    assert allows({"verbs": ["get"], "nonResourceURLs": ["/metrics*"]}, "GET", "/metrics/cadvisor")


def test_bindings_grant_in_their_scope_and_a_missing_role_is_named() -> None:
    store = ObjectStore(ResourceCatalog(CORE_TYPES + TENANT_EXTRA_TYPES))
    for name in ("a", "b"):
        store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    store.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "reader"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    store.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "r", "namespace": "a"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "agent"}]})
    store.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "broken", "namespace": "b"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "missing"},
               "subjects": [{"kind": "Group", "name": "g"}]})
    rbac = RbacAuthorizer(store)
    sa = Identity("system:serviceaccount:a:agent", ("system:serviceaccounts", "system:authenticated"))

    def decide(who: Identity, path: str):
        return rbac.authorize(request_attributes(who, "GET", path, {}))

    assert decide(sa, "/api/v1/namespaces/a/pods").allowed
    assert not decide(sa, "/api/v1/namespaces/b/pods").allowed
    assert not decide(sa, "/api/v1/pods").allowed  # a RoleBinding never grants cluster-wide
    assert decide(Identity("x", ("system:masters",)), "/api/v1/secrets").allowed
    denied = decide(Identity("y", ("g",)), "/api/v1/namespaces/b/pods")
    assert not denied.allowed and denied.reason == 'RBAC: role.rbac.authorization.k8s.io "missing" not found'


def test_bootstrap_token_identity_has_the_extra_groups_and_refuses_bad_ones() -> None:
    def secret(**fields: str) -> dict:
        return {"data": {k.replace("_", "-"): base64.b64encode(v.encode()).decode() for k, v in fields.items()}}

    identity = bootstrap_identity(secret(token_id="abcdef",
                                         auth_extra_groups="system:bootstrappers:kubeadm:default-node-token"))
    assert identity == Identity("system:bootstrap:abcdef",
                                ("system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token"))
    assert bootstrap_identity(secret(token_id="abcdef", auth_extra_groups="system:masters")) is None


def _bootstrap_token(tenant: TenantApi, token_id: str, secret: str, groups: str | None) -> str:
    data = {"token-id": token_id, "token-secret": secret, "usage-bootstrap-authentication": "true"}
    if groups:
        data["auth-extra-groups"] = groups
    tenant.store.put({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                      "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
                      "stringData": data})
    return f"{token_id}.{secret}"


def test_bootstrap_tokens_get_only_what_kubeadm_grants_them(tenant, tmp_path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(tenant.ca_pem)
    joiner = _bootstrap_token(tenant, "join01", "0123456789abcdef", "system:bootstrappers:kubeadm:default-node-token")
    plain = _bootstrap_token(tenant, "plain1", "0123456789abcdef", None)

    def call(token: str, method: str, path: str, body: dict | None = None) -> requests.Response:
        return requests.request(method, f"{tenant.url}{path}", json=body, verify=ca, timeout=5,
                                headers={"Authorization": f"Bearer {token}"})

    kubelet_config = "/api/v1/namespaces/kube-system/configmaps/kubelet-config"
    assert call(joiner, "GET", kubelet_config).status_code in (200, 404)  # allowed (present once Kamaji wrote it)
    assert call(plain, "GET", kubelet_config).status_code == 403
    assert call(joiner, "GET", "/api/v1/namespaces/kube-system/configmaps/other").status_code == 403
    assert call(joiner, "GET", "/api/v1/namespaces/kube-system/secrets").status_code == 403
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "joined"}}
    denied = call(plain, "POST", "/api/v1/nodes", node)
    assert denied.status_code == 403
    assert denied.json()["message"] == ('nodes is forbidden: User "system:bootstrap:plain1" cannot create resource '
                                        '"nodes" in API group "" at the cluster scope')
    # a bootstrap token registers no Node: the kubelet's TLS bootstrap gets a certificate through a CSR and the
    # Node is created with it (tests/unit/test_kube_csr.py)
    assert call(joiner, "POST", "/api/v1/nodes", node).status_code == 403
    assert call(joiner, "GET", "/api/v1/nodes/joined").status_code == 404  # kubeadm:get-nodes: allowed, absent


def test_the_agents_identity_in_the_parent_has_exactly_what_its_role_grants(tmp_path) -> None:
    with KubeEmulator(tmp_path / "kube", ready_delay=0.1, validate_schema=False) as emu:
        emu.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenants"}})
        user = "system:serviceaccount:agentkube:agent"
        kubeconfig = tmp_path / "agent.conf"
        kubeconfig.write_text(emu.identity_kubeconfig(user, ("system:serviceaccounts",
                                                             "system:serviceaccounts:agentkube")))
        agent = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        with pytest.raises(ApiException) as before:
            agent.list_namespaced_secret("tenants")
        assert before.value.status == 403
        emu.put_object({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": {"name": "agent", "namespace": "tenants"},
                        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]})
        emu.put_object({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": {"name": "agent", "namespace": "tenants"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
                        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "agentkube"}]})

        assert agent.list_namespaced_secret("tenants").items == []
        with pytest.raises(ApiException) as other_ns:
            agent.list_namespaced_secret("default")
        with pytest.raises(ApiException) as write:
            agent.create_namespaced_secret("tenants", {"metadata": {"name": "x"}})
        assert (other_ns.value.status, write.value.status) == (403, 403)
        assert json.loads(write.value.body)["message"] == (
            f'secrets is forbidden: User "{user}" cannot create resource "secrets" in API group "" in the '
            'namespace "tenants"')


def test_the_emulator_process_writes_an_rbac_bound_identity_kubeconfig(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    pidfile = tmp_path / "pid"
    subprocess.run([sys.executable, "-m", "agentkube_lab.kube_emulator_main", "--state-dir", str(tmp_path / "s"),
                    "--kubeconfig", str(tmp_path / "admin"), "--pidfile", str(pidfile), "--daemon",
                    "--identity-kubeconfig", str(tmp_path / "agent")], check=True, timeout=90)
    try:
        agent = client.CoreV1Api(config.new_client_from_config(str(tmp_path / "agent")))
        admin = client.CoreV1Api(config.new_client_from_config(str(tmp_path / "admin")))
        assert (tmp_path / "agent").stat().st_mode & 0o077 == 0
        with pytest.raises(ApiException) as denied:
            agent.list_namespaced_secret("default")
        assert denied.value.status == 403
        assert 'User "system:serviceaccount:agentkube:agentkube" cannot list' in status_of(denied.value)["message"]
        assert admin.list_namespaced_secret("default").items == []
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
