"""certificates.k8s.io/v1 CertificateSigningRequests in a lab tenant, as kube-apiserver and kube-controller-manager
handle them for the kubelet's TLS bootstrap: the registry's rules for create and for updates through the main
resource and the `status` and `approval` subresources (requester identity filled in, validation errors named by
field, the CertificateApproval / CertificateSigning / CertificateSubjectRestriction admission plugins), and the
tenant's emulated kube-controller-manager: the csrapproving controller (kubelet client CSRs auto-approved after a
SubjectAccessReview against the tenant's authorizer) and the kubernetes.io/kube-apiserver-client-kubelet signer,
which issues the certificate from the tenant CA into `.status.certificate`. Each rule cites the kubernetes/kubernetes
file it is transcribed from."""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import logging
import re
import threading
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentkube_lab.certs import LabCA
from agentkube_lab.kube_patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from agentkube_lab.kube_rbac import Attributes, Decision, Identity, RbacAuthorizer
from agentkube_lab.kube_resources import CERTIFICATE_SIGNING_REQUEST, ResourceType
from agentkube_lab.kube_store import ApiError, ObjectStore, bad_request, invalid, now_rfc3339

log = logging.getLogger(__name__)

GROUP = "certificates.k8s.io"
# staging/src/k8s.io/api/certificates/v1/types.go (signer names) and .../v1beta1 (LegacyUnknownSignerName)
KUBELET_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
KUBE_APISERVER_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"
LEGACY_UNKNOWN_SIGNER = "kubernetes.io/legacy-unknown"
APPROVED, DENIED, FAILED = "Approved", "Denied", "Failed"
# pkg/apis/certificates/validation/validation.go: allValidUsages
VALID_USAGES = ("signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
                "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc")
_TRUE_ONLY_CONDITIONS = (APPROVED, DENIED, FAILED)
_DNS1123_LABEL = re.compile(r"\A[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(r"\A[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
# kube-controller-manager --cluster-signing-duration default (cmd/kube-controller-manager/app/options/
# csrsigningcontroller.go): one year; the signer backdates by five minutes
# (pkg/controller/certificates/signer/signer.go)
DEFAULT_TTL = dt.timedelta(hours=8760)
BACKDATE = dt.timedelta(minutes=5)


def _cause(reason: str, field: str, message: str) -> dict:
    return {"reason": reason, "field": field, "message": message}


def _is_csr(rtype: ResourceType) -> bool:
    return rtype.group == GROUP and rtype.kind == "CertificateSigningRequest"


# ---------------------------------------------------------------- parsing
def request_pem(obj: dict) -> bytes:
    """spec.request as bytes: a []byte field, base64 on the wire (an undecodable value is a 400, as the JSON
    decoder fails before validation)."""
    raw = (obj.get("spec") or {}).get("request")
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise bad_request('CertificateSigningRequest in version "v1" cannot be handled as a '
                          "CertificateSigningRequest: spec.request must be a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request('CertificateSigningRequest in version "v1" cannot be handled as a '
                          "CertificateSigningRequest: illegal base64 data in spec.request") from e


def parse_request(pem: bytes) -> x509.CertificateSigningRequest:
    """pkg/apis/certificates/helpers.go ParseCSR: the first PEM block must be a CERTIFICATE REQUEST."""
    match = re.search(rb"-----BEGIN ([A-Z0-9 ]+)-----", pem)
    if match is None or match.group(1) != b"CERTIFICATE REQUEST":
        raise ValueError("PEM block type must be CERTIFICATE REQUEST")
    return x509.load_pem_x509_csr(pem[match.start():])


def _subject(req: x509.CertificateSigningRequest, oid) -> list[str]:
    return [str(a.value) for a in req.subject.get_attributes_for_oid(oid)]


# ---------------------------------------------------------------- registry: create
def prepare_for_create(body: dict, identity: Identity) -> dict:
    """pkg/registry/certificates/certificates/strategy.go PrepareForCreate: the requester's user info replaces
    whatever spec.username/uid/groups/extra said, and status is cleared (no pre-approved requests)."""
    if not isinstance(body, dict):
        raise bad_request("the body of the request was in an unknown format")
    obj = copy.deepcopy(body)
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise bad_request("spec must be an object")
    for key in ("username", "uid", "groups", "extra"):
        spec.pop(key, None)
    spec["username"] = identity.user
    spec["groups"] = list(identity.groups)
    obj["status"] = {}
    return obj


def _validate_signer_name(signer: str) -> list[dict]:
    """ValidateSignerName (pkg/apis/core/validation, used by pkg/apis/certificates/validation): <domain>/<path>,
    the domain DNS-1123 labels with at least one dot, the path DNS-1123 subdomains separated by dots."""
    field = "spec.signerName"
    if not signer:
        return [_cause("FieldValueRequired", field, "Required value")]
    segments = signer.split("/")
    if len(segments) != 2:
        return [_cause("FieldValueInvalid", field, f'Invalid value: "{signer}": must be a fully qualified domain '
                                                   "and path of the form 'example.com/signer-name'")]
    domain, path = segments
    causes = []
    labels = domain.split(".")
    if any(not _DNS1123_LABEL.match(label) or len(label) > 63 for label in labels) or len(domain) > 253:
        causes.append(_cause("FieldValueInvalid", field, f'Invalid value: "{domain}": a lowercase RFC 1123 label '
                                                         "must consist of lower case alphanumeric characters or '-'"))
    if len(labels) < 2:
        causes.append(_cause("FieldValueInvalid", field, f'Invalid value: "{domain}": should be a domain with at '
                                                         "least two segments separated by dots"))
    if any(not _DNS1123_SUBDOMAIN.match(p) or len(p) > 253 for p in path.split(".")):
        causes.append(_cause("FieldValueInvalid", field, f'Invalid value: "{path}": a lowercase RFC 1123 '
                                                         "subdomain must consist of lower case alphanumeric "
                                                         "characters, '-' or '.'"))
    return causes


def validate_spec(obj: dict) -> list[dict]:
    """pkg/apis/certificates/validation/validation.go validateCertificateSigningRequest (v1, create): spec.request
    a parseable PEM CERTIFICATE REQUEST whose signature verifies; spec.usages required, each a known usage, no
    duplicates; spec.signerName valid and not the legacy-unknown signer; spec.expirationSeconds >= 600."""
    spec = obj.get("spec") or {}
    causes = []
    try:
        req = parse_request(request_pem(obj))
        if not req.is_signature_valid:
            raise ValueError("x509: ECDSA verification failure")
    except ApiError:
        raise
    except ValueError as e:
        causes.append(_cause("FieldValueInvalid", "spec.request", f'Invalid value: "<request>": {e}'))
    usages = spec.get("usages") or []
    if not isinstance(usages, list):
        raise bad_request("spec.usages must be a list")
    if not usages:
        causes.append(_cause("FieldValueRequired", "spec.usages", "Required value"))
    seen: set[str] = set()
    for i, usage in enumerate(usages):
        if usage not in VALID_USAGES:
            causes.append(_cause("FieldValueNotSupported", f"spec.usages[{i}]",
                                 f'Unsupported value: "{usage}": supported values: '
                                 + ", ".join(f'"{u}"' for u in sorted(VALID_USAGES))))
        if usage in seen:
            causes.append(_cause("FieldValueDuplicate", f"spec.usages[{i}]", f'Duplicate value: "{usage}"'))
        seen.add(usage)
    signer = spec.get("signerName") or ""
    if signer == LEGACY_UNKNOWN_SIGNER:
        causes.append(_cause("FieldValueInvalid", "spec.signerName", f'Invalid value: "{signer}": the legacy '
                                                                     "signerName is not allowed via this API version"))
    else:
        causes.extend(_validate_signer_name(signer))
    expiration = spec.get("expirationSeconds")
    if expiration is not None and (not isinstance(expiration, int) or expiration < 600):
        causes.append(_cause("FieldValueInvalid", "spec.expirationSeconds",
                             f"Invalid value: {expiration}: may not specify a duration less than 600 seconds "
                             "(10 minutes)"))
    return causes


def subject_restriction_error(obj: dict) -> str | None:
    """plugin/pkg/admission/certificates/subjectrestriction/admission.go: no kube-apiserver-client certificate
    for the system:masters group."""
    if (obj.get("spec") or {}).get("signerName") != KUBE_APISERVER_CLIENT_SIGNER:
        return None
    try:
        req = parse_request(request_pem(obj))
    except ValueError:
        return None
    if "system:masters" in _subject(req, NameOID.ORGANIZATION_NAME):
        return "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
    return None


def create(store: ObjectStore, rtype: ResourceType, identity: Identity, body: dict, dry_run: bool) -> dict:
    """POST .../certificatesigningrequests: PrepareForCreate, admission, validation, then the store."""
    obj = prepare_for_create(body, identity)
    name = (obj.get("metadata") or {}).get("name") or (obj.get("metadata") or {}).get("generateName") or ""
    restriction = subject_restriction_error(obj)
    if restriction:
        raise ApiError(403, "Forbidden", f'{rtype.plural}.{GROUP} "{name}" is forbidden: {restriction}',
                       {"name": name, "group": GROUP, "kind": rtype.plural})
    causes = validate_spec(obj)
    if causes:
        raise invalid(rtype, name, causes)
    return store.create(rtype, None, obj, dry_run=dry_run)


# ---------------------------------------------------------------- registry: updates
def _conditions(obj: dict) -> list[dict]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    if not isinstance(conditions, list) or not all(isinstance(c, dict) for c in conditions):
        raise bad_request("status.conditions must be a list of objects")
    return conditions


def _of_type(conditions: list[dict], kind: str) -> list[dict]:
    return [c for c in conditions if c.get("type") == kind]


def _validate_conditions(conditions: list[dict]) -> list[dict]:
    """validation.go validateConditions: a type is required; Approved/Denied/Failed may only be True; Approved and
    Denied are mutually exclusive; no duplicate types."""
    causes, seen = [], set()
    for i, c in enumerate(conditions):
        path = f"status.conditions[{i}]"
        kind, status = c.get("type") or "", c.get("status") or ""
        if not kind:
            causes.append(_cause("FieldValueRequired", f"{path}.type", "Required value"))
        allowed = ("True",) if kind in _TRUE_ONLY_CONDITIONS else ("False", "True", "Unknown")
        if not status:
            causes.append(_cause("FieldValueRequired", f"{path}.status", "Required value"))
        elif status not in allowed:
            causes.append(_cause("FieldValueNotSupported", f"{path}.status", f'Unsupported value: "{status}": '
                                 "supported values: " + ", ".join(f'"{a}"' for a in allowed)))
        other = {APPROVED: DENIED, DENIED: APPROVED}.get(kind)
        if other and other in seen:
            causes.append(_cause("FieldValueInvalid", f"{path}.type", f'Invalid value: "{kind}": Approved and '
                                                                      "Denied conditions are mutually exclusive"))
        if kind in seen:
            causes.append(_cause("FieldValueDuplicate", f"{path}.type", f'Duplicate value: "{kind}"'))
        seen.add(kind)
    return causes


def _validate_certificate(pem: bytes) -> str | None:
    """validation.go validateCertificate: only CERTIFICATE PEM blocks, at least one."""
    if not pem:
        return None
    blocks = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", pem)
    if not blocks:
        return "must contain at least one CERTIFICATE PEM block"
    if any(b != b"CERTIFICATE" for b in blocks):
        return "only CERTIFICATE PEM blocks are allowed"
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        return str(e)
    return None


def _populate_timestamps(new: list[dict], old: list[dict]) -> None:
    """strategy.go populateConditionTimestamps: lastUpdateTime (and lastTransitionTime when the status changed)
    set to now where the client left them out."""
    now = now_rfc3339()
    before = {c.get("type"): c for c in old}
    for c in new:
        c.setdefault("lastUpdateTime", now)
        prior = before.get(c.get("type"))
        if "lastTransitionTime" not in c:
            c["lastTransitionTime"] = prior.get("lastTransitionTime", now) if prior and \
                prior.get("status") == c.get("status") else now


def _may_act_on_signer(authorize: Callable[[Attributes], Decision], identity: Identity, verb: str,
                       signer: str) -> bool:
    """pkg/apis/certificates/... IsAuthorizedForSignerName (used by the CertificateApproval and CertificateSigning
    admission plugins, plugin/pkg/admission/certificates/approval and .../signing): `verb` on
    certificates.k8s.io signers named signerName, or named '<domain>/*'."""
    for name in (signer, signer.split("/")[0] + "/*"):
        if authorize(Attributes(identity, verb, True, api_group=GROUP, resource="signers", name=name)).allowed:
            return True
    return False


def _forbidden(rtype: ResourceType, name: str, message: str) -> ApiError:
    return ApiError(403, "Forbidden", f'{rtype.plural}.{GROUP} "{name}" is forbidden: {message}',
                    {"name": name, "group": GROUP, "kind": rtype.plural})


def update(store: ObjectStore, rtype: ResourceType, name: str, subresource: str, body: dict, identity: Identity,
           authorize: Callable[[Attributes], Decision], dry_run: bool) -> dict:
    """PUT of a CSR, its status or its approval (pkg/registry/certificates/certificates/strategy.go and
    validation.go validateCertificateSigningRequestUpdate): the main resource changes metadata only; `status` keeps
    spec and the Approved/Denied conditions, may set status.certificate once (CertificateSigning: `sign` on the
    signer); `approval` changes status.conditions only (CertificateApproval: `approve` on the signer). No update
    removes an Approved/Denied/Failed condition."""
    if not isinstance(body, dict):
        raise bad_request("the body of the request was in an unknown format")
    old = store.get(rtype, None, name)
    signer = old["spec"].get("signerName", "")
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k in ("name", "resourceVersion")}
    new = {"apiVersion": old["apiVersion"], "kind": old["kind"], "spec": old["spec"]}
    old_conditions, causes = _conditions(old), []
    if subresource == "":
        new["metadata"] = {**old["metadata"], **(body.get("metadata") or {})}
        return store.replace(rtype, None, name, new, "", dry_run)
    status = copy.deepcopy(old.get("status") or {})
    if subresource == "approval":
        conditions = copy.deepcopy(_conditions(body))
        status["conditions"] = conditions
        if not _may_act_on_signer(authorize, identity, "approve", signer):
            raise _forbidden(rtype, name, f'user not permitted to approve requests with signerName "{signer}"')
    elif subresource == "status":
        status = copy.deepcopy(body.get("status") or {})
        conditions = _conditions(body)
        for kind in (APPROVED, DENIED):
            if _of_type(conditions, kind) != _of_type(old_conditions, kind):
                causes.append(_cause("FieldValueForbidden", "status.conditions",
                                     f'Forbidden: updates may not add or modify a condition of type "{kind}"'))
        certificate = base64.b64decode(status.get("certificate") or "")
        previous = base64.b64decode((old.get("status") or {}).get("certificate") or "")
        if certificate != previous:
            if previous:
                causes.append(_cause("FieldValueForbidden", "status.certificate",
                                     "Forbidden: updates may not modify existing certificate content"))
            elif (why := _validate_certificate(certificate)) is not None:
                causes.append(_cause("FieldValueInvalid", "status.certificate",
                                     f'Invalid value: "<certificate data>": {why}'))
            elif not _may_act_on_signer(authorize, identity, "sign", signer):
                raise _forbidden(rtype, name, f'user not permitted to sign requests with signerName "{signer}"')
    else:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    for kind in _TRUE_ONLY_CONDITIONS:
        if len(_of_type(conditions, kind)) < len(_of_type(old_conditions, kind)):
            causes.append(_cause("FieldValueForbidden", "status.conditions",
                                 f'Forbidden: updates may not remove a condition of type "{kind}"'))
    causes.extend(_validate_conditions(conditions))
    if causes:
        raise invalid(rtype, name, causes)
    _populate_timestamps(conditions, old_conditions)
    new["metadata"] = meta
    new["status"] = status
    return store.replace(rtype, None, name, new, "status", dry_run)


def patched_body(old: dict, content_type: str, patch) -> dict:
    """The object a PATCH of a CSR (or of its status/approval) asks for, to go through update()."""
    kind = content_type.split(";")[0].strip()
    try:
        if kind == "application/json-patch+json":
            return json_patch(old, patch)
        if kind == "application/strategic-merge-patch+json":
            return strategic_merge_patch(old, patch)
        if kind == "application/merge-patch+json":
            return merge_patch(old, patch)
    except PatchError as e:
        raise ApiError(422, "Invalid", str(e)) from e
    raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {kind!r} for certificatesigningrequests")


# ---------------------------------------------------------------- kubelet client CSRs
def kubelet_client_csr_error(req: x509.CertificateSigningRequest, usages: list[str]) -> str | None:
    """pkg/apis/certificates/helpers.go ValidateKubeletClientCSR: O exactly [system:nodes], no DNS/email/IP/URI
    SANs, CN system:node:<name>, usages exactly {digital signature, client auth} (+ key encipherment, which only
    RSA keys need)."""
    if _subject(req, NameOID.ORGANIZATION_NAME) != ["system:nodes"]:
        return "subject organization is not system:nodes"
    try:
        sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    if sans is not None:
        for kind, what in ((x509.DNSName, "DNS"), (x509.RFC822Name, "Email"), (x509.IPAddress, "IP"),
                           (x509.UniformResourceIdentifier, "URI")):
            if sans.get_values_for_type(kind):
                return f"{what} subjectAltNames are not allowed"
    common_names = _subject(req, NameOID.COMMON_NAME)
    if not common_names or not common_names[0].startswith("system:node:"):
        return "subject common name does not begin with system:node:"
    if set(usages) not in ({"digital signature", "client auth"},
                           {"digital signature", "key encipherment", "client auth"}) or len(set(usages)) != len(usages):
        return "usages did not match [client auth digital signature key encipherment]"
    return None


def _condition(obj: dict, kind: str) -> dict | None:
    found = _of_type((obj.get("status") or {}).get("conditions") or [], kind)
    return found[0] if found else None


_KEY_USAGE_BITS = {"signing": "digital_signature", "digital signature": "digital_signature",
                   "content commitment": "content_commitment", "key encipherment": "key_encipherment",
                   "key agreement": "key_agreement", "data encipherment": "data_encipherment",
                   "cert sign": "key_cert_sign", "crl sign": "crl_sign", "encipher only": "encipher_only",
                   "decipher only": "decipher_only"}
_EXT_KEY_USAGES = {"server auth": ExtendedKeyUsageOID.SERVER_AUTH, "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
                   "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
                   "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
                   "s/mime": ExtendedKeyUsageOID.EMAIL_PROTECTION, "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
                   "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING, "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


def sign_request(ca: LabCA, req: x509.CertificateSigningRequest, usages: list[str],
                 expiration_seconds: int | None = None, now: dt.datetime | None = None) -> bytes:
    """The local signer (pkg/controller/certificates/authority/authority.go Sign with policies.go
    PermissiveSigningPolicy, as pkg/controller/certificates/signer/signer.go calls it): the request's signature
    checked, a random 128-bit serial, the request's subject, SANs and public key, key usage and extended key
    usage from spec.usages, CA:false, NotBefore backdated 5 minutes, NotAfter = now + the TTL (the requested
    expirationSeconds, between 10 minutes and the default), never past the CA's own NotAfter. The CA's key and
    certificate are read from the LabCA (certs.py offers no public signing call)."""
    if not req.is_signature_valid:
        raise ValueError("unable to verify certificate request signature")
    ca_cert, ca_key = ca._ca_cert, ca._ca_key  # the tenant CA this signer stands for
    now = now or dt.datetime.now(dt.UTC)
    ttl = DEFAULT_TTL
    if expiration_seconds is not None:
        ttl = min(DEFAULT_TTL, max(dt.timedelta(minutes=10), dt.timedelta(seconds=expiration_seconds)))
    not_after = min(now + ttl, ca_cert.not_valid_after_utc)
    bits = dict.fromkeys(_KEY_USAGE_BITS.values(), False)
    for usage in usages:
        if usage in _KEY_USAGE_BITS:
            bits[_KEY_USAGE_BITS[usage]] = True
        elif usage not in _EXT_KEY_USAGES:
            raise ValueError(f"unrecognized usage values: {usage!r}")
    builder = (x509.CertificateBuilder()
               .subject_name(req.subject).issuer_name(ca_cert.subject).public_key(req.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - BACKDATE)
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if any(bits.values()):
        builder = builder.add_extension(x509.KeyUsage(**bits), critical=True)
    ext = sorted({_EXT_KEY_USAGES[u] for u in usages if u in _EXT_KEY_USAGES}, key=lambda o: o.dotted_string)
    if ext:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ext), critical=False)
    try:
        sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(sans.value, critical=sans.critical)
    except x509.ExtensionNotFound:
        pass
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------- the emulated kube-controller-manager
class CsrControllers:
    """The tenant's kube-controller-manager for CSRs: csrapproving (pkg/controller/certificates/approver/
    sarapprove.go) and csrsigning-kubelet-client (pkg/controller/certificates/signer/signer.go). A store listener
    wakes a worker thread on every CSR change (the informers' part); a one-second resync catches the rest. Both
    write through the registry's status/approval rules, as the controllers do through the API."""

    def __init__(self, store: ObjectStore, ca: LabCA, *, resync_seconds: float = 1.0):
        self.store, self.ca = store, ca
        self.authorizer = RbacAuthorizer(store)  # what a SubjectAccessReview asks: the apiserver's authorizer
        self.resync_seconds = resync_seconds
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        store.listeners.append(self._on_change)

    @property
    def _type(self) -> ResourceType:
        return self.store.catalog.by_kind(f"{GROUP}/v1", "CertificateSigningRequest") or CERTIFICATE_SIGNING_REQUEST

    def _on_change(self, event: str, rtype: ResourceType, obj: dict) -> None:
        if _is_csr(rtype) and event != "DELETED":
            self._wake.set()  # a listener only signals (it runs with the store lock held)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kube-controller-manager-csr", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.resync_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync_all()
            except Exception:  # a controller keeps running, as the real one requeues
                log.exception("lab kube-controller-manager: CSR sync failed")

    def sync_all(self) -> None:
        for csr in self.store.list(self._type)[0]:
            try:
                self.approve(csr)
                self.sign(self.store.get(self._type, None, csr["metadata"]["name"]))
            except ApiError as e:
                log.info("lab kube-controller-manager: CSR %s: %s", csr["metadata"]["name"], e.message)

    # csrapproving
    def may_create_subresource(self, csr: dict, subresource: str) -> bool:
        """sarapprove.go authorize: a SubjectAccessReview for the CSR's requester (spec.username/groups):
        may they `create` certificatesigningrequests/<subresource>?"""
        spec = csr.get("spec") or {}
        requester = Identity(spec.get("username") or "", tuple(spec.get("groups") or ()))
        return self.authorizer.authorize(Attributes(requester, "create", True, api_group=GROUP,
                                                    resource="certificatesigningrequests",
                                                    subresource=subresource)).allowed

    def approve(self, csr: dict) -> bool:
        """sarapprove.go handle: nothing to do once a certificate is issued or the CSR is approved or denied;
        recognizers in order: selfnodeclient (requester == CN) then nodeclient, each a kubelet client CSR
        (isNodeClientCert: signerName kube-apiserver-client-kubelet and ValidateKubeletClientCSR); the first
        whose SubjectAccessReview allows it approves (reason AutoApproved). Nothing recognized, or no review
        allowed: the CSR stays pending (a human may approve or deny it)."""
        status, spec = csr.get("status") or {}, csr.get("spec") or {}
        if status.get("certificate") or _condition(csr, APPROVED) or _condition(csr, DENIED):
            return False
        if spec.get("signerName") != KUBELET_CLIENT_SIGNER:
            return False
        req = parse_request(request_pem(csr))
        if kubelet_client_csr_error(req, list(spec.get("usages") or [])) is not None:
            return False
        common_name = _subject(req, NameOID.COMMON_NAME)[0]
        recognizers = []
        if spec.get("username") == common_name:
            recognizers.append(("selfnodeclient", "Auto approving self kubelet client certificate after "
                                                  "SubjectAccessReview."))
        recognizers.append(("nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."))
        for subresource, message in recognizers:
            if self.may_create_subresource(csr, subresource):
                body = copy.deepcopy(csr)
                body["status"].setdefault("conditions", []).append(
                    {"type": APPROVED, "status": "True", "reason": "AutoApproved", "message": message})
                update(self.store, self._type, csr["metadata"]["name"], "approval", body, _CONTROLLER,
                       lambda _attrs: Decision(True), False)
                return True
        return False

    # csrsigning-kubelet-client
    def sign(self, csr: dict) -> bool:
        """signer.go handle: only approved, not failed CSRs for this signer; one that fails
        ValidateKubeletClientCSR gets a Failed condition (SignerValidationFailure) instead of a certificate."""
        spec, status = csr.get("spec") or {}, csr.get("status") or {}
        if not _condition(csr, APPROVED) or _condition(csr, FAILED) or status.get("certificate"):
            return False
        if spec.get("signerName") != KUBELET_CLIENT_SIGNER:
            return False
        req = parse_request(request_pem(csr))
        usages = list(spec.get("usages") or [])
        body = copy.deepcopy(csr)
        why = kubelet_client_csr_error(req, usages)
        if why is not None:
            body["status"].setdefault("conditions", []).append(
                {"type": FAILED, "status": "True", "reason": "SignerValidationFailure", "message": why})
        else:
            pem = sign_request(self.ca, req, usages, spec.get("expirationSeconds"))
            body["status"]["certificate"] = base64.b64encode(pem).decode()
        update(self.store, self._type, csr["metadata"]["name"], "status", body, _CONTROLLER,
               lambda _attrs: Decision(True), False)
        return why is None


# the controllers' own identity (kube-controller-manager's service accounts are not emulated)
_CONTROLLER = Identity("system:kube-controller-manager")
