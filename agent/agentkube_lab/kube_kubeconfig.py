"""Kubeconfig documents for the lab's API servers: the CA embedded (TLS verified) and a bearer token or a client
certificate."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml


def kubeconfig_yaml(server: str, ca_pem: bytes, user: str, token: str | None, cluster: str, *,
                    client_cert_pem: bytes | None = None, client_key_pem: bytes | None = None) -> str:
    """A single-context kubeconfig for `server`, trusting `ca_pem`, authenticating with `token` or, when given,
    the client certificate and key embedded as client-certificate-data/client-key-data (the form kubeadm's
    kubeconfig phase writes admin.conf in: kubernetes/kubernetes cmd/kubeadm/app/util/kubeconfig CreateWithCerts,
    context `<user>@<cluster>`)."""
    context = f"{user}@{cluster}"
    if client_cert_pem is not None and client_key_pem is not None:
        credential = {"client-certificate-data": base64.b64encode(client_cert_pem).decode(),
                      "client-key-data": base64.b64encode(client_key_pem).decode()}
    else:
        credential = {"token": token}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": credential}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` readable by the owner only (it holds credentials)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)
    return path
