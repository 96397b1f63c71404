"""LAB STAND-IN for the kubelet's TLS bootstrap (never a real kubelet), used by the lab kubeadm emulator inside a
worker: with the bootstrap token, create a CertificateSigningRequest for system:node:<name>, wait for it to be
approved and issued, and keep the certificate and key as the kubelet's certificate store does. Follows
kubernetes/kubernetes pkg/kubelet/certificate/bootstrap/bootstrap.go (LoadClientCert, requestNodeCertificate,
digestedName), staging/src/k8s.io/client-go/util/certificate/csr/csr.go (RequestCertificate, WaitForCertificate)
and staging/src/k8s.io/client-go/util/certificate/certificate_store.go (fileStore.Update).

Runs with the worker's python3 (standard library only): the key and the request are made by `openssl` from the
worker's root filesystem, as the kubelet makes them in Go; the private key only ever goes through a pipe and a
0600 file, never a command line."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SIGNER_NAME = "kubernetes.io/kube-apiserver-client-kubelet"  # certificatesv1.KubeAPIServerClientKubeletSignerName
# bootstrap.go requestNodeCertificate: digital signature + client auth; key encipherment only for RSA keys, and the
# kubelet's own key is ECDSA P-256 (keyutil.MakeEllipticPrivateKeyPEM)
USAGES = ("digital signature", "client auth")
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
TMP_KEY = "kubelet-client.key.tmp"  # bootstrap.go tmpPrivateKeyFile, kept in the certificate directory
CURRENT = "kubelet-client-current.pem"
POLL_SECONDS = 0.25

# (status, body) = request(url_path, method, body): an HTTPS call authenticated with the bootstrap token
Requester = Callable[[str, str, dict | None], tuple[int, dict]]


class BootstrapError(Exception):
    """The TLS bootstrap failed (the message never carries the key or the token)."""


def _openssl(args: list[str], stdin: bytes | None = None) -> bytes:
    binary = shutil.which("openssl")
    if binary is None:
        raise BootstrapError("the lab kubelet stand-in needs openssl on the node to make its key and CSR")
    done = subprocess.run([binary, *args], input=stdin, capture_output=True, check=False, timeout=30)
    if done.returncode != 0:
        raise BootstrapError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.stdout


def private_key(pki: Path) -> Path:
    """bootstrap.go LoadClientCert: reuse kubelet-client.key.tmp when it holds a key (a restarted bootstrap),
    else generate an ECDSA P-256 key (SEC 1 "EC PRIVATE KEY" PEM, as keyutil writes it) into it, 0600."""
    pki.mkdir(parents=True, exist_ok=True)
    path = pki / TMP_KEY
    if path.exists() and b"PRIVATE KEY-----" in path.read_bytes():
        return path
    pem = _openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return path


def make_request(key: Path, node_name: str) -> bytes:
    """certutil.MakeCSR: subject O=system:nodes, CN=system:node:<name> (Go writes O before CN), no SANs."""
    return _openssl(["req", "-new", "-key", str(key), "-subj", f"/O=system:nodes/CN=system:node:{node_name}",
                     "-sha256", "-config", os.devnull])


def digested_name(key: Path, node_name: str, usages: tuple[str, ...] = USAGES) -> str:
    """bootstrap.go digestedName: node-csr-<base64url(sha512/256 of base64url(SPKI DER)|CN|O|usages|)>."""
    spki = _openssl(["pkey", "-in", str(key), "-pubout", "-outform", "DER"])
    digest = hashlib.new("sha512_256")
    for part in (spki, f"system:node:{node_name}".encode(), b"system:nodes", *(u.encode() for u in usages)):
        digest.update(base64.urlsafe_b64encode(part).rstrip(b"=") + b"|")
    return "node-csr-" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def request_certificate(request: Requester, csr_pem: bytes, name: str) -> str:
    """csr.go RequestCertificate: create the CSR; when one of that name exists already (a retried bootstrap with
    the same key), use it if it asks for the same thing (ensureCompatible). Returns its uid."""
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"request": base64.b64encode(csr_pem).decode(), "signerName": SIGNER_NAME,
                     "usages": list(USAGES)}}
    status, created = request(CSR_PATH, "POST", body)
    if status == 409:
        status, created = request(f"{CSR_PATH}/{name}", "GET", None)
        spec = created.get("spec") or {}
        if status == 200 and (spec.get("request") != body["spec"]["request"] or spec.get("signerName") !=
                              SIGNER_NAME or list(spec.get("usages") or []) != list(USAGES)):
            raise BootstrapError(f"retrieved csr is not compatible: {name}")
    if status not in (200, 201):
        raise BootstrapError(f"cannot create certificate signing request: HTTP {status} "
                             f"{created.get('message', '')}".rstrip())
    return (created.get("metadata") or {}).get("uid", "")


def wait_for_certificate(request: Requester, name: str, uid: str, timeout: float) -> bytes:
    """csr.go WaitForCertificate: poll the CSR (the kubelet watches it) until it carries a certificate and is
    approved; a Denied or Failed condition ends the wait with its reason; a different uid means the CSR was
    replaced."""
    deadline = time.monotonic() + timeout
    while True:
        status, csr = request(f"{CSR_PATH}/{name}", "GET", None)
        if status == 200:
            if uid and (csr.get("metadata") or {}).get("uid") != uid:
                raise BootstrapError(f"csr {name} was deleted and recreated while the kubelet waited for it")
            conditions = (csr.get("status") or {}).get("conditions") or []
            for c in conditions:
                if c.get("type") == "Denied":
                    raise BootstrapError(f"certificate signing request is denied, reason: {c.get('reason', '')}, "
                                         f"message: {c.get('message', '')}")
                if c.get("type") == "Failed":
                    raise BootstrapError(f"certificate signing request failed, reason: {c.get('reason', '')}, "
                                         f"message: {c.get('message', '')}")
            certificate = (csr.get("status") or {}).get("certificate")
            if certificate and any(c.get("type") == "Approved" for c in conditions):
                return base64.b64decode(certificate)
        elif status != 404:
            raise BootstrapError(f"cannot read certificate signing request {name}: HTTP {status}")
        if time.monotonic() >= deadline:
            raise BootstrapError(f"timed out waiting for certificate signing request {name} to be approved and "
                                 "issued")
        time.sleep(POLL_SECONDS)


def store_certificate(pki: Path, cert_pem: bytes, key: Path) -> Path:
    """certificate_store.go fileStore.Update: kubelet-client-<YYYY-MM-DD-HH-MM-SS>.pem (0600) with the certificate
    then the key, and kubelet-client-current.pem a symlink to it (relative here, so the same tree works when
    viewed from outside the node's root); then the temporary key is removed (bootstrap.go)."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
    dated = pki / f"kubelet-client-{stamp}.pem"
    fd = os.open(dated, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_pem.rstrip(b"\n") + b"\n" + key.read_bytes())
    current = pki / CURRENT
    staged = pki / f".{CURRENT}.new"
    staged.unlink(missing_ok=True)
    staged.symlink_to(dated.name)
    staged.replace(current)
    key.unlink(missing_ok=True)
    return current


def bootstrap(request: Requester, pki: Path, node_name: str, timeout: float) -> Path:
    """The whole client-certificate bootstrap; returns the path of kubelet-client-current.pem."""
    key = private_key(pki)
    csr_pem = make_request(key, node_name)
    name = digested_name(key, node_name)
    uid = request_certificate(request, csr_pem, name)
    cert_pem = wait_for_certificate(request, name, uid, timeout)
    return store_certificate(pki, cert_pem, key)
