"""Kubernetes label selectors (=, ==, !=, in, notin, key, !key) and field selectors (=, ==, != on dotted
paths such as metadata.name or spec.nodeName), parsed from the query-string syntax the API server accepts."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")
_CMP_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>[-A-Za-z0-9_.]*)\s*$")


class SelectorError(ValueError):
    """A selector string that the API server would reject (400 BadRequest)."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, get: Callable[[str], str | None]) -> bool:
        value = get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op == "=":
            return value is not None and value == self.values[0]
        if self.op == "!=":
            return value is None or value != self.values[0]
        if self.op == "in":
            return value is not None and value in self.values
        return value is None or value not in self.values  # notin


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    if not text:
        return ()
    reqs = []
    for part in _split_top_level(text):
        if m := _SET_RE.match(part):
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            reqs.append(Requirement(m["key"], m["op"], values))
        elif m := _CMP_RE.match(part):
            reqs.append(Requirement(m["key"], "!=" if m["op"] == "!=" else "=", (m["value"],)))
        elif m := _EXISTS_RE.match(part):
            reqs.append(Requirement(m["key"], "!exists" if m["neg"] else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
    return tuple(reqs)


def parse_field_selector(text: str | None) -> tuple[Requirement, ...]:
    if not text:
        return ()
    reqs = []
    for part in _split_top_level(text):
        m = _CMP_RE.match(part)
        if not m:
            raise SelectorError(f"invalid field selector: {part.strip()!r}")
        reqs.append(Requirement(m["key"], "!=" if m["op"] == "!=" else "=", (m["value"],)))
    return tuple(reqs)


def _dotted(obj: dict, path: str) -> str | None:
    cur: object = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return None if cur is None or isinstance(cur, dict | list) else str(cur)


def matches(obj: dict, labels: tuple[Requirement, ...], fields: tuple[Requirement, ...]) -> bool:
    obj_labels = obj.get("metadata", {}).get("labels") or {}
    if not all(r.matches(obj_labels.get) for r in labels):
        return False
    # a field that is absent compares as "" (the apiserver's field sets hold every supported field)
    return all(r.matches(lambda p: _dotted(obj, p) or "") for r in fields)


def label_selector_requirements(selector: object) -> tuple[Requirement, ...] | None:
    """A metav1.LabelSelector object as requirements, as LabelSelectorAsSelector converts it
    (staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/helpers.go): matchLabels are equalities, matchExpressions
    In/NotIn/Exists/DoesNotExist (In/NotIn need values, Exists/DoesNotExist none). None when the selector is
    invalid (callers decide: a PDB with an invalid selector matches nothing). An empty tuple is the empty
    selector (which matches everything where the caller allows it)."""
    if selector is None:
        return None
    if not isinstance(selector, dict):
        return None
    reqs: list[Requirement] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        if not isinstance(value, str):
            return None
        reqs.append(Requirement(str(key), "=", (value,)))
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        if not isinstance(expr, dict) or expr.get("operator") not in ops:
            return None
        op, values = ops[expr["operator"]], tuple(expr.get("values") or ())
        if (op in ("in", "notin")) != bool(values):
            return None
        reqs.append(Requirement(str(expr.get("key", "")), op, values))
    return tuple(reqs)


def labels_match(reqs: tuple[Requirement, ...], labels: dict | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels.get) for r in reqs)
