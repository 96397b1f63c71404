"""Keeps secret values out of logs, events and files: a registry of known secret strings and a scrubber.

A secret leaks in more shapes than its own: JSON-escaped inside a serialized event, base64-encoded (a Kubernetes
Secret's data), split over lines (a wrapped log line, a YAML block), or in parts (a kubeconfig's base64
certificate and key fields, their decoded PEM blocks, each line of a PEM body). `add` learns every such part;
`scrub_text` masks them all, line breaks inside a secret included.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from typing import Any

import yaml

MASK = "********"
MIN_SECRET_LEN = 6  # shorter values would mask innocent text
MIN_PART_LEN = 16   # a part of a secret (a PEM line, a base64 field) is masked from this length on
BREAKABLE_MAX_LEN = 512  # secrets up to this length are also found with line breaks inside them
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----(?P<body>.*?)-----END [A-Z0-9 ]+-----", re.DOTALL)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# a line break as it appears in text or JSON-escaped, with the indentation that may follow it
_BREAK = r"(?:\r?\n|\\r\\n|\\n)[ \t]*"
_BREAKS = re.compile(_BREAK)


class Redactor:
    """Thread-safe set of secret values; `scrub` replaces each occurrence with MASK in text or JSON data."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._breakable: dict[str, re.Pattern[str]] = {}  # secret -> pattern allowing line breaks inside

    def add(self, *values: str | None) -> None:
        with self._lock:
            for v in values:
                if isinstance(v, str):
                    for part in _parts(v, depth=2):
                        self._add_one(part)

    def _add_one(self, v: str) -> None:
        if len(v) < MIN_SECRET_LEN or v in self._secrets:
            return
        self._secrets.add(v)
        # the same value as it appears JSON-escaped inside a serialized document, with non-ASCII escaped or kept
        # (Ansible's callbacks dump results with ensure_ascii=False)
        self._secrets.add(json.dumps(v)[1:-1])
        self._secrets.add(json.dumps(v, ensure_ascii=False)[1:-1])
        flat = v.strip()
        if "\n" not in flat and len(flat) <= BREAKABLE_MAX_LEN:
            self._breakable[flat] = re.compile(f"(?:{_BREAK})?".join(re.escape(c) for c in flat))

    def __len__(self) -> int:
        return len(self._secrets)

    def scrub_text(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
            breakable = list(self._breakable.items())
        for s in secrets:
            if s in text:
                text = text.replace(s, MASK)
        if breakable and _BREAKS.search(text):
            joined = _BREAKS.sub("", text)
            for flat, pattern in breakable:
                if flat in joined:
                    text = pattern.sub(MASK, text)
        return text

    def scrub(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.scrub_text(data)
        if isinstance(data, dict):
            return {k: self.scrub(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.scrub(v) for v in data]
        return data


def _parts(value: str, depth: int) -> set[str]:
    """The value and every part of it that is secret on its own: base64 forms, decoded base64, the secret fields
    of a kubeconfig (or any YAML/JSON document), PEM blocks, their bodies and lines."""
    if len(value.strip()) < MIN_SECRET_LEN:
        return set()
    out = {value, value.strip()}
    out.add(base64.b64encode(value.encode()).decode())
    for block in _PEM_BLOCK.finditer(value):
        out.add(block.group(0))
        body_lines = [line.strip() for line in block.group("body").splitlines() if line.strip()]
        out.add("".join(body_lines))
        out.update(line for line in body_lines if len(line) >= MIN_PART_LEN)
    if depth <= 0:
        return {p for p in out if len(p) >= MIN_SECRET_LEN}
    decoded = _b64decode_text(value)
    if decoded is not None:
        out |= _parts(decoded, depth - 1)
    if "\n" in value or value.lstrip().startswith("{"):
        for field in _document_secrets(value):
            out |= _parts(field, depth - 1)
    return {p for p in out if len(p) >= MIN_SECRET_LEN}


def _b64decode_text(value: str) -> str | None:
    flat = value.strip()
    if len(flat) < MIN_PART_LEN or len(flat) % 4 or not _BASE64.fullmatch(flat):
        return None
    try:
        decoded = base64.b64decode(flat, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded if decoded.isprintable() or "\n" in decoded else None


def _document_secrets(text: str) -> list[str]:
    """Secret fields of a YAML/JSON document (a kubeconfig: certificate/key data, tokens, passwords)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    return secret_values_in(doc) if isinstance(doc, dict | list) else []


# Key words of secret-looking keys, matched on the key lowercased without '-', '_' and '.'.
SECRET_KEY_WORDS = (
    "token", "secret", "password", "passwd", "passphrase", "kubeconfig", "privatekey", "sshkey", "apikey",
    "becomepass", "sshpass", "connectionpass", "vaultpass", "credential", "clientkey", "clientcertificatedata",
    "certificateauthoritydata",
)


def is_secret_key(key: str) -> bool:
    k = re.sub(r"[-_.]", "", key.lower())
    return any(w in k for w in SECRET_KEY_WORDS) or k.endswith("pass")


def secret_values_in(data: Any, _key: str = "") -> list[str]:
    """String values stored under secret-looking keys (token, password, kubeconfig, ...), recursively."""
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            found += secret_values_in(v, str(k))
    elif isinstance(data, list):
        for v in data:
            found += secret_values_in(v, _key)
    elif isinstance(data, str) and is_secret_key(_key):
        found.append(data)
    return found
