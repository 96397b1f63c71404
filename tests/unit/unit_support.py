"""Helpers the unit tests share: loading the Ansible side's Python as Ansible does, and polling."""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COLLECTION_PACKAGE = "ansible_collections.agentkube.kamaji.plugins"


def load_module_utils(name: str):
    """A module_utils file of the collection, imported by the name Ansible gives it."""
    return importlib.import_module(f"{COLLECTION_PACKAGE}.module_utils.{name}")


def load_module(name: str):
    """A module of the collection (plugins/modules/<name>.py), imported without running it."""
    return importlib.import_module(f"{COLLECTION_PACKAGE}.modules.{name}")


def playbook_filters(module_name: str = "agentkube_filters") -> dict[str, Any]:
    """The playbooks' Jinja filters (plugins/filter/agentkube_filters.py) by name."""
    path = REPO / "plugins" / "filter" / "agentkube_filters.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s")


def kube_with_namespace(folder: Path, namespace: str):
    """A started Kubernetes emulator (schema checks off) with one extra namespace; the caller stops it."""
    from agentkube_lab.kube_emulator import KubeEmulator

    emulator = KubeEmulator(folder, validate_schema=False).start()
    emulator.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    return emulator


def grant_leader_election(emu, namespace: str, name: str, subject: dict[str, str]) -> None:
    """A Role with what leader election needs (get, create, update on leases) bound to subject, in namespace."""
    emu.put_object({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": name, "namespace": namespace},
                    "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                               "verbs": ["get", "create", "update"]}]})
    emu.put_object({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": namespace},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [subject]})


def start_tenant(state_dir: Path):
    """A Kubernetes emulator (the Kamaji parent) serving one running tenant, tenants/t1 at v1.35.7:
    (emulator, tenant). The caller stops the emulator."""
    from agentkube_lab.kube_emulator import KubeEmulator

    emulator = KubeEmulator(state_dir, ready_delay=0.05, validate_schema=False).start()
    emulator.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenants"}})
    emulator.put_object({
        "apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": "t1", "namespace": "tenants"},
        "spec": {"controlPlane": {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}},
                 "kubernetes": {"version": "v1.35.7", "kubelet": {}}, "dataStore": "default",
                 "dataStoreSchema": "t1"}})
    tenant = wait_for(lambda: (t := emulator.tenant("tenants", "t1")) is not None and t.running and t, 6,
                      what="the tenant API")
    return emulator, tenant
