"""What a real apiserver does with a CRD's structural openAPIV3Schema on create and update: prune unknown
fields (a Warning, or 400 with fieldValidation=Strict), apply `default`s, validate (422 Invalid with field
causes), and evaluate the CRD's x-kubernetes-validations rules (kube_cel: cel-python with Kubernetes' CEL library)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agentkube_lab.kube_cel import CelError, Program, compile_rule
from agentkube_lab.kube_resources import ResourceType
from agentkube_lab.kube_store import AdmissionRequest, bad_request, invalid

_ROOT_KEEP = ("apiVersion", "kind", "metadata")
_SKIP_KEYS = ("description", "default", "format", "nullable", "example", "externalDocs")


def _to_jsonschema(schema: dict) -> dict:
    """OpenAPI v3 (as CRDs use it) to JSON Schema draft 4 for the jsonschema package."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {k: _to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _to_jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_to_jsonschema(v) for v in value]
        elif key.startswith("x-kubernetes-") or key in _SKIP_KEYS:
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _field(path: list[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _cause(error: jsonschema.ValidationError) -> dict:
    path = list(error.absolute_path)
    field = _field(path)
    value = error.instance
    shown = f'"{value}"' if isinstance(value, str) else (_type_name(value) if isinstance(value, dict | list)
                                                          else str(value).lower() if isinstance(value, bool)
                                                          else str(value))
    if error.validator == "required":
        m = re.match(r"'(.+)' is a required property", error.message)
        missing = m.group(1) if m else "?"
        return {"reason": "FieldValueRequired", "message": "Required value",
                "field": _field([*path, missing])}
    if error.validator == "type":
        expected = error.validator_value
        return {"reason": "FieldValueTypeInvalid", "field": field,
                "message": f'Invalid value: "{_type_name(value)}": {field} in body must be of type {expected}: '
                           f"{shown}"}
    if error.validator == "enum":
        supported = ", ".join(f'"{v}"' for v in error.validator_value)
        return {"reason": "FieldValueNotSupported", "field": field,
                "message": f"Unsupported value: {shown}: supported values: {supported}"}
    if error.validator == "pattern":
        return {"reason": "FieldValueInvalid", "field": field,
                "message": f"Invalid value: {shown}: {field} in body should match '{error.validator_value}'"}
    if error.validator in ("maxLength", "maxItems", "maxProperties"):
        unit = {"maxLength": "bytes", "maxItems": "items", "maxProperties": "properties"}[error.validator]
        return {"reason": "FieldValueTooLong" if error.validator == "maxLength" else "FieldValueTooMany",
                "field": field, "message": f"Too long: may not be more than {error.validator_value} {unit}"}
    if error.validator in ("minimum", "maximum"):
        word = "greater" if error.validator == "minimum" else "less"
        return {"reason": "FieldValueInvalid", "field": field,
                "message": f"Invalid value: {shown}: {field} in body should be {word} than or equal to "
                           f"{error.validator_value}"}
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {shown}: {error.message}"}


class CrdSchemaValidator:
    """An admission hook validating objects of one CRD (served version) against its openAPIV3Schema."""

    def __init__(self, crd: dict, version: str | None = None):
        spec = crd["spec"]
        versions = spec["versions"]
        chosen = next((v for v in versions if v["name"] == version), None) if version else next(
            (v for v in versions if v.get("storage")), versions[0])
        if chosen is None:
            raise ValueError(f"version {version!r} not in the CRD {crd['metadata']['name']}")
        self.group, self.kind, self.version = spec["group"], spec["names"]["kind"], chosen["name"]
        self.schema = chosen["schema"]["openAPIV3Schema"]
        self._validator = jsonschema.Draft4Validator(_to_jsonschema(self.schema))
        self._programs = _compile_rules(self.schema)  # a rule that does not compile: the apiserver refuses the CRD

    @classmethod
    def from_file(cls, path: Path, version: str | None = None) -> CrdSchemaValidator:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
        if not crds:
            raise ValueError(f"{path}: no CustomResourceDefinition in the file")
        return cls(crds[0], version)

    def applies_to(self, rtype: ResourceType) -> bool:
        return rtype.group == self.group and rtype.kind == self.kind and rtype.version == self.version

    def __call__(self, request: AdmissionRequest) -> None:
        if request.obj is None or not self.applies_to(request.rtype):
            return
        self.admit(request.rtype, request.obj, request.old)

    def admit(self, rtype: ResourceType, obj: dict, old: dict | None, strict: bool = False) -> list[str]:
        """Prunes and defaults `obj` in place, then validates it; returns the pruned field paths."""
        pruned: list[str] = []
        for key in list(obj):
            if key not in _ROOT_KEEP and key not in self.schema.get("properties", {}):
                pruned.append(key)
                del obj[key]
        for key, sub in self.schema.get("properties", {}).items():
            if key not in _ROOT_KEEP and key in obj:
                obj[key] = _prune(obj[key], sub, [key], pruned)
        if strict and pruned:
            raise bad_request(f"strict decoding error: unknown field \"{pruned[0]}\"")
        for key, sub in self.schema.get("properties", {}).items():
            if key not in _ROOT_KEEP:
                if key not in obj and "default" in sub:
                    obj[key] = copy.deepcopy(sub["default"])
                if key in obj:
                    _default(obj[key], sub)
        name = obj.get("metadata", {}).get("name", "")
        causes = [_cause(e) for e in sorted(self._validator.iter_errors(obj), key=lambda e: list(e.path))]
        # pkg/registry/customresource/strategy.go hasBlockingErr: CEL rules run unless a type, required, enum or
        # size violation was found; then one more cause says they were not checked
        if any(c["reason"] in _BLOCKING for c in causes):
            causes.append({"reason": "FieldValueInvalid", "field": "<nil>", "message": 'Invalid value: "null": some '
                           "validation rules were not checked because the object was invalid; correct the existing "
                           "errors to complete validation"})
        else:
            causes += _rules(obj, old, self.schema, [], self._programs)
        if causes:
            raise invalid(rtype, name, causes)
        return pruned


def _prune(value: Any, schema: dict, path: list[Any], pruned: list[str]) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            for key in list(value):
                if key in props:
                    value[key] = _prune(value[key], props[key], [*path, key], pruned)
                elif not schema.get("x-kubernetes-preserve-unknown-fields") and not isinstance(
                        schema.get("additionalProperties"), dict | bool):
                    pruned.append(_field([*path, key]))
                    del value[key]
        elif isinstance(schema.get("additionalProperties"), dict):
            for key in list(value):
                value[key] = _prune(value[key], schema["additionalProperties"], [*path, key], pruned)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(v, schema["items"], [*path, i], pruned) for i, v in enumerate(value)]
    return value


def _default(value: Any, schema: dict) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(value[key], sub)
        if isinstance(schema.get("additionalProperties"), dict):
            for v in value.values():
                _default(v, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for v in value:
            _default(v, schema["items"])


_MISSING = object()
_BLOCKING = {"FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany",
             "FieldValueTypeInvalid"}
_CEL_RULE_KEYS = {"rule", "message", "messageExpression", "reason", "fieldPath"}
_REASONS = {None: ("FieldValueInvalid", "Invalid value"), "FieldValueInvalid": ("FieldValueInvalid", "Invalid value"),
            "FieldValueForbidden": ("FieldValueForbidden", "Forbidden"),
            "FieldValueRequired": ("FieldValueRequired", "Required value"),
            "FieldValueDuplicate": ("FieldValueDuplicate", "Duplicate value")}


def _schema_nodes(schema: dict):
    yield schema
    for sub in (schema.get("properties") or {}).values():
        yield from _schema_nodes(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _schema_nodes(schema[key])


def _compile_rules(schema: dict) -> dict[str, Program]:
    """Every rule and messageExpression of the schema, compiled once; a rule that would not compile (syntax, an
    undeclared function or variable), an unknown reason, or a feature the lab does not emulate raises CelError,
    as kube-apiserver refuses such a CRD (apiextensions validation of x-kubernetes-validations)."""
    programs: dict[str, Program] = {}
    for node in _schema_nodes(schema):
        for rule in node.get("x-kubernetes-validations") or []:
            unknown = set(rule) - _CEL_RULE_KEYS - {"optionalOldSelf"}
            if unknown or rule.get("optionalOldSelf"):
                raise CelError(f"x-kubernetes-validations {rule.get('rule')!r}: not emulated: "
                               f"{sorted(unknown) or 'optionalOldSelf'}")
            if rule.get("reason") not in _REASONS:
                raise CelError(f"x-kubernetes-validations {rule['rule']!r}: unsupported reason {rule['reason']!r}")
            try:
                programs[rule["rule"]] = compile_rule(rule["rule"])
                if rule.get("messageExpression"):
                    programs[rule["messageExpression"]] = compile_rule(rule["messageExpression"])
            except CelError as e:
                raise CelError(f"x-kubernetes-validations rule {rule['rule']!r}: compile error: {e}") from e
    return programs


def _go_value(value: Any) -> str:
    """field.Error.ErrorBody's rendering of a scalar bad value (k8s.io/apimachinery/pkg/util/validation/field)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _rule_path(path: list[Any], field_path: str | None) -> list[Any]:
    """The rule's fieldPath (".a.b" or "['a']"), relative to the node, as validation.go's ValidFieldPath reads it."""
    if not field_path:
        return path
    return [*path, *[a or b for a, b in re.findall(r"\.([^.\[\]]+)|\['((?:[^'\\]|\\.)*)'\]", field_path)]]


def _rules(value: Any, old: Any, schema: dict, path: list[Any], programs: dict[str, Program]) -> list[dict]:
    """x-kubernetes-validations as kube-apiserver evaluates them, transcribed from
    staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel/validation.go (validateExpressions,
    validateMap, validateArray): null values are not validated; a transition rule (one using oldSelf) only runs
    where an old value exists; an evaluation error is field.Invalid(<schema type>, "<error> evaluating rule:
    <message or rule>"); a false result is field.Invalid (or the rule's reason) at the node (plus the rule's
    fieldPath) with messageExpression, else message, else "failed rule: <rule>", the value omitted for objects
    and arrays. The node's own rules come first, then its properties, additionalProperties and items. Not
    emulated: ratcheting (CRDValidationRatcheting), the cost budget, old values of listType=map items."""
    if value is None:
        return []
    causes: list[dict] = []
    stype = schema.get("type", "")
    env = {"self": value, **({} if old is _MISSING or old is None else {"oldSelf": old})}
    for rule in schema.get("x-kubernetes-validations") or []:
        program, text = programs[rule["rule"]], (rule.get("message") or "").strip() or rule["rule"].strip()
        if program.uses_old_self and "oldSelf" not in env:
            continue
        field = _field(path)
        try:
            ok = program.evaluate(env)
        except CelError as e:
            detail = (f"'{e}': call arguments did not match a supported operator, function or macro signature for "
                      f"rule: {text}" if str(e).startswith("no such overload") else f"{e} evaluating rule: {text}")
            causes.append({"reason": "FieldValueInvalid", "field": field,
                           "message": f'Invalid value: "{stype}": {detail}'})
            continue
        if ok is True:
            continue
        detail = (rule.get("message") or "").strip() or f"failed rule: {text}"
        if rule.get("messageExpression"):
            try:
                message = programs[rule["messageExpression"]].evaluate(env)
            except CelError:
                message = None  # validation.go: logged, the rule's message is used
            if isinstance(message, str) and message.strip() and "\n" not in message.strip():
                detail = message.strip()
        reason, word = _REASONS[rule.get("reason")]
        field = _field(_rule_path(path, rule.get("fieldPath")))
        if reason == "FieldValueDuplicate":
            body = f"{word}: {_go_value(value)}" if stype not in ("object", "array") else word
        elif reason in ("FieldValueForbidden", "FieldValueRequired") or stype in ("object", "array"):
            body = f"{word}: {detail}"
        else:
            body = f"{word}: {_go_value(value)}: {detail}"
        causes.append({"reason": reason, "field": field, "message": body})
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and not (not path and key in _ROOT_KEEP):
                old_child = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                causes += _rules(value[key], old_child, sub, [*path, key], programs)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            for key, item in value.items():
                old_child = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                causes += _rules(item, old_child, extra, [*path, key], programs)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            causes += _rules(item, _MISSING, schema["items"], [*path, i], programs)
    return causes
