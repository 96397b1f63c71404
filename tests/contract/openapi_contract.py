"""Validate Fulcrum API calls against Fulcrum Core's own OpenAPI file (../shared/contracts/fulcrum).

    from openapi_contract import validate_request, validate_response   # tests/contract on sys.path
    validate_request("POST", "/api/v1/jobs/<id>/complete", {"agentInstanceId": "x"})
    validate_response("GET", "/api/v1/jobs/pending?limit=5", 200, [...])

Both raise AssertionError with a readable message naming the operation and the failing field, and call
pytest.skip when the contracts folder is absent (set FULCRUM_CONTRACTS_DIR to use another copy).
`path` may be a full URL, start with /api/v1 or be relative to it; its query string is checked too.

Rules for statuses the file does not list (it misses some Core really answers, e.g. 400 on a claim of a
job that is no longer Pending, 403 for a bad token): an error status (>= 400) must carry an ErrorRes or
ValidationErrRes body; any other undocumented status is a contract violation."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE_PATH = "/api/v1"
_SPEC_URI = "urn:fulcrum-core-openapi"
_METHODS = ("get", "put", "post", "patch", "delete")


def contracts_dir() -> Path:
    override = os.environ.get("FULCRUM_CONTRACTS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "contracts" / "fulcrum"


def _openapi_file() -> Path:
    path = contracts_dir() / "openapi.yaml"
    if not path.is_file():
        pytest.skip(
            f"Fulcrum contract not available: {path} is absent (the contracts folder lives at "
            "<repo>/../shared/contracts)",
            allow_module_level=True,
        )
    return path


@functools.cache
def _load(path: str) -> tuple[dict, Registry, list[tuple[re.Pattern[str], str, int]]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        spec = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
    registry = Registry().with_resource(_SPEC_URI, Resource(contents=spec, specification=DRAFT202012))
    templates = []
    for template in spec.get("paths", {}):
        names = re.findall(r"\{([^}]+)\}", template)
        pattern = re.escape(template)
        for name in names:
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)", 1)
        templates.append((re.compile("^" + pattern + "/?$"), template, len(names)))
    templates.sort(key=lambda item: item[2])  # literal segments win: /jobs/pending before /jobs/{id}
    return spec, registry, templates


def spec() -> dict:
    """The parsed openapi.yaml (skips the test when absent)."""
    return _load(str(_openapi_file()))[0]


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _check(instance: Any, pointer: str, what: str) -> None:
    _, registry, _ = _load(str(_openapi_file()))
    validator = Draft202012Validator(
        {"$ref": f"{_SPEC_URI}#{pointer}"}, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors[:5]:
            where = "".join(f"[{p!r}]" for p in error.absolute_path) or "(root)"
            lines.append(f"  at body{where}: {error.message}")
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise AssertionError(f"{what} does not match the Fulcrum contract:\n" + "\n".join(lines) + more)


def _split(path: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(path)
    local = parts.path
    if local.startswith(BASE_PATH + "/") or local == BASE_PATH:
        local = local[len(BASE_PATH) :] or "/"
    return local, parse_qs(parts.query, keep_blank_values=True)


def _operation(method: str, path: str) -> tuple[str, dict, dict, dict[str, str], dict[str, list[str]]]:
    data, _, templates = _load(str(_openapi_file()))
    local, query = _split(path)
    method = method.lower()
    matched = [(t, m) for regex, t, _ in templates if (m := regex.match(local))]
    if not matched:
        raise AssertionError(f"{method.upper()} {path}: no such path in the Fulcrum contract")
    for template, match in matched:
        item = data["paths"][template]
        if method in item:
            return template, item, item[method], match.groupdict(), query
    raise AssertionError(
        f"{method.upper()} {path}: the contract has {matched[0][0]} but not with method {method.upper()} "
        f"(it allows {', '.join(m.upper() for m in _METHODS if m in data['paths'][matched[0][0]])})"
    )


def _coerce(value: str, schema: dict) -> Any:
    kind = schema.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    return value


def _check_parameters(method: str, template: str, item: dict, op: dict, params: dict, query: dict) -> None:
    declared = {
        (p["in"], p["name"]): (p, loc)
        for loc, plist in (("item", item.get("parameters") or []), ("op", op.get("parameters") or []))
        for p in plist
    }
    for name, value in params.items():
        entry = declared.get(("path", name))
        if entry and "schema" in entry[0]:
            _check_inline(value, entry[0]["schema"], f"{method} {template} path parameter {name!r}={value!r}")
    for name, values in query.items():
        entry = declared.get(("query", name))
        if entry is None:
            raise AssertionError(f"{method} {template}: query parameter {name!r} is not in the contract")
        schema = entry[0].get("schema") or {}
        if schema.get("type") == "array":
            instance: Any = [_coerce(v, schema.get("items") or {}) for v in values]
        else:
            if len(values) > 1:
                raise AssertionError(f"{method} {template}: query parameter {name!r} given {len(values)} times")
            instance = _coerce(values[0], schema)
        _check_inline(instance, schema, f"{method} {template} query parameter {name!r}")


def _absolute_refs(schema: Any) -> Any:
    """Point a schema's local refs ("#/components/...") at the contract document."""
    if isinstance(schema, dict):
        return {
            k: (_SPEC_URI + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _absolute_refs(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_absolute_refs(v) for v in schema]
    return schema


def _check_inline(instance: Any, schema: dict, what: str) -> None:
    _, registry, _ = _load(str(_openapi_file()))
    validator = Draft202012Validator(
        _absolute_refs(schema), registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    error = next(iter(validator.iter_errors(instance)), None)
    if error is not None:
        raise AssertionError(f"{what} does not match the Fulcrum contract: {error.message}")


def validate_request(method: str, path: str, body: Any = None) -> None:
    """Assert that a request (method, path with query, JSON body or None) is one the contract allows."""
    template, item, op, params, query = _operation(method, path)
    what = f"{method.upper()} {template} request"
    _check_parameters(method.upper(), template, item, op, params, query)
    request_body = op.get("requestBody")
    if request_body is None:
        if body not in (None, b"", ""):
            raise AssertionError(f"{what}: the contract defines no request body, but one was sent: {body!r}")
        return
    if body is None:
        if request_body.get("required"):
            raise AssertionError(f"{what}: a JSON body is required")
        return
    if "application/json" not in (request_body.get("content") or {}):
        raise AssertionError(f"{what}: the contract does not take a JSON body")
    method_key = method.lower()
    _check(body, _pointer("paths", template, method_key, "requestBody", "content", "application/json", "schema"), what)


def _response_pointer(template: str, method: str, status: int) -> tuple[str | None, dict | None]:
    data = spec()
    responses = data["paths"][template][method]["responses"]
    key = str(status) if str(status) in responses else ("default" if "default" in responses else None)
    if key is None:
        return None, None
    response = responses[key]
    pointer = _pointer("paths", template, method, "responses", key)
    if "$ref" in response:  # e.g. '#/components/responses/Unauthorized'
        pointer = response["$ref"][1:]
        response = data
        for part in pointer.strip("/").split("/"):
            response = response[part.replace("~1", "/").replace("~0", "~")]
    return pointer, response


def validate_response(method: str, path: str, status: int, body: Any = None) -> None:
    """Assert that a response (status, JSON body or None) is one the contract allows for this call."""
    template, _item, _op, _params, _query = _operation(method, path)
    method_key = method.lower()
    what = f"{method.upper()} {template} response {status}"
    pointer, response = _response_pointer(template, method_key, status)
    if response is None:
        if status < 400:
            raise AssertionError(f"{what}: status {status} is not in the contract")
        if body is not None:
            _check_inline(
                body,
                {
                    "anyOf": [
                        {"$ref": "#/components/schemas/ErrorRes"},
                        {"$ref": "#/components/schemas/ValidationErrRes"},
                    ]
                },
                what,
            )
            if not isinstance(body, dict):
                raise AssertionError(f"{what}: an error body must be a JSON object, got {body!r}")
        return
    content = response.get("content") or {}
    if not content:
        if body not in (None, b"", ""):
            raise AssertionError(f"{what}: the contract defines no response body, but one came: {body!r}")
        return
    if body is None:
        raise AssertionError(f"{what}: the contract defines a JSON body, but none came")
    if "application/json" in content and "schema" in content["application/json"]:
        _check(body, pointer + _pointer("content", "application/json", "schema"), what)
