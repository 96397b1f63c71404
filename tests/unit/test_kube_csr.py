"""The kubelet's TLS bootstrap in a lab tenant: CertificateSigningRequest validation (errors named by field), the
csrapproving rule (auto-approval only for a requester allowed certificatesigningrequests/nodeclient and only for a
kubelet client CSR), the kubelet client signer (a certificate chained to the tenant CA with the CSR's subject), and
Node registration: a bootstrap token may no longer create a Node, the node's own certificate identity may."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from unit_support import start_tenant

from agentkube_lab import kubeadm_emulator as ke

TOKEN_ID, TOKEN_SECRET = "abcdef", "0123456789abcdef"
TOKEN = f"{TOKEN_ID}.{TOKEN_SECRET}"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


@pytest.fixture
def tenant(tmp_path):
    emulator, t = start_tenant(tmp_path / "kube")
    yield t
    emulator.stop()


def add_token(tenant, token_id: str = TOKEN_ID, extra_groups: str = "system:bootstrappers:kubeadm:default-node-token"):
    expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tenant.store.put({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                      "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
                      "stringData": {"token-id": token_id, "token-secret": TOKEN_SECRET, "expiration": expiration,
                                     "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                                     "auth-extra-groups": extra_groups}})


def call(tenant, method: str, path: str, body: dict | None = None, *, token: str | None = TOKEN,
         context: ssl.SSLContext | None = None) -> tuple[int, dict]:
    context = context or ssl.create_default_context(cadata=tenant.ca_pem.decode())
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(tenant.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def admin(tenant, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    return call(tenant, method, path, body, token=None, context=tenant.admin_ssl_context())


def make_csr(cn: str = "system:node:w0", orgs: tuple[str, ...] = ("system:nodes",),
             dns: tuple[str, ...] = ()) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return key, builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def csr_body(name: str, pem: bytes, *, usages=("digital signature", "client auth"), signer=KUBELET_SIGNER,
             **spec) -> dict:
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
            "spec": {"request": base64.b64encode(pem).decode(), "signerName": signer, "usages": list(usages),
                     **spec}}


def wait_csr(tenant, name: str, done, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, csr = admin(tenant, "GET", f"{CSRS}/{name}")
        if done(csr) or time.monotonic() > deadline:
            return csr
        time.sleep(0.05)


def conditions(csr: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (csr.get("status") or {}).get("conditions") or []}


def issued(csr: dict) -> bool:
    return bool((csr.get("status") or {}).get("certificate")) or "Failed" in conditions(csr)


# ---------------------------------------------------------------- validation
def test_create_validation_names_each_bad_field(tenant):
    add_token(tenant)
    _, good = make_csr()
    bad = csr_body("bad", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                   usages=("client auth", "client auth", "flying"), signer="kubernetes.io/legacy-unknown",
                   expirationSeconds=60)
    status, body = call(tenant, "POST", CSRS, bad)
    assert status == 422, body
    fields = {c["field"]: c["message"] for c in body["details"]["causes"]}
    assert "PEM block type must be CERTIFICATE REQUEST" in fields["spec.request"]
    assert fields["spec.usages[1]"].startswith('Duplicate value: "client auth"')
    assert fields["spec.usages[2]"].startswith('Unsupported value: "flying"')
    assert "legacy signerName is not allowed" in fields["spec.signerName"]
    assert "600 seconds" in fields["spec.expirationSeconds"]

    status, body = call(tenant, "POST", CSRS, csr_body("nousage", good, usages=(), signer="example"))
    assert status == 422
    fields = {c["field"]: c["message"] for c in body["details"]["causes"]}
    assert fields["spec.usages"] == "Required value"
    assert "example.com/signer-name" in fields["spec.signerName"]


def test_a_request_whose_signature_does_not_verify_is_invalid(tenant):
    add_token(tenant)
    _, pem = make_csr()
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    tampered = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    status, body = call(tenant, "POST", CSRS, csr_body("tampered", tampered))
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.request", body


def test_the_requester_is_recorded_and_status_cannot_be_preset(tenant):
    add_token(tenant)
    _, pem = make_csr()
    body = csr_body("preset", pem, username="system:admin", groups=["system:masters"])
    body["status"] = {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "AAAA"}
    status, created = call(tenant, "POST", CSRS, body)
    assert status == 201, created
    assert created["spec"]["username"] == f"system:bootstrap:{TOKEN_ID}"
    assert "system:bootstrappers:kubeadm:default-node-token" in created["spec"]["groups"]
    assert "system:masters" not in created["spec"]["groups"]
    assert "certificate" not in created.get("status", {})


# ---------------------------------------------------------------- approval and signing
def test_a_kubelet_client_csr_from_a_node_bootstrapper_is_approved_and_signed_by_the_tenant_ca(tenant):
    add_token(tenant)
    key, pem = make_csr()
    assert call(tenant, "POST", CSRS, csr_body("node-csr-Ab_c1", pem))[0] == 201  # the kubelet's name shape

    csr = wait_csr(tenant, "node-csr-Ab_c1", issued)
    approved = conditions(csr)["Approved"]
    assert approved["reason"] == "AutoApproved" and "kubelet client certificate" in approved["message"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(csr["status"]["certificate"]))
    ca = x509.load_pem_x509_certificate(tenant.ca_pem)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:w0"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:nodes"]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_requester_not_allowed_nodeclient_is_not_approved(tenant):
    add_token(tenant, extra_groups="system:bootstrappers:other")  # no kubeadm:node-autoapprove-bootstrap binding
    _, pem = make_csr()
    status, body = call(tenant, "POST", CSRS, csr_body("other", pem))
    assert status == 403, body  # system:node-bootstrapper is bound to kubeadm's group only
    # an admin's CSR is not auto-approved either: the approver's review asks about the requester (the admin's
    # cluster-admin would pass), so use a user allowed to create CSRs but not nodeclient
    tenant.store.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                      "metadata": {"name": "other-bootstrappers"},
                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "system:node-bootstrapper"},
                      "subjects": [{"kind": "Group", "name": "system:bootstrappers:other"}]})
    assert call(tenant, "POST", CSRS, csr_body("other", pem))[0] == 201
    time.sleep(1.5)  # longer than the controllers' resync
    _, csr = admin(tenant, "GET", f"{CSRS}/other")
    assert conditions(csr) == {} and "certificate" not in csr["status"]


@pytest.mark.parametrize(("cn", "orgs", "dns", "usages"), [
    ("w0", ("system:nodes",), (), ("digital signature", "client auth")),                  # CN not system:node:
    ("system:node:w0", ("system:masters",), (), ("digital signature", "client auth")),    # wrong O
    ("system:node:w0", ("system:nodes",), (), ("digital signature", "server auth")),      # wrong usages
    ("system:node:w0", ("system:nodes",), ("w0.example",), ("digital signature", "client auth")),  # a SAN
])
def test_a_csr_that_is_not_a_kubelet_client_csr_stays_pending_and_fails_when_approved(tenant, cn, orgs, dns, usages):
    add_token(tenant)
    _, pem = make_csr(cn, orgs, dns)
    assert call(tenant, "POST", CSRS, csr_body("odd", pem, usages=usages))[0] == 201
    time.sleep(1.5)
    _, csr = admin(tenant, "GET", f"{CSRS}/odd")
    assert conditions(csr) == {}  # the approver does not recognise it

    csr["status"]["conditions"] = [{"type": "Approved", "status": "True", "reason": "Manual", "message": "x"}]
    status, approved = admin(tenant, "PUT", f"{CSRS}/odd/approval", csr)
    assert status == 200, approved
    csr = wait_csr(tenant, "odd", issued)
    assert conditions(csr)["Failed"]["reason"] == "SignerValidationFailure"
    assert "certificate" not in csr["status"]


def test_a_denied_csr_is_never_signed_and_approval_needs_the_approve_verb(tenant):
    add_token(tenant, extra_groups="system:bootstrappers:other")
    tenant.store.put({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                      "metadata": {"name": "other-bootstrappers"},
                      "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "system:node-bootstrapper"},
                      "subjects": [{"kind": "Group", "name": "system:bootstrappers:other"}]})
    _, pem = make_csr()
    assert call(tenant, "POST", CSRS, csr_body("deny-me", pem))[0] == 201
    _, csr = admin(tenant, "GET", f"{CSRS}/deny-me")
    csr["status"]["conditions"] = [{"type": "Approved", "status": "True"}]
    status, body = call(tenant, "PUT", f"{CSRS}/deny-me/approval", csr)  # the requester approving itself
    assert status == 403, body
    csr["status"]["conditions"] = [{"type": "Denied", "status": "True", "reason": "NotOurs", "message": "no"}]
    assert admin(tenant, "PUT", f"{CSRS}/deny-me/approval", csr)[0] == 200
    time.sleep(1.5)
    _, csr = admin(tenant, "GET", f"{CSRS}/deny-me")
    assert set(conditions(csr)) == {"Denied"} and "certificate" not in csr["status"]
    csr["status"]["conditions"] = []
    status, body = admin(tenant, "PUT", f"{CSRS}/deny-me/approval", csr)
    assert status == 422 and 'may not remove a condition of type "Denied"' in body["message"]


# ---------------------------------------------------------------- Node registration
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w0"}}


def node_context(tenant, tmp_path, name: str = "w0") -> ssl.SSLContext:
    """A client context with a certificate the tenant's signer issued for system:node:<name>."""
    key, pem = make_csr(f"system:node:{name}")
    assert call(tenant, "POST", CSRS, csr_body(f"node-{name}", pem))[0] == 201
    csr = wait_csr(tenant, f"node-{name}", issued)
    pair = tmp_path / f"{name}.pem"
    pair.write_bytes(base64.b64decode(csr["status"]["certificate"]) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    context = ssl.create_default_context(cadata=tenant.ca_pem.decode())
    context.load_cert_chain(str(pair))
    return context


def test_a_bootstrap_token_cannot_register_a_node_but_the_nodes_certificate_can(tenant, tmp_path):
    add_token(tenant)
    status, body = call(tenant, "POST", "/api/v1/nodes", NODE)
    assert status == 403, body
    assert f'User "system:bootstrap:{TOKEN_ID}" cannot create resource "nodes"' in body["message"]

    context = node_context(tenant, tmp_path)
    status, node = call(tenant, "POST", "/api/v1/nodes", NODE, token=None, context=context)
    assert status == 201, node
    assert call(tenant, "GET", "/api/v1/nodes/w0", token=None, context=context)[0] == 200
    # NodeRestriction: only its own Node; the Node authorizer: no reading other Nodes
    other = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w1"}}
    status, body = call(tenant, "POST", "/api/v1/nodes", other, token=None, context=context)
    assert status == 403 and 'node "w0" is not allowed to modify node "w1"' in body["message"]
    assert call(tenant, "GET", "/api/v1/nodes", token=None, context=context)[0] == 403


def test_kubeadm_join_bootstraps_the_kubelet_certificate_and_registers_as_the_node(tenant, tmp_path, monkeypatch):
    add_token(tenant)
    root = tmp_path / "root"
    ke.install_into_rootfs(root, "v1.35.7")
    (root / "etc/sysctl.d").mkdir(parents=True)
    (root / "etc/sysctl.d/99-kubernetes.conf").write_text("net.ipv4.ip_forward = 1\n")
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n')
    monkeypatch.setenv("AGENTKUBE_LAB_ROOT", str(root))
    config = tmp_path / "join.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration", "nodeRegistration": {"name": "w0"},
        "discovery": {"bootstrapToken": {"apiServerEndpoint": tenant.endpoint, "token": TOKEN,
                                         "caCertHashes": [tenant.ca_cert_hash]}}}))
    events = []
    tenant.store.listeners.append(lambda event, rtype, obj: events.append((event, rtype.kind)))

    assert ke.kubeadm_main(["join", "--config", str(config)]) == 0

    pki = root / "var/lib/kubelet/pki"
    current = pki / "kubelet-client-current.pem"
    assert current.is_symlink() and current.resolve().name.startswith("kubelet-client-20")
    assert oct(current.resolve().stat().st_mode & 0o777) == "0o600"
    assert not (pki / "kubelet-client.key.tmp").exists()
    text = current.read_bytes()
    assert b"BEGIN CERTIFICATE" in text and b"BEGIN EC PRIVATE KEY" in text
    cert = x509.load_pem_x509_certificate(text)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(tenant.ca_pem))
    assert cert.subject.rfc4514_string() == "CN=system:node:w0,O=system:nodes"
    kubelet_conf = (root / "etc/kubernetes/kubelet.conf").read_text()
    assert "/var/lib/kubelet/pki/kubelet-client-current.pem" in kubelet_conf
    csr = tenant.store.list(tenant.store.resolve("certificates.k8s.io/v1", "CertificateSigningRequest"))[0][0]
    assert csr["metadata"]["name"].startswith("node-csr-")
    assert csr["spec"]["username"] == f"system:bootstrap:{TOKEN_ID}"
    assert csr["spec"]["usages"] == ["digital signature", "client auth"]
    # the CSR was created, approved and signed before the Node appeared
    kinds = [kind for _, kind in events]
    assert kinds.index("CertificateSigningRequest") < kinds.index("Node")
    assert tenant.store.find(tenant.store.resolve("v1", "Node"), None, "w0") is not None
