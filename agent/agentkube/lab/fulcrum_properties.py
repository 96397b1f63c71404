"""Fulcrum Core's service property schema, emulated: validation on create and update, who may set what
(the `actor` and `state` authorizers), immutability, defaults and secret properties stored in the vault.

Kept deliberately smaller than Core's engine: the validators an agent's tests meet (type, required,
enum, min/max, length, pattern, items) are real; `serviceOption` validators and pool generators are
accepted without checking (the lab has no service options nor pools)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

VAULT_PREFIX = "vault://"

# Actors as Core names them. An admin token acts as a user for property rules.
ACTOR_USER = "user"
ACTOR_AGENT = "agent"
_ACTOR_ALIASES = {ACTOR_USER: {"user", "admin", "participant"}, ACTOR_AGENT: {"agent"}}


class PropertyValidationError(Exception):
    """One or more properties are invalid; `errors` is a list of (path, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors))


# A vault writer: (value, secret type "persistent"|"ephemeral") -> reference (without the prefix).
VaultPut = Callable[[Any, str], str]


def _type_ok(kind: str | None, value: Any) -> bool:
    if kind in (None, "json"):
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "uuid":
        return isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F-]{36}", value) is not None
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    return True


def _cfg(validator: dict, *keys: str) -> Any:
    """Validator settings live under `config` in the current API and at the top level in older docs."""
    config = validator.get("config") or {}
    for key in keys:
        if key in config:
            return config[key]
        if key in validator:
            return validator[key]
    return None


def _check_validators(path: str, definition: dict, value: Any, errors: list[tuple[str, str]]) -> None:
    for validator in definition.get("validators") or []:
        kind = validator.get("type")
        if kind == "enum":
            allowed = _cfg(validator, "values", "value") or []
            if value not in allowed:
                errors.append((path, f"value must be one of: {allowed}"))
        elif kind == "min":
            bound = _cfg(validator, "value")
            if isinstance(value, int | float) and bound is not None and value < bound:
                errors.append((path, f"value must be at least {bound}"))
        elif kind == "max":
            bound = _cfg(validator, "value")
            if isinstance(value, int | float) and bound is not None and value > bound:
                errors.append((path, f"value must be at most {bound}"))
        elif kind == "minLength":
            bound = _cfg(validator, "value")
            if isinstance(value, str) and bound is not None and len(value) < bound:
                errors.append((path, f"length must be at least {bound}"))
        elif kind == "maxLength":
            bound = _cfg(validator, "value")
            if isinstance(value, str) and bound is not None and len(value) > bound:
                errors.append((path, f"length must be at most {bound}"))
        elif kind == "pattern":
            pattern = _cfg(validator, "pattern", "value")
            if isinstance(value, str) and pattern and re.search(pattern, value) is None:
                errors.append((path, f"value must match pattern {pattern}"))
        elif kind == "minItems":
            bound = _cfg(validator, "value")
            if isinstance(value, list) and bound is not None and len(value) < bound:
                errors.append((path, f"must have at least {bound} items"))
        elif kind == "maxItems":
            bound = _cfg(validator, "value")
            if isinstance(value, list) and bound is not None and len(value) > bound:
                errors.append((path, f"must have at most {bound} items"))
        # serviceOption, source, mutable, ...: not emulated (accepted).


def _check_value(path: str, definition: dict, value: Any, errors: list[tuple[str, str]]) -> None:
    kind = definition.get("type")
    if isinstance(value, str) and value.startswith(VAULT_PREFIX) and definition.get("secret"):
        return  # an already stored secret reference
    if not _type_ok(kind, value):
        errors.append((path, f"value must be of type {kind}"))
        return
    _check_validators(path, definition, value, errors)
    if kind == "object" and isinstance(definition.get("properties"), dict):
        nested = definition["properties"]
        for key in value:
            if key not in nested:
                errors.append((f"{path}.{key}", "unknown property"))
        for key, sub in nested.items():
            if key in value:
                _check_value(f"{path}.{key}", sub, value[key], errors)
            elif sub.get("required") and "default" not in sub:
                errors.append((f"{path}.{key}", "property is required"))
    if kind == "array" and isinstance(definition.get("items"), dict):
        for index, item in enumerate(value):
            _check_value(f"{path}[{index}]", definition["items"], item, errors)


def _with_defaults(definition: dict, value: Any) -> Any:
    """Nested object properties get their defaults filled, as at the top level."""
    nested = definition.get("properties")
    if definition.get("type") != "object" or not isinstance(nested, dict) or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in nested.items():
        if key in out:
            out[key] = _with_defaults(sub, out[key])
        elif "default" in sub:
            out[key] = sub["default"]
    return out


def deep_merge(old: Any, new: Any) -> Any:
    """PATCH semantics for properties: objects merge key by key, anything else is replaced."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: deep_merge(old.get(k), v) for k, v in new.items()}}
    return new


def _authorizers(definition: dict, kind: str) -> list[dict]:
    return [a for a in definition.get("authorizers") or [] if a.get("type") == kind]


def actor_allowed(definition: dict, actor: str) -> bool:
    """Whether `actor` may set this property. Without an `actor` authorizer only users may."""
    rules = _authorizers(definition, "actor")
    if not rules:
        return actor == ACTOR_USER
    names = _ACTOR_ALIASES.get(actor, {actor})
    return all(names & set((rule.get("config") or {}).get("actors") or []) for rule in rules)


def state_allowed(definition: dict, status: str) -> bool:
    for rule in _authorizers(definition, "state"):
        if status not in ((rule.get("config") or {}).get("allowedStates") or []):
            return False
    return True


def _definitions(schema: dict | None) -> dict[str, dict]:
    return dict(((schema or {}).get("properties")) or {})


def _store_secrets(definitions: dict, props: dict, vault_put: VaultPut) -> dict:
    out = dict(props)
    for name, value in props.items():
        secret = definitions.get(name, {}).get("secret")
        if secret and value is not None and not (isinstance(value, str) and value.startswith(VAULT_PREFIX)):
            out[name] = VAULT_PREFIX + vault_put(value, secret.get("type", "persistent"))
    return out


def validate_create(schema: dict | None, props: dict, vault_put: VaultPut, actor: str = ACTOR_USER) -> dict:
    """The validated property set of a new service (defaults filled, secrets replaced by vault refs)."""
    if not isinstance(props, dict):
        raise PropertyValidationError([("properties", "must be an object")])
    definitions = _definitions(schema)
    errors: list[tuple[str, str]] = []
    result: dict[str, Any] = {}
    if definitions:
        for name in props:
            if name not in definitions:
                errors.append((name, "unknown property"))
    for name, definition in definitions.items():
        if name in props:
            if not actor_allowed(definition, actor):
                errors.append((name, f"property cannot be set by {actor}"))
                continue
            value = _with_defaults(definition, props[name])
            _check_value(name, definition, value, errors)
            result[name] = value
        elif "default" in definition:
            result[name] = definition["default"]
        elif definition.get("required") and not definition.get("generator"):
            errors.append((name, "property is required"))
    if not definitions:
        result = dict(props)
    if errors:
        raise PropertyValidationError(errors)
    return _store_secrets(definitions, result, vault_put)


def validate_update(
    schema: dict | None,
    old: dict,
    updates: dict,
    status: str,
    vault_put: VaultPut,
    actor: str = ACTOR_USER,
) -> dict:
    """The validated updates by `actor` to a service in `status` (only the changed keys)."""
    if not isinstance(updates, dict):
        raise PropertyValidationError([("properties", "must be an object")])
    definitions = _definitions(schema)
    errors: list[tuple[str, str]] = []
    merged: dict[str, Any] = {}
    for name, value in updates.items():
        value = merged[name] = deep_merge(old.get(name), value)
        definition = definitions.get(name)
        if definition is None:
            if definitions:
                errors.append((name, "unknown property"))
            continue
        if not actor_allowed(definition, actor):
            errors.append((name, f"property cannot be updated by {actor}"))
            continue
        if name in old and old[name] == value:
            continue  # unchanged values pass every rule
        if definition.get("immutable") and old.get(name) is not None:
            errors.append((name, "property is immutable and cannot be changed"))
            continue
        if not state_allowed(definition, status):
            errors.append((name, f"property cannot be updated in state '{status}'"))
            continue
        _check_value(name, definition, value, errors)
    if errors:
        raise PropertyValidationError(errors)
    return _store_secrets(definitions, merged, vault_put)


def secret_refs(props: dict | None) -> list[str]:
    """Vault references (without prefix) held by a property set, at any depth."""
    refs: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith(VAULT_PREFIX):
            refs.append(value[len(VAULT_PREFIX) :])
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(props or {})
    return refs
