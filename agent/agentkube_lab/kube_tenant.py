"""One tenant cluster's API server, as Kamaji runs it for a TenantControlPlane: its own CA and TLS
certificate, its own object store seeded with what `kubeadm join` and the agent's metrics read
(kube-public/cluster-info signed for bootstrap tokens, the default namespaces and service accounts), the
kube-system/kubeadm-config and kubelet-config Kamaji uploads (built as Kamaji builds them, see
kubelet_configuration()), admin.conf/super-admin.conf with client certificates of the tenant CA (mutual TLS),
bootstrap-token authentication, the CSR approver and signer of its controller manager (kube_certificates), and
helpers to emulate what kubelets would register (Nodes, Pods): the narrow seam where no real kubelet runs."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import tempfile
import threading
import uuid
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agentkube_lab.certs import LabCA, issue_client_cert
from agentkube_lab.kube_certificates import CsrControllers
from agentkube_lab.kube_http import KubeApiServer
from agentkube_lab.kube_kubeconfig import kubeconfig_yaml
from agentkube_lab.kube_patch import PatchError, json_patch
from agentkube_lab.kube_rbac import secret_field, seed_kubeadm_bootstrap_rbac
from agentkube_lab.kube_resources import CORE_TYPES, TENANT_EXTRA_TYPES, ResourceCatalog, ResourceType
from agentkube_lab.kube_store import ObjectStore

log = logging.getLogger(__name__)

BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"  # noqa: S105 - a Secret type, not a secret
CLUSTER_INFO = ("kube-public", "cluster-info")
KUBELET_CONFIG_MAP = "kubelet-config"  # kubeadmconstants.KubeletBaseConfigurationConfigMap (Kubernetes >= 1.24)
ADMIN_USER, CLUSTER_ADMINS_GROUP = "kubernetes-admin", "kubeadm:cluster-admins"
SUPER_ADMIN_USER, MASTERS_GROUP = "kubernetes-super-admin", "system:masters"

# kubelet.config.k8s.io/v1beta1 KubeletConfiguration after SetDefaults_KubeletConfiguration
# (kubernetes/kubernetes pkg/kubelet/apis/config/v1beta1/defaults.go), as its JSON encoding shows it (omitempty
# zero values dropped). Feature-gated defaults (crashLoopBackOff.maxContainerRestartPeriod,
# imagePullCredentialsVerificationPolicy) are left out. cgroupDriver ("cgroupfs" here) and resolvConf are
# overwritten by Kamaji below.
KUBELET_V1BETA1_DEFAULTS: dict = {
    "enableServer": True, "syncFrequency": "1m0s", "fileCheckFrequency": "20s", "httpCheckFrequency": "20s",
    "address": "0.0.0.0", "port": 10250,
    "authentication": {"x509": {}, "webhook": {"enabled": True, "cacheTTL": "2m0s"},
                       "anonymous": {"enabled": False}},
    "authorization": {"mode": "Webhook",
                      "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s"}},
    "registryPullQPS": 5, "registryBurst": 10, "eventRecordQPS": 50, "eventBurst": 100,
    "enableDebuggingHandlers": True, "healthzPort": 10248, "healthzBindAddress": "127.0.0.1", "oomScoreAdj": -999,
    "streamingConnectionIdleTimeout": "4h0m0s", "nodeStatusUpdateFrequency": "10s",
    "nodeStatusReportFrequency": "5m0s", "nodeLeaseDurationSeconds": 40, "imageMinimumGCAge": "2m0s",
    "imageMaximumGCAge": "0s", "imageGCHighThresholdPercent": 85, "imageGCLowThresholdPercent": 80,
    "volumeStatsAggPeriod": "1m0s", "cgroupsPerQOS": True, "cgroupDriver": "cgroupfs", "cpuManagerPolicy": "none",
    "cpuManagerReconcilePeriod": "10s", "memoryManagerPolicy": "None", "topologyManagerPolicy": "none",
    "topologyManagerScope": "container", "runtimeRequestTimeout": "2m0s", "hairpinMode": "promiscuous-bridge",
    "maxPods": 110, "podPidsLimit": -1, "resolvConf": "/etc/resolv.conf", "cpuCFSQuota": True,
    "cpuCFSQuotaPeriod": "100ms", "nodeStatusMaxImages": 50, "maxOpenFiles": 1000000,
    "contentType": "application/vnd.kubernetes.protobuf", "kubeAPIQPS": 50, "kubeAPIBurst": 100,
    "serializeImagePulls": True, "evictionPressureTransitionPeriod": "5m0s", "mergeDefaultEvictionSettings": False,
    "enableControllerAttachDetach": True, "makeIPTablesUtilChains": True, "iptablesMasqueradeBit": 14,
    "iptablesDropBit": 15, "failSwapOn": True, "memorySwap": {}, "containerLogMaxSize": "10Mi",
    "containerLogMaxFiles": 5, "containerLogMaxWorkers": 1, "containerLogMonitorInterval": "10s",
    "configMapAndSecretChangeDetectionStrategy": "Watch", "enforceNodeAllocatable": ["pods"],
    "volumePluginDir": "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/",
    "logging": {"format": "text", "flushFrequency": "5s", "verbosity": 0,
                "options": {"text": {"infoBufferSize": "0"}, "json": {"infoBufferSize": "0"}}},
    "enableSystemLogHandler": True, "shutdownGracePeriod": "0s", "shutdownGracePeriodCriticalPods": "0s",
    "enableProfilingHandler": True, "enableDebugFlagsHandler": True, "seccompDefault": False,
    "failCgroupV1": False, "memoryThrottlingFactor": 0.9, "registerNode": True,
    "localStorageCapacityIsolation": True, "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
    "podLogsDir": "/var/log/pods", "podHousekeepingPeriod": "2s", "crashLoopBackOff": {},
}


def kubelet_configuration(kubelet_spec: dict | None, cluster_domain: str, dns_service_ips: list[str]) -> dict:
    """The KubeletConfiguration Kamaji uploads as kube-system/kubelet-config, built in the order of
    clastix/kamaji internal/kubeadm/uploadconfig.go getKubeletConfigmapContent:
    v1beta1 defaults; apiVersion/kind; authentication.x509.clientCAFile; cgroupDriver := spec.kubernetes.kubelet.
    cgroupfs (the deprecated field; Kamaji assigns it even when empty, and the JSON encoding omits an empty
    cgroupDriver, so the key is ABSENT when cgroupfs is unset); clusterDNS; clusterDomain; rotateCertificates;
    staticPodPath; resolvConf removed; then spec.kubernetes.kubelet.configurationJSONPatches applied to that JSON
    (evanphx/json-patch v5, strict here: raises PatchError like Kamaji's "unable to apply JSON patching")."""
    spec = kubelet_spec or {}
    config = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
              **copy.deepcopy(KUBELET_V1BETA1_DEFAULTS)}
    config["authentication"]["x509"]["clientCAFile"] = "/etc/kubernetes/pki/ca.crt"
    cgroup_driver = spec.get("cgroupfs") or ""
    if cgroup_driver:
        config["cgroupDriver"] = cgroup_driver
    else:
        del config["cgroupDriver"]  # omitempty
    if dns_service_ips:
        config["clusterDNS"] = list(dns_service_ips)
    if cluster_domain:
        config["clusterDomain"] = cluster_domain
    config["rotateCertificates"] = True
    config["staticPodPath"] = "/etc/kubernetes/manifests"
    del config["resolvConf"]  # kc.ResolverConfig = nil (clastix/kamaji#581)
    patches = spec.get("configurationJSONPatches") or []
    if patches:
        config = json_patch(config, patches)
    return config


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def detached_jws(content: str, token_id: str, token_secret: str) -> str:
    """The detached JWS (HS256, kid=token id) the bootstrap signer puts in cluster-info as
    `jws-kubeconfig-<id>`, which `kubeadm join` checks against its token."""
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{_b64url(content.encode())}".encode()
    signature = hmac.new(token_secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{_b64url(signature)}"


class TenantApi:
    """A tenant API server. `store` is its data (it outlives sleep: the server stops, the data stays)."""

    def __init__(self, state_dir: Path, namespace: str, name: str, version: str, *, host: str = "127.0.0.1",
                 cluster_domain: str = "cluster.local", pod_cidr: str = "10.244.0.0/16",
                 service_cidr: str = "10.96.0.0/16", dns_service_ips: tuple[str, ...] = ("10.96.0.10",),
                 kubelet: dict | None = None):
        self.namespace, self.name, self.version, self.host = namespace, name, version, host
        self.cluster_name = name
        self._ca = LabCA(Path(state_dir), name=f"{namespace}/{name} tenant CA")
        self.ca_pem = self._ca.ca_pem
        self._cert = self._ca.issue("apiserver", hosts=(host, "localhost"))
        # admin.conf and super-admin.conf as kubeadm's kubeconfig phase issues them for Kamaji
        # (clastix/kamaji internal/resources/kubeconfig.go -> internal/kubeadm/kubeconfig.go CreateKubeconfig ->
        # kubernetes/kubernetes cmd/kubeadm/app/phases/kubeconfig/kubeconfig.go getKubeConfigSpecsBase):
        # CN=kubernetes-admin O=kubeadm:cluster-admins, CN=kubernetes-super-admin O=system:masters
        self._admin_cert = issue_client_cert(self._ca, "admin", ADMIN_USER, (CLUSTER_ADMINS_GROUP,))
        self._super_admin_cert = issue_client_cert(self._ca, "super-admin", SUPER_ADMIN_USER, (MASTERS_GROUP,))
        self.kubelet_config_error: str | None = None  # why Kamaji could not write kubelet-config, if it could not
        self.store = ObjectStore(ResourceCatalog(CORE_TYPES + TENANT_EXTRA_TYPES))
        self.store.listeners.append(self._on_change)
        # the tenant's kube-controller-manager for CSRs (csrapproving + the kubelet client signer, from this CA):
        # it runs while the control plane runs, so a kubelet's TLS bootstrap works as in a kubeadm cluster
        self.csr_controllers = CsrControllers(self.store, self._ca)
        self.server: KubeApiServer | None = None
        self.port = 0
        self._lock = threading.Lock()
        self._network = {"cluster_domain": cluster_domain, "pod_cidr": pod_cidr, "service_cidr": service_cidr,
                         "dns_service_ips": list(dns_service_ips)}
        self._kubelet = copy.deepcopy(kubelet or {})
        self._seed_static()

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.server is not None

    def start(self) -> None:
        """Serve (again) on the same port when possible, so kubeconfigs handed out stay valid."""
        with self._lock:
            if self.server is not None:
                return
            try:
                server = self._make_server(self.port)
            except OSError:
                log.warning("tenant %s/%s: port %s taken, moving to a new port", self.namespace, self.name,
                            self.port)
                server = self._make_server(0)
            server.start()
            self.server, self.port = server, server.port
        self._seed_endpoint()
        self.csr_controllers.start()

    def _make_server(self, port: int) -> KubeApiServer:
        return KubeApiServer(
            self.store, self._cert.cert_file, self._cert.key_file, host=self.host, port=port,
            authenticate=self.authenticate, git_version=self.version,
            anonymous=(("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info"),),
            name=f"tenant-{self.namespace}-{self.name}", client_ca_file=self._ca.ca_file,
        )

    def stop(self) -> None:
        with self._lock:
            server, self.server = self.server, None
        self.csr_controllers.stop()
        if server is not None:
            server.stop()

    # ---------------------------------------------------------------- credentials
    def authenticate(self, token: str) -> bool:
        """Bearer tokens: bootstrap tokens only (the admins authenticate with client certificates)."""
        return self._bootstrap_token_valid(token)

    def _bootstrap_token_valid(self, token: str) -> bool:
        token_id, _, token_secret = token.partition(".")
        if not token_id or not token_secret:
            return False
        secret = self.store.find(self._type("Secret"), "kube-system", f"bootstrap-token-{token_id}")
        if secret is None or secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
            return False
        if secret_field(secret, "usage-bootstrap-authentication") != "true":
            return False
        expected = secret_field(secret, "token-secret") or ""
        expiration = secret_field(secret, "expiration")
        if expiration:
            try:
                if dt.datetime.fromisoformat(expiration.replace("Z", "+00:00")) < dt.datetime.now(dt.UTC):
                    return False
            except ValueError:
                return False
        return hmac.compare_digest(expected, token_secret)

    def _kubeconfig(self, user: str, cert) -> str:
        return kubeconfig_yaml(self.url, self.ca_pem, user, None, self.cluster_name,
                               client_cert_pem=cert.cert_pem, client_key_pem=cert.key_pem)

    @property
    def kubeconfig(self) -> str:
        """admin.conf: the public endpoint, the tenant CA, the admin client certificate and key."""
        return self._kubeconfig(ADMIN_USER, self._admin_cert)

    @property
    def super_admin_kubeconfig(self) -> str:
        return self._kubeconfig(SUPER_ADMIN_USER, self._super_admin_cert)

    def admin_ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the tenant CA and presenting admin.conf's client certificate (for tests
        and tools that talk HTTP to the tenant directly)."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "admin.crt", Path(tmp) / "admin.key"
            cert.write_bytes(self._admin_cert.cert_pem)
            key.write_bytes(self._admin_cert.key_pem)
            context.load_cert_chain(str(cert), str(key))
        return context

    @property
    def ca_cert_hash(self) -> str:
        """`sha256:<hex>` of the CA's public key, as `kubeadm join --discovery-token-ca-cert-hash` wants."""
        cert = x509.load_pem_x509_certificate(self.ca_pem)
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256:" + hashlib.sha256(spki).hexdigest()

    # ---------------------------------------------------------------- seeded content
    def _type(self, kind: str) -> ResourceType:
        return self.store.resolve("v1", kind)

    def _seed_static(self) -> None:
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            self.store.put({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": "default", "namespace": ns}})

    def _seed_endpoint(self) -> None:
        """What Kamaji's per-tenant (soot) controllers do once the tenant API answers, in the order of
        clastix/kamaji controllers/soot/manager.go: the kubeadm phases upload-config kubeadm, upload-config
        kubelet, bootstrap token (cluster-info), cluster-admin RBAC (internal/resources/kubeadm_phases.go)."""
        self._put_kubeadm_config()
        self._put_kubelet_config()
        self._put_cluster_info()
        self._put_cluster_admin_rbac()
        seed_kubeadm_bootstrap_rbac(self.store)  # PhaseBootstrapToken's RBAC for joining nodes (kube_rbac)

    def _cluster_info_kubeconfig(self) -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "", "cluster": {
                "certificate-authority-data": base64.b64encode(self.ca_pem).decode(), "server": self.url}}],
            "contexts": None, "current-context": "", "preferences": {}, "users": None,
        }, sort_keys=False)

    def _put_cluster_info(self) -> None:
        content = self._cluster_info_kubeconfig()
        data = {"kubeconfig": content}
        secrets_type = self._type("Secret")
        for secret in self.store.list(secrets_type, "kube-system")[0]:
            signed = self._bootstrap_signature(secret, content)
            if signed:
                data[signed[0]] = signed[1]
        self.store.put({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": CLUSTER_INFO[1], "namespace": CLUSTER_INFO[0]}, "data": data})

    @staticmethod
    def _bootstrap_signature(secret: dict, content: str) -> tuple[str, str] | None:
        if secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
            return None
        if secret_field(secret, "usage-bootstrap-signing") != "true":
            return None
        token_id = secret_field(secret, "token-id")
        token_secret = secret_field(secret, "token-secret")
        if not token_id or not token_secret:
            return None
        return f"jws-kubeconfig-{token_id}", detached_jws(content, token_id, token_secret)

    def _on_change(self, event: str, rtype: ResourceType, obj: dict) -> None:
        """The bootstrap signer: keeps cluster-info's jws-kubeconfig-<id> keys in step with the tokens.
        Runs on the writer's thread with the store lock held (re-entrant)."""
        if rtype.kind != "Secret" or obj.get("metadata", {}).get("namespace") != "kube-system":
            return
        if obj.get("type") != BOOTSTRAP_TOKEN_TYPE or not self.running:
            return
        self._put_cluster_info()

    def _put_kubeadm_config(self) -> None:
        net = self._network
        cluster_configuration = {
            "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
            "clusterName": self.cluster_name, "kubernetesVersion": self.version,
            "controlPlaneEndpoint": self.endpoint, "certificatesDir": "/etc/kubernetes/pki",
            "networking": {"dnsDomain": net["cluster_domain"], "podSubnet": net["pod_cidr"],
                           "serviceSubnet": net["service_cidr"]},
        }
        self.store.put({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
                        "data": {"ClusterConfiguration": yaml.safe_dump(cluster_configuration, sort_keys=False)}})
        # kubeadm's UploadConfiguration also lets nodes and bootstrap tokens read it
        # (kubernetes/kubernetes cmd/kubeadm/app/phases/uploadconfig/uploadconfig.go, NodesKubeadmConfigClusterRoleName)
        self._put_reader_role("kubeadm:nodes-kubeadm-config", "kubeadm-config",
                              ("system:nodes", "system:bootstrappers:kubeadm:default-node-token"))

    def _put_kubelet_config(self) -> None:
        """Kamaji's PhaseUploadConfigKubelet (clastix/kamaji internal/kubeadm/uploadconfig.go UploadKubeletConfig):
        kube-system/kubelet-config from kubelet_configuration(); when a configurationJSONPatch fails the phase
        returns an error in the per-tenant controller only: kubelet-config (and its Role) is not written or
        updated, the TCP's status does not show it."""
        try:
            config = kubelet_configuration(self._kubelet, self._network["cluster_domain"],
                                           self._network["dns_service_ips"])
        except PatchError as e:
            self.kubelet_config_error = f"unable to apply JSON patching to KubeletConfiguration: {e}"
            log.warning("tenant %s/%s: Kamaji could not upload kube-system/kubelet-config: %s", self.namespace,
                        self.name, self.kubelet_config_error)
            return
        self.kubelet_config_error = None
        self.store.put({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": KUBELET_CONFIG_MAP, "namespace": "kube-system"},
                        "data": {"kubelet": yaml.safe_dump(config, sort_keys=False)}})
        # createConfigMapRBACRules: nodes and bootstrap tokens may get the ConfigMap (kubeadm join reads it)
        self._put_reader_role("kubeadm:kubelet-config", KUBELET_CONFIG_MAP,
                              ("system:nodes", "system:bootstrappers:kubeadm:default-node-token"))

    def _put_reader_role(self, name: str, config_map: str, groups: tuple[str, ...]) -> None:
        rbac = "rbac.authorization.k8s.io/v1"
        self.store.put({"apiVersion": rbac, "kind": "Role", "metadata": {"name": name, "namespace": "kube-system"},
                        "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
                                   "resourceNames": [config_map]}]})
        self.store.put({"apiVersion": rbac, "kind": "RoleBinding",
                        "metadata": {"name": name, "namespace": "kube-system"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}
                                     for g in groups]})

    def _put_cluster_admin_rbac(self) -> None:
        """PhaseClusterAdminRBAC (kubeadm's EnsureAdminClusterRoleBinding): kubeadm:cluster-admins -> cluster-admin,
        what gives admin.conf (O=kubeadm:cluster-admins) its rights."""
        self.store.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                        "metadata": {"name": CLUSTER_ADMINS_GROUP},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                    "name": "cluster-admin"},
                        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                                      "name": CLUSTER_ADMINS_GROUP}]})

    def reconfigure(self, version: str, kubelet: dict | None = None) -> None:
        """What Kamaji does on a spec change: the new version served, kubeadm/kubelet config rewritten."""
        self.version = version
        self._kubelet = copy.deepcopy(kubelet or {})
        if self.server is not None:
            self.server.git_version = version
            self._put_kubeadm_config()
            self._put_kubelet_config()

    # ---------------------------------------------------------------- what kubelets would do
    def add_node(self, name: str, *, ready: bool = True, kubelet_version: str | None = None,
                 internal_ip: str = "10.0.0.10", labels: dict[str, str] | None = None) -> dict:
        """Register a Node as a joining kubelet would (the emulated seam: no kubelet runs here)."""
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  **(labels or {})}},
            "spec": {},
            "status": {
                "conditions": _node_conditions(ready),
                "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": kubelet_version or self.version, "kubeProxyVersion": "",
                             "containerRuntimeVersion": "containerd://2.0.0",
                             "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0-28-amd64",
                             "architecture": "amd64", "operatingSystem": "linux",
                             "machineID": hashlib.md5(name.encode(), usedforsecurity=False).hexdigest(),
                             "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                             "bootID": str(uuid.uuid4())},
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            },
        }
        return self.store.put(node)

    def set_node_ready(self, name: str, ready: bool) -> dict:
        node = self.store.get(self._type("Node"), None, name)
        node.setdefault("status", {})["conditions"] = _node_conditions(ready)
        return self.store.put(node)

    def add_pod(self, name: str, namespace: str = "default", *, node_name: str = "",
                owner_kind: str | None = None, phase: str = "Running") -> dict:
        """A pod bound to `node_name` (DaemonSet-owned when owner_kind="DaemonSet", as drain must skip)."""
        meta: dict = {"name": name, "namespace": namespace}
        if owner_kind:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner_kind, "name": f"{name}-owner",
                                        "uid": secrets.token_hex(8), "controller": True}]
        return self.store.put({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                               "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "pause"}]},
                               "status": {"phase": phase}})


def _node_conditions(ready: bool) -> list[dict]:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {"type": t, "status": "False", "reason": f"KubeletHas{r}", "message": m,
         "lastHeartbeatTime": now, "lastTransitionTime": now}
        for t, r, m in (("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory available"),
                        ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                        ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available"))
    ]
    conditions.append({
        "type": "Ready", "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "kubelet is posting ready status" if ready else
                   "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    })
    return conditions
