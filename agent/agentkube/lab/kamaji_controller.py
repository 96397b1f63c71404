"""A simulated Kamaji controller for the lab's parent cluster. It watches TenantControlPlanes in the store and,
like Kamaji, adds its finalizer, reports `status.kubernetesResources.version.status` (Provisioning ->
Ready after a delay, Upgrading on a version change, Sleeping at replicas 0, NotReady when stuck), starts a
per-tenant API server, writes `<tcp>-admin-kubeconfig`, and on deletion stops the tenant and releases the
finalizer after a delay, so "terminating" is observable. Faults: `stick()` and per-TCP delays."""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agentkube.lab.kube_resources import TENANT_CONTROL_PLANE
from agentkube.lab.kube_store import MERGE_PATCH, ApiError, ObjectStore, now_rfc3339
from agentkube.lab.kube_tenant import TenantApi

log = logging.getLogger(__name__)

FINALIZER = "finalizer.kamaji.clastix.io"
READY_DELAY_ANNOTATION = "lab.agentkube.io/ready-delay"
DEFAULT_REPLICAS = 2  # the CRD's default for spec.controlPlane.deployment.replicas

Key = tuple[str, str]


def _get(obj: dict, *path: str, default=None):
    cur = obj
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class KamajiController:
    def __init__(self, store: ObjectStore, tenants_dir: Path, *, ready_delay: float = 1.0,
                 delete_delay: float | None = None, host: str = "127.0.0.1", tick: float = 0.05,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.tenants_dir = Path(tenants_dir)
        self.ready_delay = ready_delay
        self.delete_delay = delete_delay
        self.host = host
        self.tick = tick
        self.clock = clock
        self.tenants: dict[Key, TenantApi] = {}
        self._delays: dict[Key, float] = {}
        self._stuck: dict[Key, tuple[str, str, str]] = {}
        self._due: dict[Key, tuple[str, float]] = {}  # key -> (what is pending, when it completes)
        self._dirty: set[Key] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        store.listeners.append(self._on_event)

    # ---------------------------------------------------------------- public knobs
    def set_ready_delay(self, namespace: str, name: str, seconds: float | None) -> None:
        with self._lock:
            if seconds is None:
                self._delays.pop((namespace, name), None)
            else:
                self._delays[(namespace, name)] = seconds
        self._poke((namespace, name))

    def stick(self, namespace: str, name: str, status: str = "NotReady", reason: str = "Stuck",
              message: str = "") -> None:
        with self._lock:
            self._stuck[(namespace, name)] = (status, reason, message or f"control plane is {status} ({reason})")
        self._poke((namespace, name))

    def unstick(self, namespace: str, name: str) -> None:
        with self._lock:
            self._stuck.pop((namespace, name), None)
            self._due.pop((namespace, name), None)
        self._poke((namespace, name))

    # ---------------------------------------------------------------- loop
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="kamaji-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for tenant in list(self.tenants.values()):
            tenant.stop()

    def _on_event(self, _event: str, rtype, obj: dict) -> None:
        if rtype == TENANT_CONTROL_PLANE:
            meta = obj.get("metadata", {})
            self._poke((meta.get("namespace", ""), meta.get("name", "")))

    def _poke(self, key: Key) -> None:
        with self._lock:
            self._dirty.add(key)
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=self.tick)
            self._wake.clear()
            now = self.clock()
            with self._lock:
                keys = set(self._dirty) | {k for k, (_, due) in self._due.items() if due <= now}
                self._dirty.clear()
            for key in sorted(keys):
                try:
                    self.reconcile(*key)
                except ApiError as e:  # a conflict with a concurrent writer: retry on the next tick
                    log.debug("kamaji controller: %s/%s: %s", *key, e.message)
                    self._poke(key)
                except Exception:
                    log.exception("kamaji controller: reconcile %s/%s failed", *key)

    # ---------------------------------------------------------------- reconcile
    def _delay_for(self, key: Key, tcp: dict) -> float:
        annotation = _get(tcp, "metadata", "annotations", READY_DELAY_ANNOTATION)
        if annotation is not None:
            try:
                return max(0.0, float(annotation))
            except ValueError:
                log.warning("kamaji controller: %s/%s: ignoring bad %s=%r", *key, READY_DELAY_ANNOTATION,
                            annotation)
        with self._lock:
            return self._delays.get(key, self.ready_delay)

    def _pending(self, key: Key, what: str, delay: float) -> bool:
        """True while the transition `what` is still in progress (scheduling it on first sight)."""
        now = self.clock()
        with self._lock:
            current = self._due.get(key)
            if current is None or current[0] != what:
                self._due[key] = (what, now + delay)
                current = self._due[key]
            if current[1] > now:
                return True
            del self._due[key]
            return False

    def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        tcp = self.store.find(TENANT_CONTROL_PLANE, namespace, name)
        if tcp is None:
            self._forget(key)
            return
        meta = tcp["metadata"]
        if meta.get("deletionTimestamp"):
            self._finalize(key, tcp)
            return
        if FINALIZER not in (meta.get("finalizers") or []):
            self.store.patch(TENANT_CONTROL_PLANE, namespace, name, MERGE_PATCH,
                             {"metadata": {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]}})
            return  # the MODIFIED event brings us back
        spec = tcp.get("spec") or {}
        version = _get(spec, "kubernetes", "version", default="")
        replicas = _get(spec, "controlPlane", "deployment", "replicas", default=DEFAULT_REPLICAS)
        installed = _get(tcp, "status", "kubernetesResources", "version", "version")
        current = _get(tcp, "status", "kubernetesResources", "version", "status")
        generation = meta.get("generation", 1)
        with self._lock:
            stuck = self._stuck.get(key)
        if stuck:
            self._write_status(tcp, stuck[0], installed, ready_replicas=0, condition=stuck[1:])
            return
        if replicas == 0:
            self._due.pop(key, None)
            tenant = self.tenants.get(key)
            if tenant is not None:
                tenant.stop()
            self._write_status(tcp, "Sleeping", installed, ready_replicas=0)
            return
        settled = (current == "Ready" and installed == version
                   and _get(tcp, "status", "observedGeneration") == generation
                   and key in self.tenants and self.tenants[key].running)
        if settled:
            return
        if installed and installed != version:
            phase = "Upgrading"
        elif current == "Ready" and key in self.tenants and self.tenants[key].running:
            phase = "Ready"  # a change that does not restart the control plane (e.g. a label, replicas 2->3)
        else:
            phase = "Provisioning"
        if phase != "Ready" and self._pending(key, f"{phase}:{version}", self._delay_for(key, tcp)):
            self._write_status(tcp, phase, installed, ready_replicas=0 if phase == "Provisioning" else None)
            return
        tenant = self._ensure_tenant(key, tcp)
        self._write_admin_secret(tcp, tenant)
        self._write_status(tcp, "Ready", version, ready_replicas=replicas, endpoint=tenant.endpoint)

    def _ensure_tenant(self, key: Key, tcp: dict) -> TenantApi:
        spec = tcp.get("spec") or {}
        version = _get(spec, "kubernetes", "version", default="")
        kubelet = _get(spec, "kubernetes", "kubelet", default={})
        tenant = self.tenants.get(key)
        if tenant is None:
            net = spec.get("networkProfile") or {}
            tenant = TenantApi(
                self.tenants_dir / f"{key[0]}--{key[1]}", key[0], key[1], version, host=self.host,
                cluster_domain=net.get("clusterDomain") or "cluster.local",
                pod_cidr=net.get("podCidr") or "10.244.0.0/16",
                service_cidr=net.get("serviceCidr") or "10.96.0.0/16",
                dns_service_ips=tuple(net.get("dnsServiceIPs") or ("10.96.0.10",)),
                kubelet=kubelet,
            )
            self.tenants[key] = tenant
        elif tenant.version != version or tenant._kubelet != (kubelet or {}):
            tenant.reconfigure(version, kubelet)
        tenant.start()
        return tenant

    def _finalize(self, key: Key, tcp: dict) -> None:
        if FINALIZER not in (tcp["metadata"].get("finalizers") or []):
            return
        delay = self.delete_delay if self.delete_delay is not None else self._delay_for(key, tcp)
        if self._pending(key, "Deleting", delay):
            return
        tenant = self.tenants.pop(key, None)
        if tenant is not None:
            tenant.stop()
        secret_type = self.store.resolve("v1", "Secret")
        if self.store.find(secret_type, key[0], f"{key[1]}-admin-kubeconfig") is not None:
            self.store.delete(secret_type, key[0], f"{key[1]}-admin-kubeconfig")
        finalizers = [f for f in tcp["metadata"]["finalizers"] if f != FINALIZER]
        self.store.patch(TENANT_CONTROL_PLANE, key[0], key[1], MERGE_PATCH,
                         {"metadata": {"finalizers": finalizers or None}})
        self._forget(key)

    def _forget(self, key: Key) -> None:
        tenant = self.tenants.pop(key, None)
        if tenant is not None:
            tenant.stop()
        with self._lock:
            self._due.pop(key, None)

    # ---------------------------------------------------------------- writes
    def _write_admin_secret(self, tcp: dict, tenant: TenantApi) -> None:
        namespace, name = tcp["metadata"]["namespace"], tcp["metadata"]["name"]
        port = _get(tcp, "spec", "networkProfile", "port", default=6443)
        svc_url = f"https://{name}.{namespace}.svc:{port}"
        data = {
            "admin.conf": _b64(tenant.kubeconfig),
            "super-admin.conf": _b64(tenant.super_admin_kubeconfig),
            "admin.svc": _b64(tenant.kubeconfig.replace(tenant.url, svc_url)),
            "super-admin.svc": _b64(tenant.super_admin_kubeconfig.replace(tenant.url, svc_url)),
        }
        secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {
                "name": f"{name}-admin-kubeconfig", "namespace": namespace,
                "labels": {"kamaji.clastix.io/name": name, "kamaji.clastix.io/component": "admin-kubeconfig",
                           "kamaji.clastix.io/project": "kamaji"},
                "ownerReferences": [{"apiVersion": TENANT_CONTROL_PLANE.api_version, "kind": "TenantControlPlane",
                                     "name": name, "uid": tcp["metadata"]["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "data": data,
        }
        existing = self.store.find(self.store.resolve("v1", "Secret"), namespace, secret["metadata"]["name"])
        if existing is None or existing.get("data") != data:
            self.store.put(secret)

    def _write_status(self, tcp: dict, phase: str, version: str | None, *, ready_replicas: int | None = None,
                      endpoint: str | None = None, condition: tuple[str, str] | None = None) -> None:
        meta, spec = tcp["metadata"], tcp.get("spec") or {}
        namespace, name = meta["namespace"], meta["name"]
        old = tcp.get("status") or {}
        replicas = _get(spec, "controlPlane", "deployment", "replicas", default=DEFAULT_REPLICAS)
        if ready_replicas is None:
            ready_replicas = _get(old, "kubernetesResources", "deployment", "readyReplicas", default=0)
        available = ready_replicas > 0 and ready_replicas >= min(replicas, 1)
        reason, message = condition or (
            ("MinimumReplicasAvailable", "Deployment has minimum availability.") if available
            else ("MinimumReplicasUnavailable", "Deployment does not have minimum availability."))
        old_condition = (_get(old, "kubernetesResources", "deployment", "conditions", default=[]) or [{}])[0]
        transition = old_condition.get("lastTransitionTime") if old_condition.get("reason") == reason else None
        stamp = now_rfc3339()
        port = _get(spec, "networkProfile", "port", default=6443)
        status = {
            **old,
            "observedGeneration": meta.get("generation", 1),
            "storage": {"dataStoreName": spec.get("dataStore") or "default", "driver": "etcd",
                        "setup": {"schema": spec.get("dataStoreSchema") or f"{namespace}_{name}",
                                  "user": spec.get("dataStoreUsername") or f"{namespace}_{name}"}},
            "kubernetesResources": {
                **(old.get("kubernetesResources") or {}),
                "version": {"status": phase, **({"version": version} if version else {})},
                "deployment": {
                    "name": name, "namespace": namespace, "selector": f"kamaji.clastix.io/name={name}",
                    "replicas": replicas, "readyReplicas": ready_replicas, "availableReplicas": ready_replicas,
                    "updatedReplicas": ready_replicas, "unavailableReplicas": max(0, replicas - ready_replicas),
                    "observedGeneration": meta.get("generation", 1),
                    "conditions": [{"type": "Available", "status": "True" if available else "False",
                                    "reason": reason, "message": message,
                                    "lastUpdateTime": old_condition.get("lastUpdateTime") or stamp,
                                    "lastTransitionTime": transition or stamp}],
                },
                "service": {"name": name, "namespace": namespace, "port": port},
            },
        }
        if endpoint:
            status["controlPlaneEndpoint"] = endpoint
            digest = hashlib.sha256(endpoint.encode()).hexdigest()[:32]
            status["kubeconfig"] = {"admin": {"secretName": f"{name}-admin-kubeconfig", "checksum": digest,
                                              "lastUpdate": stamp}}
        if _comparable(status) == _comparable(old):
            return
        new = dict(tcp)
        new["status"] = status
        self.store.replace(TENANT_CONTROL_PLANE, namespace, name, new, subresource="status")


def _comparable(status: dict) -> dict:
    """The status without timestamps, to avoid rewriting an unchanged status."""
    clean = copy.deepcopy(status)
    for cond in _get(clean, "kubernetesResources", "deployment", "conditions", default=[]) or []:
        cond.pop("lastUpdateTime", None)
        cond.pop("lastTransitionTime", None)
    admin = _get(clean, "kubeconfig", "admin")
    if isinstance(admin, dict):
        admin.pop("lastUpdate", None)
    return clean
