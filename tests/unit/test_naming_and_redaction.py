"""Names derived from a Fulcrum service (DNS-1123, stable, distinct per service id) and the redaction of
secret values from text and JSON (including JSON-escaped forms)."""

from __future__ import annotations

import base64
import json

import pytest

from agentkube.core.naming import (
    DNS1035_LABEL,
    SUFFIX_LEN,
    ServiceNameError,
    agent_instance_id,
    node_name,
    service_suffix,
    slugify,
    tenant_name,
    tenant_name_belongs,
    tenant_name_for,
)
from agentkube.core.redaction import MASK, MIN_SECRET_LEN, Redactor, is_secret_key, secret_values_in

SERVICE_ID = "5f0c3e4e-6d1a-4a4b-9e33-0c4c7b2b8f10"

NAMES = [
    "My Cluster",
    "UPPER CASE",
    "team_a.prod/cluster #1",
    "Clüster für Ünïcode ☃",
    "日本語のクラスター",
    "x" * 100,
    "a-" * 50,
    "---",
    "-leading and trailing-",
    "0123456789",
    "a" * 29 + "-" + "b" * 10,  # the cut falls on a '-'
]


# -- naming -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service_name", NAMES)
def test_any_service_name_gives_a_dns_1035_label(service_name):
    name = tenant_name(service_name, SERVICE_ID)
    assert DNS1035_LABEL.fullmatch(name), name  # Kamaji's admission: internal/webhook/handlers/tcp_name.go
    assert len(name) <= 63
    assert name.endswith("-" + service_suffix(SERVICE_ID))
    assert tenant_name(service_name, SERVICE_ID) == name  # stable


@pytest.mark.parametrize("service_name", NAMES)
def test_the_longest_node_names_still_fit(service_name):
    tenant = tenant_name(service_name, SERVICE_ID)
    assert len(node_name(tenant, "p" * 20, 49)) <= 63  # pool names are at most 20, counts at most 50


def test_names_keep_what_they_can_of_the_service_name():
    assert tenant_name("My Cluster", SERVICE_ID) == f"my-cluster-{service_suffix(SERVICE_ID)}"
    assert slugify("team_a.prod/cluster #1") == "team-a-prod-cluster-1"
    assert slugify("Clüster ☃") == "cl-ster"
    assert slugify("a" * 29 + "-" + "b" * 10) == "a" * 29  # trimmed, no trailing '-'
    assert slugify("x" * 100) == "x" * 30


@pytest.mark.parametrize("service_name", ["日本語", "☃☃☃", "{{ }}"])
def test_a_name_with_nothing_usable_falls_back(service_name):
    assert slugify(service_name) == "tenant"


def test_a_name_starting_with_a_digit_gets_a_letter_first():
    assert tenant_name("2024 prod", SERVICE_ID) == f"t-2024-prod-{service_suffix(SERVICE_ID)}"


@pytest.mark.parametrize(("service_name", "words"), [
    ("", "non-empty"), ("   ", "non-empty"), (None, "non-empty"), ("x" * 256, "at most 255"),
    ("web\n{{ x }}", "control"), ("bidi\u202eevil", "format"), ("nul\x00", "control"),
])
def test_a_service_name_that_cannot_become_a_tenant_name_is_refused(service_name, words):
    with pytest.raises(ServiceNameError, match=words):
        tenant_name(service_name, SERVICE_ID)


def test_a_recorded_tenant_name_is_kept_only_when_it_belongs_to_the_service():
    first = tenant_name("Old Name", SERVICE_ID)
    assert tenant_name_for("New Name", SERVICE_ID, {"tenantName": first}) == first  # a rename keeps the tenant
    other = tenant_name("Old Name", "another-service")
    assert tenant_name_for("New Name", SERVICE_ID, {"tenantName": other}) == tenant_name("New Name", SERVICE_ID)
    for forged in ("../x", first + "\n", first.upper(), "x" * 60 + first[-7:], 42):
        assert not tenant_name_belongs(forged, SERVICE_ID)
        assert tenant_name_for("New Name", SERVICE_ID, {"tenantName": forged}) == tenant_name("New Name", SERVICE_ID)


def test_the_same_name_on_different_services_gives_different_names():
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(500)]
    names = {tenant_name("Cluster", i) for i in ids}
    assert len(names) == len(ids)


def test_the_suffix_follows_the_service_id_not_the_name():
    a = tenant_name("Old Name", SERVICE_ID)
    b = tenant_name("New Name", SERVICE_ID)
    assert a != b
    assert a[-SUFFIX_LEN:] == b[-SUFFIX_LEN:] == service_suffix(SERVICE_ID)
    assert len(service_suffix(SERVICE_ID)) == SUFFIX_LEN
    assert all(c in "0123456789abcdef" for c in service_suffix(SERVICE_ID))


def test_an_empty_service_id_is_refused():
    with pytest.raises(ValueError, match="service id must not be empty"):
        tenant_name("Cluster", "")


@pytest.mark.parametrize(("tenant", "pool", "index"), [
    ("t-abc123", "GPU", 0),
    ("t-abc123", "gpu_pool", 0),
    ("t" * 40, "p" * 20, 100),
])
def test_a_bad_node_name_is_refused(tenant, pool, index):
    with pytest.raises(ValueError, match="is not a DNS-1123 label"):
        node_name(tenant, pool, index)


def test_node_name_and_agent_instance_id():
    assert node_name("team-a-1a2b3c", "default", 3) == "team-a-1a2b3c-default-3"
    assert agent_instance_id("kamaji-tenants", "team-a-1a2b3c") == "kamaji-tenants/team-a-1a2b3c"


# -- redaction --------------------------------------------------------------------------------------------
def test_scrub_text_masks_every_occurrence():
    r = Redactor()
    r.add("s3cret-token-value")
    assert r.scrub_text("a s3cret-token-value and s3cret-token-value again") == f"a {MASK} and {MASK} again"
    assert r.scrub_text("nothing here") == "nothing here"


def test_short_and_empty_values_are_not_secrets():
    r = Redactor()
    r.add(None, "", "x" * (MIN_SECRET_LEN - 1))
    assert len(r) == 0
    assert r.scrub_text("x" * (MIN_SECRET_LEN - 1)) == "x" * (MIN_SECRET_LEN - 1)


@pytest.mark.parametrize("secret", [
    'pa"ss\\word-123',
    "line one\nline two\tend",
    "clé-ünïcode-☃-secret",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n",
    'pässwörd"1',       # non-ASCII and an escaped character: Ansible's callbacks dump with ensure_ascii=False
    "clé\nsecrète",
])
def test_json_escaped_values_are_masked(secret):
    r = Redactor()
    r.add(secret)
    doc = {"kubeconfig": secret, "list": [secret]}
    for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False), secret):
        scrubbed = r.scrub_text(text)
        assert MASK in scrubbed
        assert secret not in scrubbed
        assert json.dumps(secret)[1:-1] not in scrubbed
        assert json.dumps(secret, ensure_ascii=False)[1:-1] not in scrubbed


def test_the_longest_secret_is_masked_first():
    r = Redactor()
    r.add("abcdef", "abcdefghijkl")
    assert r.scrub_text("x abcdefghijkl y") == f"x {MASK} y"  # not '********ghijkl'


def test_scrub_walks_data():
    r = Redactor()
    r.add("pve-token-secret")
    data = {"a": "Bearer pve-token-secret", "b": ["pve-token-secret", 3, None], "c": ("pve-token-secret",),
            "n": 5, "ok": True}
    assert r.scrub(data) == {"a": f"Bearer {MASK}", "b": [MASK, 3, None], "c": [MASK], "n": 5, "ok": True}
    assert data["a"] == "Bearer pve-token-secret"  # the input is left as it was


def test_secret_values_in_finds_values_under_secret_looking_keys():
    data = {
        "agentInstanceData": {"kubeconfig": "apiVersion: v1 ...", "endpoint": "https://10.0.0.5:6443"},
        "proxmox_vm_api_token_secret": "pve-secret",
        "ssh": {"private-key": "-----BEGIN KEY-----", "user": "debian"},
        "bootstrapTokens": [],
        "users": [{"Password": "hunter2!"}, {"name": "bob"}],
        "token": 12345,
        "tokens": ["t-one-123456", "t-two-123456"],
    }
    assert sorted(secret_values_in(data)) == sorted([
        "apiVersion: v1 ...", "pve-secret", "-----BEGIN KEY-----", "hunter2!", "t-one-123456", "t-two-123456"])
    assert secret_values_in({"endpoint": "x", "name": "y"}) == []


def test_the_parts_of_a_kubeconfig_are_masked_too():
    pem_lines = ["MIIB" + "A" * 60, "QUJD" + "B" * 60]
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(pem_lines) + "\n-----END PRIVATE KEY-----\n"
    key_b64 = base64.b64encode(pem.encode()).decode()
    kubeconfig = (f"apiVersion: v1\nusers:\n- name: a\n  user:\n    client-key-data: {key_b64}\n"
                  "    token: tok.0123456789abcdef\n")
    r = Redactor()
    r.add(kubeconfig)
    for leak in (key_b64, pem, pem.strip(), "".join(pem_lines), *pem_lines, "tok.0123456789abcdef",
                 base64.b64encode(b"tok.0123456789abcdef").decode()):
        scrubbed = r.scrub_text(f"seen: {leak} !")
        assert leak not in scrubbed and MASK in scrubbed, leak[:30]
    assert r.scrub_text("-----BEGIN PRIVATE KEY----- apiVersion: v1") == "-----BEGIN PRIVATE KEY----- apiVersion: v1"


@pytest.mark.parametrize("broken", [
    "tok.01234\n56789abcdef", "tok.01234\n      56789abcdef", 'tok.0123\\n456789abcdef', "t\r\nok.0123456789abcdef",
])
def test_a_token_split_over_a_line_break_is_masked(broken):
    r = Redactor()
    r.add("tok.0123456789abcdef")
    scrubbed = r.scrub_text(f"before {broken} after")
    assert scrubbed == f"before {MASK} after"


@pytest.mark.parametrize("key", ["ansible_become_pass", "ansible_ssh_pass", "k8s_auth_api_key", "api-key",
                                 "ansible_password", "client-key-data", "vault_password", "bootstrapToken"])
def test_the_usual_secret_variable_names_are_secret_keys(key):
    assert secret_values_in({key: "value-123456"}) == ["value-123456"]
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["name", "endpoint", "kubernetesVersion", "address", "port"])
def test_ordinary_keys_are_not_secret_keys(key):
    assert not is_secret_key(key)
