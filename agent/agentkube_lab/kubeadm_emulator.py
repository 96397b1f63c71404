"""LAB EMULATOR of `kubeadm` (never a real kubeadm): installed into a lab root filesystem as /usr/bin/kubeadm.

A real kubeadm/kubelet cannot run on the lab machines, so this script stands in at the narrowest seam; each rule
follows kubernetes/kubernetes cmd/kubeadm (cited beside it; the join's rules live in kubeadm_checks):
- `kubeadm join --config FILE [--ignore-preflight-errors=...]`, in the phases of the real join:
  1. the JoinConfiguration (kubeadm.k8s.io/v1beta4) is read; unknown fields are only a warning here, as in
     kubeadm (they are errors for `kubeadm config validate`);
  2. preflight (RunJoinNodeChecks): an existing kubelet.conf, bootstrap-kubelet.conf or pki/ca.crt, port 10250
     in use and ip_forward not 1 are fatal unless ignored; swap is a warning (see kubeadm_checks);
  3. bootstrap-token discovery against the tenant API (reads kube-public/cluster-info, checks its
     `jws-kubeconfig-<token id>` signature, pins the CA against `caCertHashes`: sha256 of the CA's DER
     SubjectPublicKeyInfo), then, over TLS verified with that CA and authenticated with the bootstrap token, reads
     kube-system/kubeadm-config and kubelet-config;
  4. kubelet-start: writes /etc/kubernetes/bootstrap-kubelet.conf and pki/ca.crt first, refuses when a Ready
     Node of that name exists, writes /var/lib/kubelet/config.yaml (the cluster's kubelet-config: missing, the
     phase fails), "starts the kubelet" (the emulated kubelet refuses swap and a cgroup driver that differs from
     containerd's), then performs the kubelet's TLS bootstrap (kubelet_tls_bootstrap: an ECDSA P-256 key and a
     CertificateSigningRequest for system:node:<name> made with the bootstrap token, the approved and issued
     certificate kept as /var/lib/kubelet/pki/kubelet-client-<date>.pem behind kubelet-client-current.pem),
     registers the Node (name, node-labels, taints) as the kubelet does, with that client certificate, and
     writes /etc/kubernetes/kubelet.conf pointing at it. (A real kubelet writes kubelet.conf before it registers
     its Node; here it comes last, so that kubelet.conf keeps meaning "joined" for the role and its tests.)
     bootstrap-kubelet.conf is removed when the phase ends, as kubeadm's deferred os.Remove does; a join killed
     after that point leaves it and ca.crt behind, and every retry is then refused by preflight until
     `kubeadm reset`.
- `kubeadm config validate --config FILE` (strict: unknown fields are errors), `kubeadm version -o short`,
  `kubeadm reset -f` (local files only, as the real one), `kubeadm upgrade node` (checks the node has joined and
  rewrites the kubelet config).
Nothing else is emulated. `install_into_rootfs` also places lab stand-ins for `kubelet` and `kubectl` that
only print their version; `package_files` names the files of each stand-in package, for install_into_rootfs and
for the lab's apt repository (k8s_apt_repo), which serves them as .deb packages.

Runs inside the root filesystem with its python3: standard library plus PyYAML (python3-yaml), `openssl`, and
kubeadm_checks and kubelet_tls_bootstrap installed beside it; no other agentkube imports.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

try:
    import yaml  # python3-yaml inside the root filesystem
except ImportError:  # pragma: no cover - depends on the root filesystem
    yaml = None

try:
    from agentkube_lab import kubeadm_checks as checks
    from agentkube_lab import kubelet_tls_bootstrap as tls_bootstrap
except ImportError:  # pragma: no cover - inside the root filesystem, installed beside this file
    import kubeadm_checks as checks  # type: ignore[no-redef]
    import kubelet_tls_bootstrap as tls_bootstrap  # type: ignore[no-redef]

LAB_MARKER = "agentkube LAB EMULATOR"
VERSION_FILE = "/usr/lib/agentkube-lab/kubernetes-version"
LIB_DIR = "/usr/lib/agentkube-lab/python"  # kubeadm_emulator and the modules it imports, inside the root fs
KUBERNETES_DIR = "/etc/kubernetes"
KUBELET_DIR = "/var/lib/kubelet"
API_VERSION = "kubeadm.k8s.io/v1beta4"
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
DURATION_RE = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$")
HTTP_TIMEOUT = 10.0


class KubeadmError(Exception):
    """A failure reported the way kubeadm does: a message on stderr, exit status 1."""


def _root() -> Path:
    # Tests run the emulator outside a chroot against a directory standing for "/".
    return Path(os.environ.get("AGENTKUBE_LAB_ROOT", "/"))


def _path(absolute: str) -> Path:
    return _root() / absolute.lstrip("/")


def lab_version() -> str:
    try:
        return _path(VERSION_FILE).read_text().strip()
    except FileNotFoundError as exc:
        raise KubeadmError(f"{LAB_MARKER}: {VERSION_FILE} is missing (see install_into_rootfs)") from exc


# ---------------------------------------------------------------- configuration
def load_config(path: str, strict_errors: bool = True) -> dict:
    """The JoinConfiguration in `path`, checked. Unknown fields: an error for `kubeadm config validate`
    (strict_errors), a warning for `kubeadm join` (cmd/kubeadm/app/util/config/joinconfiguration.go
    documentMapToJoinConfiguration: `if !strictErrors { klog.Warning(err.Error()) }`)."""
    if yaml is None:  # pragma: no cover - depends on the root filesystem
        raise KubeadmError("python3-yaml is required by the lab kubeadm emulator")
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise KubeadmError(f"unable to read config from {path!r}: {exc}") from exc
    joins = [d for d in docs if isinstance(d, dict) and d.get("kind") == "JoinConfiguration"]
    if len(joins) != 1:
        raise KubeadmError(f"{path}: expected exactly one JoinConfiguration, found {len(joins)}")
    strict = checks.strict_decoding_error(joins[0])
    if strict and strict_errors:
        raise KubeadmError(strict)
    if strict:
        print(f"W0000 lab kubeadm: {strict}", file=sys.stderr)
    return validate_join_configuration(joins[0])


def validate_join_configuration(cfg: dict) -> dict:
    """Field checks a real kubeadm makes on a worker's JoinConfiguration; raises naming the field."""
    def fail(field: str, why: str) -> None:
        raise KubeadmError(f"JoinConfiguration {field}: {why}")

    if cfg.get("apiVersion") != API_VERSION:
        fail("apiVersion", f"must be {API_VERSION}, got {cfg.get('apiVersion')!r}")
    discovery = cfg.get("discovery")
    if not isinstance(discovery, dict):
        fail("discovery", "is required")
    bt = discovery.get("bootstrapToken")
    if not isinstance(bt, dict):
        fail("discovery.bootstrapToken", "is required (the lab emulator supports token discovery only)")
    endpoint = bt.get("apiServerEndpoint")
    if not isinstance(endpoint, str) or not re.match(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$", endpoint):
        fail("discovery.bootstrapToken.apiServerEndpoint", f"must be host:port, got {endpoint!r}")
    if not isinstance(bt.get("token"), str) or not TOKEN_RE.match(bt["token"]):
        fail("discovery.bootstrapToken.token", "must match [a-z0-9]{6}.[a-z0-9]{16}")
    hashes = bt.get("caCertHashes")
    if bt.get("unsafeSkipCAVerification"):
        fail("discovery.bootstrapToken.unsafeSkipCAVerification", "CA verification is never skipped here")
    if not isinstance(hashes, list) or not hashes:
        fail("discovery.bootstrapToken.caCertHashes", "at least one sha256:<hex> pin is required")
    for h in hashes:
        if not isinstance(h, str) or not HASH_RE.match(h):
            fail("discovery.bootstrapToken.caCertHashes", f"{h!r} is not sha256:<64 hex>")
    tls_token = discovery.get("tlsBootstrapToken", bt["token"])
    if not isinstance(tls_token, str) or not TOKEN_RE.match(tls_token):
        fail("discovery.tlsBootstrapToken", "must match [a-z0-9]{6}.[a-z0-9]{16}")
    reg = cfg.get("nodeRegistration")
    if not isinstance(reg, dict):
        fail("nodeRegistration", "is required")
    name = reg.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        fail("nodeRegistration.name", f"must be a DNS-1123 subdomain, got {name!r}")
    for i, taint in enumerate(reg.get("taints") or []):
        if not isinstance(taint, dict) or not taint.get("key") or taint.get("effect") not in TAINT_EFFECTS:
            fail(f"nodeRegistration.taints[{i}]", f"needs key and effect in {TAINT_EFFECTS}")
    ignore = reg.get("ignorePreflightErrors") or []
    if not isinstance(ignore, list) or any(not isinstance(i, str) for i in ignore):
        fail("nodeRegistration.ignorePreflightErrors", "must be a list of check names")
    if cfg.get("caCertPath") is not None and not str(cfg["caCertPath"]).startswith("/"):
        fail("caCertPath", f"must be an absolute path, got {cfg['caCertPath']!r}")
    extra = reg.get("kubeletExtraArgs") or []
    if not isinstance(extra, list) or any(not isinstance(a, dict) or "name" not in a for a in extra):
        fail("nodeRegistration.kubeletExtraArgs", "v1beta4 wants a list of {name, value}")
    for key, value in (cfg.get("timeouts") or {}).items():
        if not isinstance(value, str) or not DURATION_RE.match(value) or not value:
            fail(f"timeouts.{key}", f"{value!r} is not a duration like 5m0s")
    return cfg


def node_labels(cfg: dict) -> dict[str, str]:
    labels: dict[str, str] = {}
    for arg in cfg["nodeRegistration"].get("kubeletExtraArgs") or []:
        if arg["name"] == "node-labels" and arg.get("value"):
            for pair in str(arg["value"]).split(","):
                key, _, value = pair.partition("=")
                labels[key.strip()] = value.strip()
    return labels


# ---------------------------------------------------------------- CA pinning (stdlib DER walk)
def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    return tag, pos, pos + length


def spki_sha256(cert_der: bytes) -> str:
    """`sha256:<hex>` of the certificate's DER SubjectPublicKeyInfo (what kubeadm pins)."""
    _, cert_start, _ = _tlv(cert_der, 0)          # Certificate
    _, pos, _ = _tlv(cert_der, cert_start)        # tbsCertificate: walk its fields
    tag, _, end = _tlv(cert_der, pos)
    if tag == 0xA0:                               # [0] version
        pos = end
        tag, _, end = _tlv(cert_der, pos)
    for _ in range(5):                            # serial, signature, issuer, validity, subject
        _, _, end = _tlv(cert_der, pos)
        pos = end
    _, _, end = _tlv(cert_der, pos)               # subjectPublicKeyInfo
    return "sha256:" + hashlib.sha256(cert_der[pos:end]).hexdigest()


def pem_certificates(pem: bytes) -> list[bytes]:
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    return [base64.b64decode(b"".join(block.split())) for block in blocks]


# ---------------------------------------------------------------- HTTP
def _request(url: str, context: ssl.SSLContext, token: str | None = None, method: str = "GET",
             body: dict | None = None) -> tuple[int, dict]:
    headers = {"Accept": "application/json", "User-Agent": "kubeadm-lab-emulator"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 (https only)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT, context=context) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"{}")
        except ValueError:
            payload = {}
        return exc.code, payload


def discover(endpoint: str, token: str, pins: list[str]) -> tuple[str, bytes]:
    """Token discovery: fetch cluster-info without trusting the server yet, then pin its CA.

    Returns (server URL from cluster-info, CA PEM)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # like kubeadm: trust comes from the CA pin checked below
    url = f"https://{endpoint}/api/v1/namespaces/kube-public/configmaps/cluster-info"
    try:
        status, cm = _request(url, insecure)
        if status == 401 or status == 403:
            status, cm = _request(url, insecure, token=token)
    except (OSError, ValueError) as exc:
        raise KubeadmError(f"[discovery] failed to request cluster-info from {endpoint}: {exc}") from exc
    if status != 200:
        raise KubeadmError(f"[discovery] cluster-info: HTTP {status} {cm.get('message', '')}")
    verify_jws(cm.get("data") or {}, token)
    try:
        kubeconfig = yaml.safe_load(cm["data"]["kubeconfig"])
        cluster = kubeconfig["clusters"][0]["cluster"]
        ca_pem = base64.b64decode(cluster["certificate-authority-data"])
        server = cluster["server"]
    except (KeyError, IndexError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise KubeadmError(f"[discovery] cluster-info holds no usable kubeconfig: {exc}") from exc
    certs = pem_certificates(ca_pem)
    if not certs:
        raise KubeadmError("[discovery] cluster-info holds no CA certificate")
    actual = spki_sha256(certs[0])
    if actual not in pins:
        raise KubeadmError(
            f"[discovery] cluster CA found in cluster-info does not match any pinned public key: {actual}"
        )
    return server, ca_pem


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify_jws(data: dict, token: str) -> None:
    """cluster-info must carry `jws-kubeconfig-<id>`: a detached HS256 JWS of the kubeconfig by the token."""
    token_id, _, token_secret = token.partition(".")
    jws = data.get(f"jws-kubeconfig-{token_id}")
    if not jws:
        raise KubeadmError(f"[discovery] there is no JWS signed token in the cluster-info ConfigMap for {token_id}")
    header, _, signature = jws.partition("..")
    signing_input = f"{header}.{_b64url(str(data.get('kubeconfig', '')).encode())}".encode()
    expected = _b64url(hmac.new(token_secret.encode(), signing_input, hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        raise KubeadmError("[discovery] failed to verify JWS signature of the cluster-info kubeconfig")


def node_info(version: str) -> dict[str, str]:
    """The nodeInfo a kubelet reports, from what the root filesystem knows about itself."""
    os_image = "Linux"
    try:
        for line in _path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_image = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    try:
        machine_id = _path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    machine_id = machine_id or hashlib.sha256(str(_root().resolve()).encode()).hexdigest()[:32]
    return {"kubeletVersion": version, "kubeProxyVersion": "", "containerRuntimeVersion": "containerd://lab",
            "operatingSystem": "linux", "architecture": "amd64", "osImage": os_image,
            "kernelVersion": os.uname().release, "machineID": machine_id, "systemUUID": machine_id,
            "bootID": machine_id}


def register_node(server: str, ca_pem: bytes, client_pem: Path, cfg: dict, version: str) -> None:
    """The kubelet's registerWithAPIServer, authenticated with its bootstrapped client certificate
    (system:node:<name>, group system:nodes: the Node authorizer and NodeRestriction let it create its own
    Node)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.load_cert_chain(str(client_pem))  # the certificate and its key, in one file
    reg = cfg["nodeRegistration"]
    name = reg["name"]
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **node_labels(cfg)}
    taints = [{k: t[k] for k in ("key", "value", "effect") if t.get(k) is not None}
              for t in reg.get("taints") or []]
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"agentkube.io/lab-emulated-kubelet": "true"}},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "nodeInfo": node_info(version),
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                            "message": "container runtime network not ready: NetworkReady=false"}],
        },
    }
    try:
        status, body = _request(f"{server}/api/v1/nodes", context, method="POST", body=node)
    except (OSError, ValueError) as exc:
        raise KubeadmError(f"[kubelet-start] cannot reach {server}: {exc}") from exc
    if status == 409:
        raise KubeadmError(f'a Node with name "{name}" already exists in the cluster')
    if status not in (200, 201):
        message = body.get("message", "")
        raise KubeadmError(f"[kubelet-start] registering Node {name}: HTTP {status} {message}")


def _get_config_map(server: str, context: ssl.SSLContext, token: str, name: str) -> tuple[int, dict]:
    try:
        return _request(f"{server}/api/v1/namespaces/kube-system/configmaps/{name}", context, token=token)
    except (OSError, ValueError) as exc:
        raise KubeadmError(f"[preflight] cannot reach {server}: {exc}") from exc


def fetch_cluster_configuration(server: str, ca_pem: bytes, token: str) -> tuple[dict, str | None]:
    """What `kubeadm join` reads from the cluster before kubelet-start (kubernetes/kubernetes
    cmd/kubeadm/app/util/config/cluster.go FetchInitConfigurationFromCluster, with the bootstrap token):
    kube-system/kubeadm-config (required: "unable to fetch the kubeadm-config ConfigMap") and the kubelet
    component config kube-system/kubelet-config (cmd/kubeadm/app/componentconfigs/configset.go fromCluster: a
    missing ConfigMap is only a warning, "No kubelet.config.k8s.io/v1beta1 config is loaded. Continuing without
    it"). Returns (ClusterConfiguration, the kubelet ConfigMap's `kubelet` document or None)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    status, cm = _get_config_map(server, context, token, "kubeadm-config")
    if status != 200:
        raise KubeadmError("unable to fetch the kubeadm-config ConfigMap: failed to get config map: "
                           f"{cm.get('message') or f'HTTP {status}'}")
    try:
        cluster_configuration = yaml.safe_load(cm["data"]["ClusterConfiguration"])
    except (KeyError, TypeError, yaml.YAMLError) as exc:
        raise KubeadmError(f"unexpected error when reading kubeadm-config ConfigMap: {exc}") from exc
    status, cm = _get_config_map(server, context, token, "kubelet-config")
    if status in (403, 404):
        print(f"W0000 lab kubeadm: No kubelet.config.k8s.io/v1beta1 config is loaded. Continuing without it: "
              f"{cm.get('message') or f'HTTP {status}'}", file=sys.stderr)
        return cluster_configuration, None
    if status != 200:
        raise KubeadmError(f"[preflight] kubelet-config: HTTP {status} {cm.get('message', '')}")
    document = (cm.get("data") or {}).get("kubelet")
    if document is None:  # configset.go: the ConfigMap without its key is an error, not a warning
        raise KubeadmError("unexpected error when reading kubelet-config ConfigMap: kubelet key value pair missing")
    return cluster_configuration, document


def _kubeconfig(server: str, ca_pem: bytes, user: dict) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "default-auth", "user": user}],
        "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster", "user": "default-auth"}}],
        "current-context": "default-context",
    })


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_bootstrap_files(server: str, ca_pem: bytes, token: str, ca_cert_path: str) -> None:
    """The first writes of join's kubelet-start phase (cmd/kubeadm/app/cmd/phases/join/kubelet.go
    runKubeletStartJoinPhase): bootstrap-kubelet.conf with the TLS bootstrap token, then the CA certificate at
    caCertPath when it is not there yet."""
    _write_private(_path(f"{KUBERNETES_DIR}/bootstrap-kubelet.conf"), _kubeconfig(server, ca_pem, {"token": token}))
    ca = _path(ca_cert_path)
    if not ca.exists():
        ca.parent.mkdir(parents=True, exist_ok=True)
        ca.write_bytes(ca_pem)


def refuse_ready_node(server: str, ca_pem: bytes, token: str, name: str) -> None:
    """kubelet.go runKubeletStartJoinPhase: "Make sure to exit before TLS bootstrap if a Node with the same name
    exist in the cluster and it has the Ready status" (read with the bootstrap token: RBAC kubeadm:get-nodes)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        status, node = _request(f"{server}/api/v1/nodes/{name}", context, token=token)
    except (OSError, ValueError) as exc:
        raise KubeadmError(f"error execution phase kubelet-start: cannot get Node {name!r}: {exc}") from exc
    if status not in (200, 404):
        raise KubeadmError(f"error execution phase kubelet-start: cannot get Node {name!r}: HTTP {status} "
                           f"{node.get('message', '')}")
    conditions = (node.get("status") or {}).get("conditions") or [] if status == 200 else []
    if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        raise KubeadmError(f'error execution phase kubelet-start: a Node with name "{name}" and status "Ready" '
                           "already exists in the cluster. You must delete the existing Node or change the name "
                           "of this new joining Node")


def write_kubelet_conf(server: str, ca_pem: bytes, name: str) -> None:
    """/etc/kubernetes/kubelet.conf, which the kubelet writes when its TLS bootstrap completes
    (pkg/kubelet/certificate/bootstrap/bootstrap.go writeKubeconfigFromBootstrapping: the bootstrap kubeconfig's
    server and CA, the certificate store's current pair as client certificate and key)."""
    pem = f"{KUBELET_DIR}/pki/{tls_bootstrap.CURRENT}"
    user = {"client-certificate": pem, "client-key": pem}
    _write_private(_path(f"{KUBERNETES_DIR}/kubelet.conf"),
                   f"# written by the {LAB_MARKER} of kubeadm for node {name}\n" + _kubeconfig(server, ca_pem, user))


def write_kubelet_config(document: str, step: str = "join") -> dict:
    """/var/lib/kubelet/config.yaml as kubeadm's kubelet-start phase writes it: the cluster's kubelet-config
    document (kubernetes/kubernetes cmd/kubeadm/app/phases/kubelet/config.go WriteConfigToDisk), stamped with the
    step and the emulated kubeadm's version (so tests can tell which kubeadm wrote it)."""
    config = yaml.safe_load(document)
    if not isinstance(config, dict) or config.get("kind") != "KubeletConfiguration":
        raise KubeadmError("no kubelet component config found")
    # kubeadm's kubelet component config default: an empty cgroupDriver becomes systemd
    # (kubernetes/kubernetes cmd/kubeadm/app/componentconfigs/kubelet.go Default)
    if not config.get("cgroupDriver"):
        config["cgroupDriver"] = "systemd"
    kubelet = _path(KUBELET_DIR)
    kubelet.mkdir(parents=True, exist_ok=True)
    (kubelet / "config.yaml").write_text(
        f"# written by the {LAB_MARKER} of kubeadm {lab_version()} ({step})\n"
        + yaml.safe_dump(config, sort_keys=False))
    return config


# ---------------------------------------------------------------- commands
def cmd_join(config: str, ignore_cli: list[str]) -> None:
    cfg = load_config(config, strict_errors=False)
    reg = cfg["nodeRegistration"]
    try:
        ignored = checks.ignored_checks(ignore_cli, reg.get("ignorePreflightErrors") or [])
        print("[preflight] Running pre-flight checks")
        checks.run_join_preflight(_root(), cfg, ignored, sys.stderr)
    except checks.CheckError as exc:
        raise KubeadmError(str(exc)) from exc
    bt = cfg["discovery"]["bootstrapToken"]
    server, ca_pem = discover(bt["apiServerEndpoint"], bt["token"], bt["caCertHashes"])
    token = cfg["discovery"].get("tlsBootstrapToken", bt["token"])
    _, kubelet_config = fetch_cluster_configuration(server, ca_pem, token)
    kubelet_start(server, ca_pem, token, cfg, kubelet_config)
    print("This node has joined the cluster (lab emulator: Node registered, kubelet not started).")


def kubelet_start(server: str, ca_pem: bytes, token: str, cfg: dict, kubelet_config: str | None) -> None:
    """join's kubelet-start phase (cmd/kubeadm/app/cmd/phases/join/kubelet.go runKubeletStartJoinPhase), with the
    kubelet emulated: its start checks (kubeadm_checks.kubelet_start_error), its TLS bootstrap (a CSR approved and
    signed by the tenant), its Node registration with the issued client certificate, then kubelet.conf.
    bootstrap-kubelet.conf goes when the phase ends, success or error (the phase's deferred os.Remove); a kill
    (SIGTERM/SIGKILL from `timeout`) leaves it."""
    name = cfg["nodeRegistration"]["name"]
    bootstrap = _path(f"{KUBERNETES_DIR}/bootstrap-kubelet.conf")
    try:
        write_bootstrap_files(server, ca_pem, token, cfg.get("caCertPath") or checks.DEFAULT_CA_CERT_PATH)
        refuse_ready_node(server, ca_pem, token, name)
        if kubelet_config is None:  # kubeletphase.WriteConfigToDisk with no kubelet component config loaded
            raise KubeadmError("error execution phase kubelet-start: no kubelet component config found")
        config = write_kubelet_config(kubelet_config)
        print("[kubelet-start] Starting the kubelet")
        try:
            why = checks.kubelet_start_error(_root(), config)
        except checks.CheckError as exc:
            why = str(exc)
        if why:
            raise KubeadmError(f"error execution phase kubelet-start: {why}")
        print("[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap")
        client_pem = perform_tls_bootstrap(server, ca_pem, token, name, tls_bootstrap_timeout(cfg))
        register_node(server, ca_pem, client_pem, cfg, lab_version())
        write_kubelet_conf(server, ca_pem, name)
    finally:
        bootstrap.unlink(missing_ok=True)


def tls_bootstrap_timeout(cfg: dict) -> float:
    """JoinConfiguration timeouts.tlsBootstrap (default 5m0s, cmd/kubeadm/app/apis/kubeadm/v1beta4/defaults.go),
    how long kubeadm waits for the kubelet's TLS bootstrap (cmd/kubeadm/app/cmd/phases/join/kubelet.go
    waitForTLSBootstrappedClient)."""
    value = (cfg.get("timeouts") or {}).get("tlsBootstrap") or "5m0s"
    match = DURATION_RE.match(value)
    hours, minutes, seconds = (match.group(i) if match else None for i in (1, 2, 3))
    return (float((hours or "0h")[:-1]) * 3600 + float((minutes or "0m")[:-1]) * 60
            + float((seconds or "0s")[:-1]))


def perform_tls_bootstrap(server: str, ca_pem: bytes, token: str, name: str, timeout: float) -> Path:
    """The emulated kubelet's TLS bootstrap with bootstrap-kubelet.conf's token (kubelet_tls_bootstrap); returns
    kubelet-client-current.pem."""
    context = ssl.create_default_context(cadata=ca_pem.decode())

    def request(path: str, method: str, body: dict | None) -> tuple[int, dict]:
        return _request(f"{server}{path}", context, token=token, method=method, body=body)

    try:
        return tls_bootstrap.bootstrap(request, _path(f"{KUBELET_DIR}/pki"), name, timeout)
    except (OSError, ValueError) as exc:
        raise KubeadmError(f"[kubelet-start] cannot reach {server}: {exc}") from exc
    except tls_bootstrap.BootstrapError as exc:
        raise KubeadmError("error execution phase kubelet-start: failed while waiting for the kubelet to perform "
                           f"the TLS Bootstrap: {exc}") from exc


def cmd_reset() -> None:
    """What `kubeadm reset -f` removes on a worker (cmd/kubeadm/app/cmd/phases/reset/cleanupnode.go: the
    kubelet's directory, the certificates directory, and resetConfigDir: the manifests and the kubeconfig files
    in /etc/kubernetes). It does not clean CNI configuration, iptables or what other tools wrote."""
    for rel in (f"{KUBERNETES_DIR}/kubelet.conf", f"{KUBERNETES_DIR}/bootstrap-kubelet.conf",
                f"{KUBERNETES_DIR}/admin.conf", f"{KUBERNETES_DIR}/super-admin.conf", f"{KUBERNETES_DIR}/pki",
                f"{KUBERNETES_DIR}/manifests", KUBELET_DIR):
        target = _path(rel)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    print("[reset] lab emulator: removed the node's kubeadm/kubelet files")


def cmd_upgrade_node() -> None:
    if not _path(f"{KUBERNETES_DIR}/kubelet.conf").exists():
        raise KubeadmError("[upgrade] this node has not joined a cluster (no kubelet.conf)")
    # `kubeadm upgrade node` re-downloads kubelet-config with the node's credentials (phases/upgrade/node
    # kubelet-config); the lab emulator does not talk to the API here: the configuration it joined with is kept
    current = _path(f"{KUBELET_DIR}/config.yaml")
    body = "\n".join(line for line in current.read_text().splitlines() if not line.startswith("#")) \
        if current.exists() else ""
    write_kubelet_config(body, "upgrade node")
    print(f"[upgrade] lab emulator: kubelet configuration rewritten for {lab_version()}")


def kubeadm_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubeadm", description=f"{LAB_MARKER} of kubeadm")
    sub = parser.add_subparsers(dest="command", required=True)
    join = sub.add_parser("join")
    join.add_argument("--config", required=True)
    join.add_argument("--ignore-preflight-errors", action="append", default=[],
                      help="checks whose errors become warnings (comma-separated; 'all')")
    join.add_argument("endpoint", nargs="?")
    config = sub.add_parser("config")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    validate = config_sub.add_parser("validate")
    validate.add_argument("--config", required=True)
    version = sub.add_parser("version")
    version.add_argument("-o", "--output", default="")
    reset = sub.add_parser("reset")
    reset.add_argument("-f", "--force", action="store_true")
    upgrade = sub.add_parser("upgrade")
    upgrade_sub = upgrade.add_subparsers(dest="upgrade_command", required=True)
    upgrade_sub.add_parser("node")
    args = parser.parse_args(argv)
    try:
        if args.command == "join":
            if args.endpoint:
                raise KubeadmError("the lab emulator takes the endpoint from --config only")
            cmd_join(args.config, [item for flag in args.ignore_preflight_errors
                                   for item in flag.split(",") if item])
        elif args.command == "config":
            load_config(args.config)
            print("ok (validated by the lab emulator)")
        elif args.command == "version":
            short = args.output == "short"
            print(lab_version() if short else f"kubeadm version: {lab_version()} (lab emulator)")
        elif args.command == "reset":
            if not args.force:
                raise KubeadmError("the lab emulator only supports `reset -f`")
            cmd_reset()
        else:
            cmd_upgrade_node()
    except KubeadmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- installation into a root filesystem
KUBELET_STUB = """#!/bin/sh
# agentkube LAB STAND-IN for kubelet: prints its version, nothing else. Not a kubelet.
case "$1" in
  --version) echo "Kubernetes {version}" ;;
  *) echo "lab stand-in kubelet: only --version is supported" >&2; exit 1 ;;
esac
"""
KUBECTL_STUB = """#!/bin/sh
# agentkube LAB STAND-IN for kubectl: prints its client version, nothing else. Not a kubectl.
case "$*" in
  "version --client"*) echo "Client Version: {version}" ;;
  *) echo "lab stand-in kubectl: only 'version --client' is supported" >&2; exit 1 ;;
esac
"""


KUBEADM_LAUNCHER = """#!/usr/bin/python3
# agentkube LAB EMULATOR of kubeadm (see {lib_dir}/kubeadm_emulator.py). Not a kubeadm.
import sys
sys.path.insert(0, "{lib_dir}")
from kubeadm_emulator import kubeadm_main
sys.exit(kubeadm_main())
"""


LAB_PACKAGES = ("kubeadm", "kubelet", "kubectl")


def check_version(version: str) -> None:
    if not re.match(r"^v\d+\.\d+\.\d+$", version):
        raise ValueError(f"version must look like v1.35.7, got {version!r}")


def package_files(package: str, version: str) -> dict[str, tuple[str, int]]:
    """The files the lab stand-in of `package` (one of LAB_PACKAGES) puts on a node at `version`: absolute path ->
    (text, mode). The one source of them: install_into_rootfs writes them into a root filesystem, and
    agentkube_lab.k8s_apt_repo packs them into the lab's .deb packages."""
    check_version(version)
    if package == "kubeadm":
        files = {f"{LIB_DIR}/{module.name}": (module.read_text(), 0o644)
                 for module in (Path(__file__), Path(checks.__file__), Path(tls_bootstrap.__file__))}
        files["/usr/bin/kubeadm"] = (KUBEADM_LAUNCHER.format(lib_dir=LIB_DIR), 0o755)
        files[VERSION_FILE] = (version + "\n", 0o644)
        return files
    if package == "kubelet":
        return {"/usr/bin/kubelet": (KUBELET_STUB.format(version=version), 0o755)}
    if package == "kubectl":
        return {"/usr/bin/kubectl": (KUBECTL_STUB.format(version=version), 0o755)}
    raise ValueError(f"no lab stand-in for package {package!r} (known: {', '.join(LAB_PACKAGES)})")


def install_into_rootfs(root: Path, version: str, kubelet_version: str | None = None) -> None:
    """Place the lab kubeadm emulator and the kubelet/kubectl stand-ins (package_files) under `root`."""
    check_version(version)
    for package in LAB_PACKAGES:
        at = (kubelet_version or version) if package == "kubelet" else version
        for absolute, (text, mode) in package_files(package, at).items():
            target = Path(root) / absolute.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(mode)


def install_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the lab kubeadm emulator into a root filesystem")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--version", required=True, help="version the emulated kubeadm/kubectl report")
    parser.add_argument("--kubelet-version", help="version the kubelet stand-in reports (default: --version)")
    args = parser.parse_args(argv)
    install_into_rootfs(args.root, args.version, args.kubelet_version)
    print(f"installed the lab kubeadm emulator ({args.version}) into {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(install_main())
