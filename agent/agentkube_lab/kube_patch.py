"""The patch formats a Kubernetes API server accepts: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
strategic merge patch (the built-in types' list merge keys, `$patch` directives) and server-side apply
(approximated as a merge where lists are replaced, without field ownership)."""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied (the API server answers 422 or 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# list fields of the built-in types that merge by a key instead of being replaced (patchMergeKey)
STRATEGIC_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "tolerations": "",  # replaced
    "finalizers": "",  # merged as a set of scalars
}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch as the built-in types define it, for the list fields the lab's types use."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in STRATEGIC_MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, STRATEGIC_MERGE_KEYS[key], key)
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(current: list, patch: list, merge_key: str, field: str) -> list:
    if field == "finalizers":
        return list(current) + [v for v in patch if v not in current]
    if not merge_key:
        return copy.deepcopy(patch)
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"{field}: every item of a strategic merge list needs the key {merge_key!r}")
        index = next((i for i, cur in enumerate(result) if cur.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


# ---------------------------------------------------------------- JSON patch (RFC 6902), strict
# The API server (and Kamaji, for spec.kubernetes.kubelet.configurationJSONPatches) apply JSON patches with
# github.com/evanphx/json-patch/v5 (clastix/kamaji internal/kubeadm/uploadconfig.go getKubeletConfigmapContent,
# internal/resources/kubeadm_phases.go PhaseUploadConfigKubelet). Rules below follow RFC 6902 sections 4.1-4.6
# and carry evanphx's error texts ("<op> operation does not apply: doc is missing key/path: <path>"). Where
# evanphx is more lenient than the RFC (negative array indices, `test` of a missing member against null), the
# lab keeps the RFC's stricter rule.


def _pointer(path: Any) -> list[str]:
    """RFC 6901: '' is the whole document, else '/'-separated tokens with ~1 -> '/' and ~0 -> '~'."""
    if not isinstance(path, str):
        raise PatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _array_index(token: str, path: str) -> int:
    """RFC 6901 section 4: an array index is '0' or digits without a leading zero (no sign, no '-1')."""
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"invalid array index {token!r} in {path!r}")
    return int(token)


def _walk(doc: Any, parts: list[str], path: str, op: str) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part != "-" and _array_index(part, path) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path: {path}")
    return cur


def json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 section 4.6 equality: same JSON type, numbers by value, objects ignore member order
    (Python's == would let True equal 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902, strictly: add, remove, replace, move, copy, test. The first failing operation fails the
    whole patch (the document is not changed)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}: missing op")
        name = op["op"]
        if name not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PatchError(f"Unexpected kind: {name}")
        if "path" not in op:  # RFC 6902 section 4: every operation has exactly one "path"
            raise PatchError(f"{name} operation failed to decode path")
        path = op["path"]
        parts = _pointer(path)
        if name in ("add", "replace", "test") and "value" not in op:  # section 4.1/4.3/4.6: value is required
            raise PatchError(f"{name} operation: missing value at {path!r}")
        if name == "test":  # section 4.6: the target must exist and equal the value
            if not json_equal(_walk(doc, parts, path, "test"), op["value"]):
                raise PatchError(f"testing value {path} failed: test failed")
            continue
        if name in ("move", "copy"):
            if "from" not in op:  # section 4.4/4.5: "from" is required
                raise PatchError(f"{name} operation failed to decode from")
            source = _pointer(op["from"])
            # section 4.4: a location cannot be moved into one of its children
            if name == "move" and len(parts) > len(source) and parts[:len(source)] == source:
                raise PatchError(f"move operation: cannot move {op['from']} into its own child {path}")
            value = copy.deepcopy(_walk(doc, source, op["from"], name))
            if name == "move":
                doc = _apply_one(doc, "remove", op["from"], None)
            doc = _apply_one(doc, "add", path, value)
            continue
        doc = _apply_one(doc, name, path, copy.deepcopy(op.get("value")))
    return doc


def _apply_one(doc: Any, name: str, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        if name == "remove":
            raise PatchError("remove operation does not apply: cannot remove the whole document")
        return value  # add/replace of the root replaces the document (section 4.1)
    # section 4.1: the parent of an added member must exist; replace/remove need the target itself
    try:
        parent = _walk(doc, parts[:-1], path, name)
    except PatchError:
        raise PatchError(f"{name} operation does not apply: doc is missing path: {path}") from None
    last = parts[-1]
    if isinstance(parent, dict):
        if name != "add" and last not in parent:
            raise PatchError(f"{name} operation does not apply: doc is missing key: {path}: missing value")
        if name == "remove":
            del parent[last]
        else:
            parent[last] = value
    elif isinstance(parent, list):
        if last == "-":  # section 4.1: '-' appends, and names no element for replace/remove
            if name != "add":
                raise PatchError(f"{name} operation does not apply: doc is missing key: {path}: missing value")
            parent.append(value)
            return doc
        index = _array_index(last, path)
        limit = len(parent) if name == "add" else len(parent) - 1
        if index > limit:
            raise PatchError(f"{name} operation does not apply: index out of bounds: {path}")
        if name == "add":
            parent.insert(index, value)
        elif name == "remove":
            parent.pop(index)
        else:
            parent[index] = value
    else:
        raise PatchError(f"{name} operation does not apply: doc is missing path: {path}")
    return doc


def apply_patch(target: Any, applied: Any) -> Any:
    """Server-side apply, approximated: the applied configuration merges into the live object (lists are
    replaced as atomic, nulls ignored); field ownership and removal of fields the manager dropped are not
    tracked."""
    if not isinstance(applied, dict):
        return copy.deepcopy(applied)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in applied.items():
        if value is not None:
            result[key] = apply_patch(result.get(key), value)
    return result
