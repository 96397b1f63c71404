"""A simulated Kamaji controller for the lab's parent cluster. It watches TenantControlPlanes in the store and,
like Kamaji, adds its finalizer, reports `status.kubernetesResources.version.status` as Kamaji's computeStatus
derives it from the control plane's Deployment (see compute_status), writes `status.observedGeneration` only at
the end of a whole reconcile pass, starts a per-tenant API server (which uploads kubeadm-config/kubelet-config as
Kamaji does, see kube_tenant), writes `<tcp>-admin-kubeconfig` (client certificates), and on deletion stops the
tenant and releases the finalizer after a delay, so "terminating" is observable. Faults: `stick()` and per-TCP
delays.

The Deployment is modelled, not run: a pass that changes its pod template (version, networkProfile such as
certSANs, deployment settings, dataStore, konnectivity) or its replicas starts a rollout lasting the ready delay;
a control plane that starts from nothing (create, wake) has no ready replica for the first half of it."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agentkube_lab.kube_resources import TENANT_CONTROL_PLANE
from agentkube_lab.kube_store import MERGE_PATCH, ApiError, ObjectStore, now_rfc3339
from agentkube_lab.kube_tenant import TenantApi

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


def compute_status(spec_replicas: int, spec_version: str, status_version: str | None, ready_replicas: int,
                   progressing: bool) -> str:
    """Kamaji's computeStatus (clastix/kamaji internal/resources/k8s_deployment_resource.go), in its order:
    Sleeping when spec replicas are 0; NotReady while no replica of the Deployment is ready; Ready when the
    Deployment is not progressing (isProgressingUpgrade: generation observed, no unavailable replica, updated =
    ready = replicas = desired); Upgrading when a version is recorded and the spec asks for another one;
    Provisioning when no version is recorded yet; otherwise Unknown (a rollout that is not a version change, e.g.
    a certSAN change). (WriteLimited, for spec.writePermissions, is not modelled.)"""
    if spec_replicas == 0:
        return "Sleeping"
    if ready_replicas == 0:
        return "NotReady"
    if not progressing:
        return "Ready"
    if status_version and spec_version != status_version:
        return "Upgrading"
    if not status_version:
        return "Provisioning"
    return "Unknown"


def _template_key(spec: dict) -> str:
    """What changes the control plane Deployment's pod template (a rollout), as clastix/kamaji
    internal/builders/controlplane/deployment.go builds it from the spec: not the replicas, not the kubelet
    settings (uploaded to the tenant), not the coreDNS/kubeProxy addons (applied in the tenant)."""
    deployment = dict(_get(spec, "controlPlane", "deployment", default={}) or {})
    deployment.pop("replicas", None)
    relevant = {"version": _get(spec, "kubernetes", "version", default=""),
                "admission": _get(spec, "kubernetes", "admissionControllers"),
                "network": spec.get("networkProfile"), "deployment": deployment,
                "dataStore": [spec.get(k) for k in ("dataStore", "dataStoreSchema", "dataStoreUsername")],
                "konnectivity": _get(spec, "addons", "konnectivity")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


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
        self._applied: dict[Key, tuple[str, int]] = {}  # key -> (pod template, replicas) the Deployment runs
        self._rollouts: dict[Key, tuple[tuple[str, int], float, float]] = {}  # key -> (target, 1st ready, done)
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
            self._applied.pop(key, None)
            self._rollouts.pop(key, None)
            tenant = self.tenants.get(key)
            if tenant is not None:
                tenant.stop()
            # UpdateTenantControlPlaneStatus records spec.kubernetes.version on Sleeping as on Ready
            self._write_status(tcp, compute_status(0, version, installed, 0, False), version, ready_replicas=0)
            self._observe(namespace, name)
            return
        tenant = self.tenants.get(key)
        running = tenant is not None and tenant.running
        wanted = (_template_key(spec), replicas)
        settled = (current == "Ready" and installed == version and self._applied.get(key) == wanted and running
                   and _get(tcp, "status", "observedGeneration") == generation)
        if settled:
            self._ensure_tenant(key, tcp)  # kubelet settings re-uploaded by the per-tenant controller
            return
        if self._applied.get(key) != wanted or not running:
            # a rollout: from nothing (create, wake: no replica ready during its first half), else rolling
            now, delay = self.clock(), self._delay_for(key, tcp)
            with self._lock:
                rollout = self._rollouts.get(key)
                if rollout is None or rollout[0] != wanted:
                    rollout = (wanted, now + (0.0 if running else delay / 2), now + delay)
                    self._rollouts[key] = rollout
            _, first_ready_at, done_at = rollout
            if now < done_at:
                if now < first_ready_at:
                    ready = 0
                elif running:
                    ready = min(replicas, _get(tcp, "status", "kubernetesResources", "deployment", "readyReplicas",
                                               default=replicas) or replicas)
                else:
                    ready = 1
                with self._lock:
                    self._due[key] = ("rollout", first_ready_at if now < first_ready_at else done_at)
                self._write_status(tcp, compute_status(replicas, version, installed, ready, True), installed,
                                   ready_replicas=ready)
                self._observe(namespace, name)
                return
            with self._lock:
                self._rollouts.pop(key, None)
                self._due.pop(key, None)
        tenant = self._ensure_tenant(key, tcp)
        self._applied[key] = wanted
        self._write_admin_secret(tcp, tenant)
        self._write_status(tcp, compute_status(replicas, version, installed, replicas, False), version,
                           ready_replicas=replicas, endpoint=tenant.endpoint)
        self._observe(namespace, name)

    def _observe(self, namespace: str, name: str) -> None:
        """The end of a whole reconcile pass: status.observedGeneration := metadata.generation, in its own status
        update (clastix/kamaji controllers/tenantcontrolplane_controller.go, after every resource is handled)."""
        tcp = self.store.find(TENANT_CONTROL_PLANE, namespace, name)
        if tcp is None or _get(tcp, "status", "observedGeneration") == tcp["metadata"].get("generation", 1):
            return
        new = dict(tcp)
        new["status"] = {**(tcp.get("status") or {}), "observedGeneration": tcp["metadata"].get("generation", 1)}
        self.store.replace(TENANT_CONTROL_PLANE, namespace, name, new, subresource="status")

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
        self._applied.pop(key, None)
        self._rollouts.pop(key, None)
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
            **old,  # observedGeneration is left as it is: _observe() writes it at the end of a pass
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
                    "observedGeneration": meta.get("generation", 1),  # the Deployment's own generation
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
