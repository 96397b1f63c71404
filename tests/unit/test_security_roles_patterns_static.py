"""Patterns match whole strings (issue 10, item 8): no regex that validates a value in the roles, playbooks,
modules or module_utils ends with `$`, which also accepts a trailing newline ("v1.35.7\n"). They end with `\\Z`
(Jinja's match/regex/search tests, regex_search) or use re.fullmatch (Python)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCOPES = ("roles", "playbooks", "plugins", "templates")
# A pattern handed to a matching test or function, as a quoted literal (Jinja or Python, raw or not).
PATTERN_USE = re.compile(
    r"""(?:\bis\s+(?:match|regex|search)|\bregex_search|\bre\.(?:match|search|compile|fullmatch)|\bselectattr\([^)]*?'(?:match|regex|search)')\s*\(?\s*,?\s*r?(?P<q>['"])(?P<pattern>(?:\\.|(?!(?P=q)).)*)(?P=q)"""
)


def _sources():
    for scope in SCOPES:
        for path in sorted((REPO / scope).rglob("*")):
            if path.suffix in (".yml", ".yaml", ".py", ".j2") and path.is_file():
                yield path


def _patterns(text: str):
    for m in PATTERN_USE.finditer(text):
        yield text.count("\n", 0, m.start()) + 1, m.group("pattern")


def test_the_scan_finds_the_patterns_it_guards():
    found = [p for path in _sources() for _, p in _patterns(path.read_text())]
    assert len(found) >= 15, found  # the roles' validations, module_utils' compiled patterns
    assert any(p.endswith("\\Z") for p in found)


def test_no_validating_pattern_accepts_a_trailing_newline():
    offenders = []
    for path in _sources():
        for line, pattern in _patterns(path.read_text()):
            if pattern.startswith("(?m)"):  # multi-line searches of file contents (molecule verify)
                continue
            if pattern.endswith("$") and not pattern.endswith("\\$"):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {pattern}")
    assert offenders == [], "use \\Z (Jinja) or re.fullmatch (Python):\n" + "\n".join(offenders)


def test_module_utils_compiled_patterns_are_used_with_fullmatch():
    text = (REPO / "plugins" / "module_utils" / "proxmox_vm_config.py").read_text()
    assert re.search(r"\b(TAG_RE|DISK_KEY_RE)\.(match|search)\(", text) is None
