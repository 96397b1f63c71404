"""Keeps secret values out of logs, events and files: a registry of known secret strings and a scrubber."""

from __future__ import annotations

import json
import threading
from typing import Any

MASK = "********"
MIN_SECRET_LEN = 6  # shorter values would mask innocent text


class Redactor:
    """Thread-safe set of secret values; `scrub` replaces each occurrence with MASK in text or JSON data."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()

    def add(self, *values: str | None) -> None:
        with self._lock:
            for v in values:
                if v and len(v) >= MIN_SECRET_LEN:
                    self._secrets.add(v)
                    # the same value as it appears JSON-escaped inside a serialized document, with non-ASCII
                    # escaped or kept (Ansible's callbacks dump results with ensure_ascii=False)
                    self._secrets.add(json.dumps(v)[1:-1])
                    self._secrets.add(json.dumps(v, ensure_ascii=False)[1:-1])

    def __len__(self) -> int:
        return len(self._secrets)

    def scrub_text(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for s in secrets:
            if s in text:
                text = text.replace(s, MASK)
        return text

    def scrub(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.scrub_text(data)
        if isinstance(data, dict):
            return {k: self.scrub(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.scrub(v) for v in data]
        return data


SECRET_KEY_WORDS = ("token", "secret", "password", "passwd", "kubeconfig", "privatekey", "private_key", "sshkey")


def secret_values_in(data: Any, _key: str = "") -> list[str]:
    """String values stored under secret-looking keys (token, password, kubeconfig, ...), recursively."""
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            found += secret_values_in(v, str(k))
    elif isinstance(data, list):
        for v in data:
            found += secret_values_in(v, _key)
    elif isinstance(data, str) and any(w in _key.lower().replace("-", "") for w in SECRET_KEY_WORDS):
        found.append(data)
    return found
