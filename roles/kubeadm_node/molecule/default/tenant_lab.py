"""Molecule helper: serve a lab Kamaji parent with one tenant on 127.0.0.1 until SIGTERM.

Writes into --workdir: tenant-admin.conf (the tenant admin kubeconfig, 0600), parent.conf (the parent's),
tenant.json ({endpoint, caCertHash}), tenant-lab.pid. The tenant comes from a TenantControlPlane object,
as Kamaji's controller in the lab (agentkube_lab.kube_emulator) reconciles it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

from agentkube_lab.kube_emulator import KubeEmulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--version", default="v1.35.7")
    parser.add_argument("--namespace", default="tenants")
    parser.add_argument("--name", default="molecule")
    args = parser.parse_args()
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    emulator = KubeEmulator(workdir / "kube-state", ready_delay=0.1, validate_schema=False).start()
    emulator.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.namespace}})
    emulator.put_object({
        "apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": args.name, "namespace": args.namespace},
        "spec": {"controlPlane": {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}},
                 "kubernetes": {"version": args.version, "kubelet": {}},
                 "dataStore": "default", "dataStoreSchema": args.name.replace("-", "_")},
    })
    deadline = time.monotonic() + 30
    tenant = None
    while time.monotonic() < deadline:
        tenant = emulator.tenant(args.namespace, args.name)
        if tenant is not None and tenant.running:
            break
        time.sleep(0.1)
    else:
        raise SystemExit("the lab tenant did not come up within 30s")
    emulator.write_kubeconfig(workdir / "parent.conf")
    admin = workdir / "tenant-admin.conf"
    admin.touch(mode=0o600)
    admin.write_text(tenant.kubeconfig)
    (workdir / "tenant.json").write_text(json.dumps({"endpoint": tenant.endpoint,
                                                      "caCertHash": tenant.ca_cert_hash}))
    (workdir / "tenant-lab.pid").write_text(str(os.getpid()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
