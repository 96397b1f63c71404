"""Kubeconfig documents for the lab's API servers: the CA embedded (TLS verified) and a bearer token."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml


def kubeconfig_yaml(server: str, ca_pem: bytes, user: str, token: str, cluster: str) -> str:
    """A single-context kubeconfig for `server`, trusting `ca_pem`, authenticating with `token`."""
    context = f"{user}@{cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
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
