"""Molecule helper: serve a lab Kamaji parent with one tenant, and the lab's pkgs.k8s.io, on 127.0.0.1 until
SIGTERM.

Writes into --workdir: tenant-admin.conf (the tenant admin kubeconfig, 0600), parent.conf (the parent's),
tenant.json ({endpoint, caCertHash}), apt-repo.url (the base URL of the lab's Kubernetes apt repository,
agentkube_lab.k8s_apt_repo, serving kubelet/kubeadm/kubectl at --version), and last tenant-lab.pid (everything is
up). The tenant comes from a TenantControlPlane object, as Kamaji's controller in the lab
(agentkube_lab.kube_emulator) reconciles it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

from agentkube_lab.k8s_apt_repo import K8sAptRepo
from agentkube_lab.kube_emulator import KubeEmulator


def start_tenant(emulator: KubeEmulator, namespace: str, name: str, version: str):
    """The TenantControlPlane `namespace/name` at `version`, once its tenant API runs (30 s at most)."""
    emulator.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    emulator.put_object({
        "apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"controlPlane": {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}},
                 "kubernetes": {"version": version, "kubelet": {}},
                 "dataStore": "default", "dataStoreSchema": name.replace("-", "_")},
    })
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tenant = emulator.tenant(namespace, name)
        if tenant is not None and tenant.running:
            return tenant
        time.sleep(0.1)
    raise SystemExit("the lab tenant did not come up within 30s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--version", default="v1.35.7")
    parser.add_argument("--namespace", default="tenants")
    parser.add_argument("--name", default="molecule")
    args = parser.parse_args()
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    repo = K8sAptRepo(workdir / "apt", versions=[args.version]).start()
    emulator = KubeEmulator(workdir / "kube-state", ready_delay=0.1, validate_schema=False).start()
    try:
        tenant = start_tenant(emulator, args.namespace, args.name, args.version)
        emulator.write_kubeconfig(workdir / "parent.conf")
        admin = workdir / "tenant-admin.conf"
        admin.touch(mode=0o600)
        admin.write_text(tenant.kubeconfig)
        (workdir / "tenant.json").write_text(json.dumps({"endpoint": tenant.endpoint,
                                                          "caCertHash": tenant.ca_cert_hash}))
        (workdir / "apt-repo.url").write_text(repo.url + "\n")
        (workdir / "tenant-lab.pid").write_text(str(os.getpid()))
        stop.wait()
    finally:
        emulator.stop()
        repo.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
