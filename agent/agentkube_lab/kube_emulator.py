"""The lab's Kubernetes side in one object: a Kamaji parent cluster (HTTPS API with the Kamaji CRDs, a
simulated Kamaji controller and its webhooks, optional CRD schema validation) that starts one API
server per TenantControlPlane. Tests and the lab use this facade; clients use `write_kubeconfig()`."""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from pathlib import Path

from agentkube_lab.certs import LabCA
from agentkube_lab.kamaji_controller import READY_DELAY_ANNOTATION, KamajiController
from agentkube_lab.kamaji_webhook import KamajiTcpWebhook
from agentkube_lab.kube_http import Fault, KubeApiServer
from agentkube_lab.kube_kubeconfig import kubeconfig_yaml, write_private
from agentkube_lab.kube_rbac import SYSTEM_PRIVILEGED_GROUP, Identity
from agentkube_lab.kube_resources import (
    COORDINATION_TYPES,
    CORE_TYPES,
    DATA_STORE,
    KAMAJI_TYPES,
    RBAC_TYPES,
    ResourceCatalog,
)
from agentkube_lab.kube_store import ObjectStore
from agentkube_lab.kube_tenant import TenantApi

log = logging.getLogger(__name__)

__all__ = ["READY_DELAY_ANNOTATION", "KubeEmulator", "TenantApi"]


def default_crd_schema_path() -> Path | None:
    """`<repo>/../shared/contracts/kamaji/tenantcontrolplanes.crd.yaml` when that folder is present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "contracts" / "kamaji" / "tenantcontrolplanes.crd.yaml"
        if (parent / "pyproject.toml").exists() and candidate.exists():
            return candidate
    return None


class KubeEmulator:
    """A Kamaji management cluster on loopback. TenantControlPlanes are validated against the CRD's
    openAPIV3Schema from `crd_schema_path`, or, when None, from the contracts folder if it is present;
    `validate_schema=False` turns that off."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", port: int = 0, ready_delay: float = 1.0,
                 max_version: str = "v1.36", crd_schema_path: Path | None = None,
                 delete_delay: float | None = None, validate_schema: bool = True):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._ca = LabCA(self.state_dir / "pki")
        cert = self._ca.issue("kube-parent", hosts=(host, "localhost"))
        self._token = secrets.token_urlsafe(32)
        # bearer token -> identity: the admin (system:masters, RBAC bypassed) and identities added with
        # add_identity() (e.g. the agent's ServiceAccount), which RBAC authorizes like any other user
        self._identities: dict[str, Identity] = {self._token: Identity("kamaji-admin", (SYSTEM_PRIVILEGED_GROUP,))}
        self.store = ObjectStore(ResourceCatalog(CORE_TYPES + RBAC_TYPES + COORDINATION_TYPES + KAMAJI_TYPES))
        self.webhook = KamajiTcpWebhook(
            max_version, datastore_exists=lambda name: self.store.find(DATA_STORE, None, name) is not None)
        self.schema = None
        if validate_schema and crd_schema_path is None:
            crd_schema_path = default_crd_schema_path()
        if validate_schema and crd_schema_path is not None:
            from agentkube_lab.kube_crd_schema import CrdSchemaValidator

            self.schema = CrdSchemaValidator.from_file(Path(crd_schema_path))
            self.store.admission_hooks.append(self.schema)
        self.store.admission_hooks.append(self.webhook)
        self.server = KubeApiServer(self.store, cert.cert_file, cert.key_file, host=host, port=port,
                                    authenticate=self._authenticate,
                                    git_version="v1.33.4", name="kamaji-parent")
        self.controller = KamajiController(self.store, self.state_dir / "tenants", ready_delay=ready_delay,
                                           delete_delay=delete_delay, host=host)
        self._seed()

    def _seed(self) -> None:
        for ns in ("default", "kube-system", "kube-public", "kamaji-system"):
            self.store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.store.put({
            "apiVersion": "kamaji.clastix.io/v1alpha1", "kind": "DataStore", "metadata": {"name": "default"},
            "spec": {"driver": "etcd", "endpoints": ["etcd-0.etcd.kamaji-system.svc.cluster.local:2379"],
                     "tlsConfig": {"certificateAuthority": {"certificate": {"secretReference": {
                         "name": "etcd-certs", "namespace": "kamaji-system", "keyPath": "ca.crt"}}}}},
            "status": {"ready": True, "usedBy": []},
        })

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> KubeEmulator:
        self.server.start()
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.server.stop()

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ca_file(self) -> Path:
        return self._ca.ca_file

    @property
    def kubeconfig(self) -> str:
        return kubeconfig_yaml(self.url, self._ca.ca_pem, "kamaji-admin", self._token, "kamaji-parent")

    def write_kubeconfig(self, path: Path) -> Path:
        """The parent cluster's admin kubeconfig (CA embedded, verified), written 0600."""
        return write_private(Path(path), self.kubeconfig)

    # ---------------------------------------------------------------- identities (authentication + RBAC)
    def _authenticate(self, token: str) -> Identity | None:
        for known, identity in list(self._identities.items()):
            if secrets.compare_digest(token, known):
                return identity
        return None

    def add_identity(self, user: str, groups: tuple[str, ...] = ()) -> str:
        """A new bearer token for `user` in `groups` (a ServiceAccount is user
        system:serviceaccount:<ns>:<name>, groups system:serviceaccounts and system:serviceaccounts:<ns>). What it
        may do is what the Roles/ClusterRoles bound to it grant: nothing until bound."""
        token = secrets.token_urlsafe(32)
        self._identities[token] = Identity(user, tuple(groups))
        return token

    def identity_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> str:
        """A kubeconfig authenticating as `user` (see add_identity), for the agent's own identity."""
        return kubeconfig_yaml(self.url, self._ca.ca_pem, user.replace(":", "-"), self.add_identity(user, groups),
                               "kamaji-parent")

    # ---------------------------------------------------------------- tenants
    def tenant(self, namespace: str, name: str) -> TenantApi | None:
        return self.controller.tenants.get((namespace, name))

    # ---------------------------------------------------------------- direct store access (tests, lab)
    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        return self.store.find(self.store.resolve(api_version, kind), namespace, name)

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict]:
        return self.store.list(self.store.resolve(api_version, kind), namespace, label_selector,
                               field_selector)[0]

    def put_object(self, obj: dict) -> dict:
        """Create or replace an object (status included) without admission: for seeding and tests."""
        return self.store.put(obj)

    # ---------------------------------------------------------------- faults and counters
    @property
    def request_count(self) -> Counter[str]:
        """Requests to the parent API per path (query excluded)."""
        return self.server.request_count

    def inject(self, path_regex: str, status: int | None = 500, times: int | None = 1, *,
               method: str | None = None, delay: float = 0.0, message: str = "injected fault") -> Fault:
        """Answer the next `times` parent requests matching `path_regex` with `status` (None: only delay)."""
        return self.server.inject(path_regex, status, times, method=method, delay=delay, message=message)

    def clear_faults(self) -> None:
        self.server.clear_faults()

    def set_ready_delay(self, seconds: float, namespace: str | None = None, name: str | None = None) -> None:
        """The delay before Ready: for every TCP, or for one (namespace and name given)."""
        if namespace is None or name is None:
            self.controller.ready_delay = seconds
        else:
            self.controller.set_ready_delay(namespace, name, seconds)

    def stick(self, namespace: str, name: str, status: str = "NotReady", reason: str = "Stuck",
              message: str = "") -> None:
        """Hold a TCP in `status` (e.g. NotReady, with the reason in the deployment condition)."""
        self.controller.stick(namespace, name, status, reason, message)

    def unstick(self, namespace: str, name: str) -> None:
        self.controller.unstick(namespace, name)
