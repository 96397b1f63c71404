"""deploy/kubernetes: the rendered manifests (`kubectl kustomize`) validate against Kubernetes' schemas, hang
together (the agent.yaml they ship, the probes, the Role's namespace, the mounts), and a tenant lifecycle runs
through the agent with its parent-cluster identity bound ONLY to the shipped Role, with RBAC enforced by the
lab's Kubernetes emulator (agentkube_lab/kube_rbac.py). Every request of that identity is recorded: one 403 fails
the test, and every verb the Role grants must have been used (a Role broader than the roles need fails too)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_harness import AgentThread, agent_config, job_done, wait_for

from agentkube.core.settings import load_settings
from agentkube_lab.kube_rbac import Attributes, Decision
from agentkube_lab.lab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZATION = REPO / "deploy" / "kubernetes"
# The Kubernetes minor whose schemas the manifests are checked against: the oldest parent the lab emulates
# (kube_emulator.py, git_version v1.33.4), so the manifests work on every parent from there on.
SCHEMA_VERSION = "1.33"
JOB_TIMEOUT = 300
SPEC = {"kubernetesVersion": "v1.34.4", "controlPlane": {"replicas": 1, "serviceType": "ClusterIP"},
        "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}],
        "baseline": {"cni": "calico", "podSecurity": "baseline"}}


# ------------------------------------------------------------------------------------------------ rendering
@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian's kubernetes-client package): cannot render deploy/kubernetes")
    out = subprocess.run([kubectl, "kustomize", str(KUSTOMIZATION)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, f"kubectl kustomize failed: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    """The one rendered object of `kind` (named `name`, or generated from it: name-<hash>)."""
    found = [d for d in docs if d["kind"] == kind and (
        name is None or d["metadata"]["name"] == name or d["metadata"]["name"].rsplit("-", 1)[0] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def config_file(docs: list[dict], key: str) -> dict:
    return yaml.safe_load(find(docs, "ConfigMap", "agentkube-config")["data"][key])


def group_vars(docs: list[dict]) -> dict:
    return yaml.safe_load(find(docs, "ConfigMap", "agentkube-inventory")["data"]["all.yml"])


def agent_container(docs: list[dict]) -> dict:
    return find(docs, "Deployment", "agentkube")["spec"]["template"]["spec"]["containers"][0]


def mounted_at(docs: list[dict], path: str) -> tuple[dict, dict]:
    """(volumeMount, volume) of the agent container that provides `path` (a file or a directory above it)."""
    pod = find(docs, "Deployment", "agentkube")["spec"]["template"]["spec"]
    for mount in agent_container(docs)["volumeMounts"]:
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return mount, next(v for v in pod["volumes"] if v["name"] == mount["name"])
    raise AssertionError(f"nothing is mounted at {path}")


# ------------------------------------------------------------------------------------------------ schemas
def test_the_rendered_manifests_validate_against_the_kubernetes_schemas(rendered) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="the kubernetes-validate package is not installed (the dev extra has it)")
    kinds = sorted(d["kind"] for d in rendered)
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "ConfigMap", "Secret",
            "NetworkPolicy"} <= set(kinds), kinds
    for doc in rendered:
        try:
            kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} is not a valid Kubernetes {SCHEMA_VERSION} "
                        f"object: {e.message} at {'/'.join(map(str, e.path))}")


def test_the_validation_catches_a_broken_manifest(rendered) -> None:
    """The schema check can fail: a Deployment with a string replica count and an unknown field is refused."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    broken = copy.deepcopy(find(rendered, "Deployment", "agentkube"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSION, strict=True)
    broken = copy.deepcopy(find(rendered, "Deployment", "agentkube"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSION, strict=True)


# ------------------------------------------------------------------------------------------------ consistency
def test_the_shipped_agent_configuration_matches_the_deployment_and_the_role(rendered, tmp_path) -> None:
    """The agent.yaml in the ConfigMap loads as the agent's settings, and what it names is what the Deployment
    mounts and probes, and where the Role grants."""
    config = config_file(rendered, "agent.yaml")
    token_path = config["fulcrum"]["token_file"]
    token = tmp_path / "token"
    token.write_text("t")
    settings = load_settings(overrides={**config, "fulcrum": {**config["fulcrum"], "token_file": str(token)}})
    deployment = find(rendered, "Deployment", "agentkube")
    pod = deployment["spec"]["template"]["spec"]
    container = agent_container(rendered)
    role, binding = find(rendered, "Role", "agentkube"), find(rendered, "RoleBinding", "agentkube")
    account = find(rendered, "ServiceAccount", "agentkube")

    assert deployment["spec"]["replicas"] == 2
    assert settings.leadership.mode == "lease" and settings.leadership.namespace == role["metadata"]["namespace"]
    assert container["args"][-2:] == ["--config", mounted_at(rendered, "/etc/agentkube/agent.yaml")[0]["mountPath"]]
    # probes on the port the agent serves them on, reachable from the kubelet
    port = next(p for p in container["ports"] if p["name"] == "health")
    assert settings.health.enabled and settings.health.port == port["containerPort"]
    assert settings.health.host == "0.0.0.0", "the kubelet probes the pod's address, not its loopback"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    # a stopping leader finishes its jobs before the kubelet kills it
    assert pod["terminationGracePeriodSeconds"] > settings.agent.shutdown_grace_s
    # files the configuration names are mounted from the right places
    assert mounted_at(rendered, token_path)[1]["secret"]["secretName"] == find(rendered, "Secret",
                                                                              "agentkube-fulcrum")["metadata"]["name"]
    assert mounted_at(rendered, str(settings.leadership.kubeconfig))[0]["subPath"] == "parent.kubeconfig"
    assert mounted_at(rendered, str(settings.agent.state_dir))[1].get("emptyDir") is not None
    inventory_volume = mounted_at(rendered, str(settings.runner.inventory))[1]
    assert {"key": "all.yml", "path": "group_vars/all.yml"} in inventory_volume["configMap"]["items"]
    # the playbooks work in the Role's namespace, through the same kubeconfig, creating no namespace
    gv = group_vars(rendered)
    assert gv["kamaji_tcp_namespace"] == role["metadata"]["namespace"]
    assert gv["kamaji_tcp_create_namespace"] is False
    assert gv["kamaji_tcp_kubeconfig"] == str(settings.leadership.kubeconfig)
    proxmox_file = re.fullmatch(r"\{\{ lookup\('ansible.builtin.file', '([^']+)'\) \}\}",
                                gv["proxmox_vm_api_token_secret"])
    assert proxmox_file is not None, "the Proxmox token secret is read from the mounted Secret"
    assert mounted_at(rendered, proxmox_file.group(1))[1]["secret"]["secretName"] == \
        find(rendered, "Secret", "agentkube-proxmox")["metadata"]["name"]
    assert mounted_at(rendered, gv["ansible_ssh_private_key_file"])[1]["secret"]["secretName"] == \
        find(rendered, "Secret", "agentkube-worker-ssh")["metadata"]["name"]
    # the kubeconfig is the ServiceAccount's own token, and the Role is bound to that ServiceAccount only
    kubeconfig = config_file(rendered, "parent.kubeconfig")
    assert kubeconfig["users"][0]["user"] == {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agentkube"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert not [d for d in rendered if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    # no privilege
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}


def test_the_network_policy_admits_only_the_health_port(rendered) -> None:
    policy = find(rendered, "NetworkPolicy", "agentkube")
    container = agent_container(rendered)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        find(rendered, "Deployment", "agentkube")["spec"]["template"]["metadata"]["labels"].items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    health = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [health]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, 8006, 22} <= egress_ports


def test_the_placeholder_secrets_are_obviously_fake(rendered) -> None:
    import base64

    for name in ("agentkube-fulcrum", "agentkube-proxmox", "agentkube-worker-ssh"):
        for value in find(rendered, "Secret", name)["data"].values():
            assert "PLACEHOLDER" in base64.b64decode(value).decode()


# ------------------------------------------------------------------------------------------------ the lifecycle
class IdentityRecorder:
    """Wraps the emulator's RBAC authorizer: every decision about one user's requests, allowed or not."""

    def __init__(self, authorizer: Any, user: str):
        self.user = user
        self.allowed: set[tuple[str, str, str]] = set()   # (api group, resource, verb)
        self.denied: list[str] = []
        self._lock = threading.Lock()
        self._authorize = authorizer.authorize
        authorizer.authorize = self.authorize

    def authorize(self, attrs: Attributes) -> Decision:
        decision = self._authorize(attrs)
        if attrs.identity.user == self.user:
            with self._lock:
                if not decision.allowed:
                    self.denied.append(f"{attrs.verb} {attrs.path} ({decision.reason or 'no rule'})")
                elif attrs.resource_request:
                    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
                    self.allowed.add((attrs.api_group, resource, attrs.verb))
        return decision


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def bind_the_shipped_role(lab: Lab, docs: list[dict], secrets_dir: Path) -> tuple[str, str]:
    """Loads the shipped Role and RoleBinding into the emulator (in the lab's tenants namespace, created as an
    operator would), and points the lab's parent kubeconfig (the one the agent's Lease and the playbooks use) at
    the ServiceAccount the RoleBinding names: the shipped parent.kubeconfig, with the lab's address, CA and a
    token file of that identity. Returns (user, namespace)."""
    namespace = lab.group_vars()["kamaji_tcp_namespace"]
    lab.kube.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for kind in ("Role", "RoleBinding"):
        obj = copy.deepcopy(find(docs, kind, "agentkube"))
        obj["metadata"]["namespace"] = namespace
        lab.kube.put_object(obj)
    subject = find(docs, "RoleBinding", "agentkube")["subjects"][0]
    sa_ns, sa_name = subject["namespace"], subject["name"]
    user = f"system:serviceaccount:{sa_ns}:{sa_name}"
    token = lab.kube.add_identity(user, ("system:serviceaccounts", f"system:serviceaccounts:{sa_ns}"))
    write_private(secrets_dir / "token", token)
    kubeconfig = config_file(docs, "parent.kubeconfig")
    kubeconfig["clusters"][0]["cluster"].update(server=lab.kube.url, **{"certificate-authority": str(lab.kube.ca_file)})
    kubeconfig["users"][0]["user"] = {"tokenFile": str(secrets_dir / "token")}
    write_private(lab.parent_kubeconfig, yaml.safe_dump(kubeconfig))
    return user, namespace


def finish(lab: Lab, job: dict) -> dict:
    wait_for(lambda: job_done(lab, job["id"]), JOB_TIMEOUT, interval=0.5, what=f"job {job['action']}")
    return lab.fulcrum.get_job(job["id"])


def test_a_lifecycle_runs_with_the_agent_bound_only_to_the_shipped_role(rendered, tmp_path) -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    role = find(rendered, "Role", "agentkube")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert not any(rule.get("resourceNames") or "*" in rule["verbs"] + rule["resources"] + rule["apiGroups"]
                   for rule in role["rules"])
    secrets_dir = tmp_path / "sa"
    secrets_dir.mkdir(mode=0o700)
    shipped = config_file(rendered, "agent.yaml")
    with Lab(tmp_path / "lab", emulated_workers=False, tcp_ready_delay=0.2,
             operator_vars={"kamaji_tcp_create_namespace": False}) as lab:
        user, namespace = bind_the_shipped_role(lab, rendered, secrets_dir)
        recorder = IdentityRecorder(lab.kube.server.authorizer, user)
        cfg = agent_config(lab)
        cfg["runner"]["actions"] = {}  # the real action playbooks
        cfg["leadership"] = {**shipped["leadership"], "kubeconfig": str(lab.parent_kubeconfig),
                             "namespace": namespace}
        cfg["metrics"] = {"interval_s": 3600.0}  # no collection of its own: the test runs one (below)
        assert lab.catalog is not None
        with AgentThread(load_settings(overrides=cfg)) as running:
            svc = lab.fulcrum.create_service("Bound", lab.catalog.service_type_id, lab.catalog.group_ids[0],
                                             lab.catalog.agent_id, SPEC)
            jobs = [finish(lab, next(j for j in lab.fulcrum.jobs if j["serviceId"] == svc["id"]))]
            # one collection of the agent's metrics loop with the tenant Ready: lists the TCPs and the admin
            # kubeconfig Secrets on the parent, then reads the tenant with its admin kubeconfig
            assert running.agent.metrics is not None
            collected = running.agent.metrics.run_cycle()
            leases = lab.kube.list("coordination.k8s.io/v1", "Lease", namespace)
            for action in ("start", "stop", "delete"):
                jobs.append(finish(lab, lab.fulcrum.request_action(svc["id"], action)))
        leftovers = lab.leftovers()

        # a request outside the Role is refused: enforcement is on for this identity
        api = config.new_client_from_config(str(lab.parent_kubeconfig))
        core = client.CoreV1Api(api)
        outside = {
            "create a namespace": lambda: core.create_namespace({"metadata": {"name": "agentkube-probe"}}),
            "list Secrets in kube-system": lambda: core.list_namespaced_secret("kube-system"),
            "delete a Secret in the tenants namespace": lambda: core.delete_namespaced_secret("x", namespace),
            "create a ConfigMap in the tenants namespace": lambda: core.create_namespaced_config_map(
                namespace, {"metadata": {"name": "agentkube-probe"}}),
        }
        denied_before = list(recorder.denied)
        refused = {}
        for what, call in outside.items():
            with pytest.raises(ApiException) as e:
                call()
            refused[what] = e.value.status
        api.close()

    assert [(j["action"], j["status"], j.get("errorMessage")) for j in jobs] == [
        (a, "Completed", None) for a in ("create", "start", "stop", "delete")], jobs
    assert leftovers == []
    assert denied_before == [], f"the shipped Role refused requests of the agent's identity: {denied_before}"
    assert refused == dict.fromkeys(outside, 403)
    # the agent led through the Lease the Role covers, and the metrics collection read everything it needed
    assert [lease["spec"].get("holderIdentity") for lease in leases] == [running.agent.leadership.identity]
    assert collected is not None and collected.ok and collected.kamaji_ok, collected
    assert collected.problems == [] and collected.entries > 0, collected
    # the identity did everything through the Role, and the Role grants nothing the lifecycle did not use
    assert recorder.allowed == granted, (
        f"granted but unused: {sorted(granted - recorder.allowed)}; used beyond the Role (via discovery or a "
        f"default binding): {sorted(recorder.allowed - granted)}")
