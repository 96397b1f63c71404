#!/usr/bin/python
"""TenantControlPlane health, and each Ready tenant's nodes and pods, read in parallel with a bound."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import ssl
import tempfile
import urllib.parse

from ansible.module_utils.basic import AnsibleModule

try:
    import yaml
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    HAS_KUBERNETES = True
except ImportError:  # reported by main()
    HAS_KUBERNETES = False

DOCUMENTATION = r"""
module: tenant_metrics_clusters
short_description: TCP status and replicas, and each Ready tenant's nodes and pods, in parallel with a bound
description:
  - >-
    Takes the TenantControlPlanes already listed from the parent cluster (k8s_info) and lists the admin
    kubeconfig Secrets of their namespace in one call (label C(kamaji.clastix.io/component=admin-kubeconfig)),
    so the parent cluster sees a constant number of calls per interval and no credential passes through
    Ansible variables.
  - >-
    Reads the Nodes and the Running Pods of each Ready tenant through its admin kubeconfig, at most
    C(concurrency) tenants at a time. An unreachable tenant is reported in its entry, never fatal.
options:
  tcps: {description: TenantControlPlane objects (k8s_info resources)., type: list, elements: dict, required: true}
  namespace: {description: Namespace of the TCPs and their admin kubeconfig Secrets., type: str, required: true}
  kubeconfig: {description: Parent cluster kubeconfig path ("" = client defaults)., type: str, default: ""}
  context: {description: Context in kubeconfig ("" = current)., type: str, default: ""}
  validate_certs: {description: Verify the parent API server certificate., type: bool, default: true}
  concurrency: {description: Tenants read at the same time., type: int, default: 16}
  timeout: {description: Seconds one tenant API request may take., type: float, default: 10}
author: AgentKube
"""

RETURN = r"""
kamaji:
  description: ok, error, tcps (namespace, name, status, replicas, readyReplicas)
  type: dict
  returned: always
tenants:
  description: per TCP, namespace, name, queried, reachable, error, nodes (name, ready), podsRunning
  type: list
  returned: always
"""


def _get(obj, *path, default=None):
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
    return default if obj is None else obj


def tcp_summary(tcp: dict) -> dict:
    meta = tcp.get("metadata") or {}
    deployment = _get(tcp, "status", "kubernetesResources", "deployment", default={})
    return {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "status": _get(tcp, "status", "kubernetesResources", "version", "status", default="Unknown"),
        "replicas": int(_get(tcp, "spec", "controlPlane", "deployment", "replicas", default=0) or 0),
        "readyReplicas": int(deployment.get("readyReplicas") or 0),
    }


def admin_kubeconfig(tcp: dict, secrets_by_key: dict) -> str | None:
    meta = tcp.get("metadata") or {}
    secret_name = _get(tcp, "status", "kubeconfig", "admin", "secretName") or f"{meta.get('name')}-admin-kubeconfig"
    secret = secrets_by_key.get((meta.get("namespace"), secret_name))
    raw = _get(secret, "data", "admin.conf")
    if not raw:
        return None
    try:
        return base64.b64decode(raw).decode()
    except ValueError:
        return None


def _is_ready(node: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in _get(node, "status", "conditions", default=[]) or [])


def _kubeconfig_target(kubeconfig: str) -> tuple[str, dict, dict]:
    """(server URL, cluster, user) of the kubeconfig's current context."""
    doc = yaml.load(kubeconfig, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    ctx_name = doc.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in doc.get("contexts") or []}
    ctx = contexts.get(ctx_name) or (next(iter(contexts.values())) if contexts else {})
    clusters = {c["name"]: c.get("cluster") or {} for c in doc.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in doc.get("users") or []}
    cluster, user = clusters.get(ctx.get("cluster"), {}), users.get(ctx.get("user"), {})
    if not cluster.get("server"):
        raise ValueError("the admin kubeconfig names no server")
    return cluster["server"], cluster, user


def _ssl_context(cluster: dict, user: dict) -> ssl.SSLContext:
    """TLS verified against the kubeconfig's CA (in memory); client certificate auth when it has one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks the host name; no system CAs
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        context.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        context.load_verify_locations(cafile=cluster["certificate-authority"])
    else:
        context.load_default_certs()
    if user.get("client-certificate-data") and user.get("client-key-data"):
        with tempfile.TemporaryDirectory(prefix="tenant-metrics-") as tmp:  # load_cert_chain reads files
            cert, key = os.path.join(tmp, "c"), os.path.join(tmp, "k")
            for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(base64.b64decode(user[field]))
            context.load_cert_chain(cert, key)
    elif user.get("client-certificate") and user.get("client-key"):
        context.load_cert_chain(user["client-certificate"], user["client-key"])
    return context


def read_tenant(kubeconfig: str, timeout: float) -> tuple[list[dict], int]:
    """(nodes with readiness, running pods) through the tenant's API, on one keep-alive connection;
    raises on any failure. A lean client on purpose: building a kubernetes client per tenant costs more
    than the two requests."""
    server, cluster, user = _kubeconfig_target(kubeconfig)
    url = urllib.parse.urlsplit(server)
    if url.scheme != "https":
        raise ValueError(f"tenant API {server} is not https")
    headers = {"Accept": "application/json", "User-Agent": "agentkube-metrics"}
    if user.get("token"):
        headers["Authorization"] = f"Bearer {user['token']}"
    elif not user.get("client-certificate-data") and not user.get("client-certificate"):
        raise ValueError("the admin kubeconfig has no token or client certificate (exec plugins are not supported)")
    conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=timeout,
                                       context=_ssl_context(cluster, user))
    base = url.path.rstrip("/")

    def get(path: str) -> dict:
        conn.request("GET", base + path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} -> HTTP {resp.status}")
        return json.loads(body)

    try:
        raw_nodes = get("/api/v1/nodes")
        raw_pods = get("/api/v1/pods?fieldSelector=status.phase%3DRunning")
    finally:
        conn.close()
    nodes = sorted(({"name": _get(n, "metadata", "name", default=""), "ready": _is_ready(n)}
                    for n in raw_nodes.get("items") or []), key=lambda n: n["name"])
    running = sum(1 for p in raw_pods.get("items") or [] if _get(p, "status", "phase") == "Running")
    return nodes, running


def _short_error(e: Exception) -> str:
    status = getattr(e, "status", None)
    if status:
        return f"HTTP {status}: {getattr(e, 'reason', '') or type(e).__name__}"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}"


def tenant_entry(tcp: dict, secrets_by_key: dict, timeout: float, secrets_error: str = "") -> dict:
    summary = tcp_summary(tcp)
    entry = {"namespace": summary["namespace"], "name": summary["name"], "queried": False, "reachable": False,
             "error": "", "nodes": [], "podsRunning": 0}
    if summary["status"] != "Ready":
        entry["error"] = f"control plane is {summary['status']}; not queried"
        return entry
    if secrets_error:
        entry.update(queried=True, error=f"admin kubeconfig Secrets could not be listed: {secrets_error}")
        return entry
    kubeconfig = admin_kubeconfig(tcp, secrets_by_key)
    if kubeconfig is None:
        entry["error"] = "no admin kubeconfig Secret with admin.conf"
        return entry
    entry["queried"] = True
    try:
        entry["nodes"], entry["podsRunning"] = read_tenant(kubeconfig, timeout)
    except Exception as e:  # noqa: BLE001 - any failure of one tenant is reported in its entry
        entry["error"] = f"tenant API unreachable: {_short_error(e)}"
        return entry
    entry["reachable"] = True
    return entry


ADMIN_SECRET_SELECTOR = "kamaji.clastix.io/component=admin-kubeconfig"  # noqa: S105 - a label selector


def list_admin_secrets(namespace: str, kubeconfig: str, context: str, validate_certs: bool,
                       timeout: float) -> list[dict]:
    """One list call to the parent cluster: every admin kubeconfig Secret of the namespace."""
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=kubeconfig or None, context=context or None,
                                client_configuration=configuration)
    configuration.verify_ssl = validate_certs
    api = k8s_client.ApiClient(configuration)
    try:
        raw = k8s_client.CoreV1Api(api).list_namespaced_secret(
            namespace, label_selector=ADMIN_SECRET_SELECTOR, _preload_content=False, _request_timeout=timeout)
        return json.loads(raw.data).get("items") or []
    finally:
        api.rest_client.pool_manager.clear()


def collect(tcps: list[dict], secrets: list[dict] | None, concurrency: int, timeout: float,
            secrets_error: str = "") -> dict:
    """secrets None: listing them failed (secrets_error says why); every Ready tenant is then reported
    unreachable with that reason."""
    secrets_by_key = {(_get(s, "metadata", "namespace"), _get(s, "metadata", "name")): s for s in secrets or []}

    def one(tcp: dict) -> dict:
        entry = tenant_entry(tcp, secrets_by_key, timeout, secrets_error if secrets is None else "")
        return entry

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        tenants = list(pool.map(one, tcps))
    return {"kamaji": {"ok": True, "error": "", "tcps": [tcp_summary(t) for t in tcps]}, "tenants": tenants}


def main():
    module = AnsibleModule(
        argument_spec={
            "tcps": {"type": "list", "elements": "dict", "required": True},
            "namespace": {"type": "str", "required": True},
            "kubeconfig": {"type": "str", "default": ""},
            "context": {"type": "str", "default": ""},
            "validate_certs": {"type": "bool", "default": True},
            "concurrency": {"type": "int", "default": 16},
            "timeout": {"type": "float", "default": 10.0},
        },
        supports_check_mode=True,
    )
    if not HAS_KUBERNETES:
        module.fail_json(msg="the python 'kubernetes' and 'PyYAML' packages are required")
    p = module.params
    if p["concurrency"] < 1:
        module.fail_json(msg="concurrency must be at least 1")
    if p["timeout"] <= 0:
        module.fail_json(msg="timeout must be positive")
    secrets, secrets_error = None, ""
    if any(tcp_summary(t)["status"] == "Ready" for t in p["tcps"]):
        try:
            secrets = list_admin_secrets(p["namespace"], p["kubeconfig"], p["context"], p["validate_certs"],
                                         p["timeout"])
        except Exception as e:  # noqa: BLE001 - reported per tenant, never fatal
            secrets_error = _short_error(e)
    else:
        secrets = []
    module.exit_json(changed=False, **collect(p["tcps"], secrets, p["concurrency"], p["timeout"], secrets_error))


if __name__ == "__main__":
    main()
