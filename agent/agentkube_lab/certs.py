"""A lab certificate authority, so every lab server speaks real TLS that clients verify (never disabled)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerCert:
    cert_file: Path
    key_file: Path
    ca_file: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class LabCA:
    """Creates (once) a CA under `directory` and issues loopback server certificates from it."""

    def __init__(self, directory: Path, name: str = "agentkube lab CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.dir / "ca.crt"
        self._ca_key_file = self.dir / "ca.key"
        if self.ca_file.exists() and self._ca_key_file.exists():
            self._ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            self._ca_key = serialization.load_pem_private_key(self._ca_key_file.read_bytes(), None)
        else:
            self._ca_key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            now = dt.datetime.now(dt.UTC)
            self._ca_cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(self._ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()), critical=False)
                .sign(self._ca_key, hashes.SHA256())
            )
            self._ca_key_file.write_bytes(_key_pem(self._ca_key))
            self._ca_key_file.chmod(0o600)
            self.ca_file.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_pem(self) -> bytes:
        return self._ca_cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCert:
        """Issue (or reuse) a server certificate `<name>.crt`/`<name>.key` valid for `hosts`."""
        cert_file, key_file = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if cert_file.exists() and key_file.exists():
            return ServerCert(cert_file, key_file, self.ca_file)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            # Python >= 3.13 verifies strictly (VERIFY_X509_STRICT): the AKI must be present
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                           critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        key_file.write_bytes(_key_pem(key))
        key_file.chmod(0o600)
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ServerCert(cert_file, key_file, self.ca_file)


@dataclass(frozen=True)
class ClientCert:
    cert_pem: bytes
    key_pem: bytes


def issue_client_cert(ca: LabCA, name: str, common_name: str, organizations: tuple[str, ...] = ()) -> ClientCert:
    """Issue (or reuse) a client certificate `<name>.crt`/`<name>.key` from `ca`: subject CN=`common_name`,
    O=each of `organizations`, ExtKeyUsage clientAuth, as kubeadm's kubeconfig phase issues the client
    certificates of admin.conf/super-admin.conf (kubernetes/kubernetes cmd/kubeadm/app/phases/kubeconfig/
    kubeconfig.go getKubeConfigSpecsBase + pkiutil.NewCertAndKey); the API server maps CN to the user name
    and each O to a group (k8s.io/apiserver pkg/authentication/request/x509 CommonNameUserConversion)."""
    cert_file, key_file = ca.dir / f"{name}.crt", ca.dir / f"{name}.key"
    if cert_file.exists() and key_file.exists():
        return ClientCert(cert_file.read_bytes(), key_file.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca._ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca._ca_key.public_key()), critical=False)
        .sign(ca._ca_key, hashes.SHA256())
    )
    key_file.write_bytes(_key_pem(key))
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ClientCert(cert_file.read_bytes(), key_file.read_bytes())
