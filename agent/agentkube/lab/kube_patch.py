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


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f"path {path!r} does not exist")
    return cur


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}")
        name, path = op["op"], op["path"]
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{name} operation at {path!r} needs a value")
        if name == "test":
            if _walk(doc, _pointer(path), path) != op["value"]:
                raise PatchError(f"test operation at {path!r} failed")
            continue
        if name in ("move", "copy"):
            value = copy.deepcopy(_walk(doc, _pointer(op.get("from", "")), op.get("from", "")))
            if name == "move":
                doc = _apply_one(doc, "remove", op["from"], None)
            doc = _apply_one(doc, "add", path, value)
            continue
        if name not in ("add", "remove", "replace"):
            raise PatchError(f"unknown JSON patch operation {name!r}")
        doc = _apply_one(doc, name, path, copy.deepcopy(op.get("value")))
    return doc


def _apply_one(doc: Any, name: str, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        if name == "remove":
            raise PatchError("cannot remove the whole document")
        return value
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        if name != "add" and last not in parent:
            raise PatchError(f"path {path!r} does not exist")
        if name == "remove":
            del parent[last]
        else:
            parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and name == "add":
            parent.append(value)
            return doc
        if not last.isdigit():
            raise PatchError(f"invalid array index in {path!r}")
        index = int(last)
        limit = len(parent) if name == "add" else len(parent) - 1
        if index > limit:
            raise PatchError(f"array index out of range in {path!r}")
        if name == "add":
            parent.insert(index, value)
        elif name == "remove":
            parent.pop(index)
        else:
            parent[index] = value
    else:
        raise PatchError(f"path {path!r} does not point into an object or array")
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
