"""Fulcrum Core's property schema engine, emulated: a ServiceType's propertySchema (and an AgentType's
configurationSchema) checked when it is created, and properties applied on create and update with Core's
rules. Transcribed from fulcrumproject/core:

- pkg/schema/engine.go: Engine.apply / processProperty (only properties of the schema are kept, so unknown
  properties are dropped, at every depth; vault references pass untouched; immutability; authorizers;
  type and validators; defaults when there is no old value; nested objects and array items processed
  recursively, so defaults are filled inside array items; secrets stored in the vault) and ValidateSchema /
  validatePropertyDefinition (the checks a schema must pass when its type is created);
- pkg/schema/validators_string.go, validators_number.go, validators_collection.go, validators_utils.go,
  validators_schema.go: minLength, maxLength, pattern, enum, min, max, minItems, maxItems; exactlyOne,
  uniqueValues;
- pkg/domain/service_property_schema_authorizers.go: the `actor` and `state` authorizers (a property without
  an actor authorizer may be set by any actor);
- pkg/domain/service_property_schema_engine.go and agent_config_schema_engine.go: which authorizers,
  validators, schema validators and generators each engine knows;
- pkg/domain/service_property_schema_context.go: actors `user` (admin and participant tokens), `agent`, `system`.

Not emulated (the lab has neither service options nor pools): the `serviceOption` and `serviceReference`
validators and the `pool` generator have their configuration checked like Core, but they accept every value
and generate nothing (Core fails a `pool` generator when the agent has no pool set)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

VAULT_PREFIX = "vault://"

# pkg/domain/service_property_schema_context.go: ActorTypeFromAuthRole (admin and participant act as users)
ACTOR_USER = "user"
ACTOR_AGENT = "agent"
ACTOR_SYSTEM = "system"

OP_CREATE = "create"
OP_UPDATE = "update"

# the engines Core composes (pkg/domain/service_property_schema_engine.go, agent_config_schema_engine.go)
ENGINE_SERVICE = "service"
ENGINE_AGENT_CONFIG = "agent_config"
_GENERIC_VALIDATORS = ("minLength", "maxLength", "pattern", "enum", "min", "max", "minItems", "maxItems")
_REGISTRY: dict[str, dict[str, tuple[str, ...]]] = {
    ENGINE_SERVICE: {
        "authorizers": ("actor", "state"),
        "validators": (*_GENERIC_VALIDATORS, "serviceOption", "serviceReference"),
        "schemaValidators": ("exactlyOne", "uniqueValues"),
        "generators": ("pool",),
    },
    ENGINE_AGENT_CONFIG: {
        "authorizers": (),
        "validators": _GENERIC_VALIDATORS,
        "schemaValidators": ("exactlyOne",),
        "generators": ("pool",),
    },
}
_TYPES = ("string", "integer", "number", "boolean", "object", "array", "json", "uuid")


class SchemaError(ValueError):
    """A schema definition Core's ValidateSchema refuses (the message is Core's)."""


class PropertyValidationError(Exception):
    """schema.ValidationError (pkg/schema/errors.go): `errors` is a list of (path, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__(self.text())

    def text(self) -> str:
        if not self.errors:
            return "validation failed"
        if len(self.errors) == 1:
            return f"validation failed: {self.errors[0][1]}"
        return f"validation failed: {len(self.errors)} errors"

    def __str__(self) -> str:
        return self.text()


class _PropError(Exception):
    """One property's error; its text is Core's error string."""


# A vault writer: (value, secret type "persistent"|"ephemeral") -> reference (without the prefix);
# a vault remover: reference -> None (best effort).
VaultPut = Callable[[Any, str], str]
VaultDelete = Callable[[str], None]


# --------------------------------------------------------------------------- Go's view of JSON values
def go_type(value: Any) -> str:
    """The %T Go prints for a value decoded by encoding/json into `any`."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def deep_equal(a: Any, b: Any) -> bool:
    """reflect.DeepEqual on decoded JSON: numbers are all float64, a bool is never a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


_RE2_UNSUPPORTED = re.compile(r"\(\?[=!]|\(\?<[=!]|\\[1-9]|\(\?P=|\(\?\(|\(\?>")


def go_regexp_error(pattern: str) -> str | None:
    """Why Go's regexp.Compile (RE2) refuses a pattern, or None. Python's re compiles what RE2 does, except
    the constructs RE2 lacks (lookaround, backreferences, conditionals, atomic groups): refused here too."""
    if _RE2_UNSUPPORTED.search(pattern):
        return f"error parsing regexp: invalid or unsupported Perl syntax: `{pattern}`"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"error parsing regexp: {exc}"
    return None


# --------------------------------------------------------------------------- value checks
def _validate_type(path: str, value: Any, kind: str) -> None:
    """Engine.validateType (pkg/schema/engine.go)."""
    if kind == "string":
        if not isinstance(value, str):
            raise _PropError(f"{path}: expected string, got {go_type(value)}")
    elif kind == "integer":
        if isinstance(value, float):
            if not value.is_integer():
                raise _PropError(f"{path}: expected integer, got float with decimal part")
        elif not _is_number(value):
            raise _PropError(f"{path}: expected integer, got {go_type(value)}")
    elif kind == "number":
        if not _is_number(value):
            raise _PropError(f"{path}: expected number, got {go_type(value)}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _PropError(f"{path}: expected boolean, got {go_type(value)}")
    elif kind == "object":
        if not isinstance(value, dict):
            raise _PropError(f"{path}: expected object, got {go_type(value)}")
    elif kind == "array":
        if not isinstance(value, list):
            raise _PropError(f"{path}: expected array, got {go_type(value)}")
    elif kind == "uuid":
        if not isinstance(value, str):
            raise _PropError(f"{path}: expected uuid string, got {go_type(value)}")
        if not _is_go_uuid(value):
            raise _PropError(f"{path}: invalid uuid format: invalid UUID format")
    elif kind != "json":
        raise _PropError(f"{path}: unknown type: {kind}")


_UUID36 = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _is_go_uuid(value: str) -> bool:
    """google/uuid Parse: 36 chars with dashes, 38 in braces, 45 as urn:uuid:, or 32 hex digits."""
    if len(value) == 36:
        return _UUID36.fullmatch(value) is not None
    if len(value) == 38 and value[0] == "{" and value[-1] == "}":
        return _UUID36.fullmatch(value[1:-1]) is not None
    if len(value) == 45 and value[:9].lower() == "urn:uuid:":
        return _UUID36.fullmatch(value[9:]) is not None
    return len(value) == 32 and re.fullmatch(r"[0-9a-fA-F]{32}", value) is not None


def _number_config(path: str, name: str, config: dict) -> float | int:
    """getIntConfig / getFloatConfig (pkg/schema/validators_utils.go): the `value` config, a number (the int
    reading truncates it)."""
    if "value" not in config:
        raise _PropError(f"{path}: {name} validator requires 'value' config")
    value = config["value"]
    if not _is_number(value):
        raise _PropError(f"{path}: {name} 'value' config must be a number")
    return value


def _int_config(path: str, name: str, config: dict) -> int:
    return int(_number_config(path, name, config))


def _float_config(path: str, name: str, config: dict) -> float:
    return float(_number_config(path, name, config))


def _run_validator(kind: str, path: str, value: Any, config: dict) -> None:
    """The property validators' Validate (pkg/schema/validators_*.go). String lengths are Go's len(): bytes."""
    if kind in ("minLength", "maxLength"):
        if not isinstance(value, str):
            raise _PropError(f"{path}: expected string for {kind} validator")
        bound, size = _int_config(path, kind, config), len(value.encode())
        if kind == "minLength" and size < bound:
            raise _PropError(f"{path}: string length {size} is less than minimum {bound}")
        if kind == "maxLength" and size > bound:
            raise _PropError(f"{path}: string length {size} exceeds maximum {bound}")
    elif kind == "pattern":
        if not isinstance(value, str):
            raise _PropError(f"{path}: expected string for pattern validator")
        pattern = config.get("pattern")
        if not isinstance(pattern, str):
            raise _PropError(f"{path}: pattern validator requires 'pattern' config")
        if re.search(pattern, value) is None:
            raise _PropError(f"{path}: string does not match required pattern")
    elif kind == "enum":
        values = config.get("values")
        if "values" not in config:
            raise _PropError(f"{path}: enum validator requires 'values' config")
        if not isinstance(values, list):
            raise _PropError(f"{path}: enum 'values' config must be an array")
        if not any(deep_equal(value, allowed) for allowed in values):
            raise _PropError(f"{path}: value not in allowed enum values")
    elif kind in ("min", "max"):
        if not _is_number(value):
            raise _PropError(f"{path}: expected number for {kind} validator")
        bound = _float_config(path, kind, config)
        if kind == "min" and value < bound:
            raise _PropError(f"{path}: value {_go_num(value)} is less than minimum {_go_num(bound)}")
        if kind == "max" and value > bound:
            raise _PropError(f"{path}: value {_go_num(value)} exceeds maximum {_go_num(bound)}")
    elif kind in ("minItems", "maxItems"):
        if not isinstance(value, list):
            raise _PropError(f"{path}: expected array for {kind} validator")
        bound = _int_config(path, kind, config)
        if kind == "minItems" and len(value) < bound:
            raise _PropError(f"{path}: array length {len(value)} is less than minimum {bound}")
        if kind == "maxItems" and len(value) > bound:
            raise _PropError(f"{path}: array length {len(value)} exceeds maximum {bound}")
    # serviceOption, serviceReference: not emulated (see the module docstring)


def _go_num(value: float) -> str:
    """%v of a float64."""
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e21 else repr(number)


def _run_schema_validator(kind: str, props: dict, config: dict) -> None:
    """validators_schema.go: exactlyOne, uniqueValues (on the processed property set)."""
    names = [p for p in config.get("properties") or [] if isinstance(p, str)]
    if kind == "exactlyOne":
        if len(names) < 2:
            raise _PropError("exactlyOne validator requires at least 2 properties")
        given = [p for p in names if props.get(p) is not None]
        if not given:
            raise _PropError(f"exactly one of [{' '.join(names)}] must be provided")
        if len(given) > 1:
            raise _PropError(f"only one of [{' '.join(names)}] can be provided, got: [{' '.join(given)}]")
    elif kind == "uniqueValues":
        seen: dict[str, str] = {}
        for name in names:
            if props.get(name) is None:
                continue
            key = json.dumps(props[name], sort_keys=True, separators=(",", ":"))
            if key in seen:
                raise _PropError(
                    f"properties {seen[key]} and {name} must have unique values, both have: {props[name]}"
                )
            seen[key] = name


# --------------------------------------------------------------------------- schema definition checks
def _list_of_str(config: dict, key: str) -> list | None:
    value = config.get(key)
    return value if isinstance(value, list) else None


def _check_authorizer_config(kind: str, config: dict) -> None:
    """ValidateConfig of ActorAuthorizer / StateAuthorizer (pkg/domain/service_property_schema_authorizers.go)."""
    if kind == "actor":
        if "actors" not in config:
            raise SchemaError("actor authorizer config missing 'actors'")
        actors = _list_of_str(config, "actors")
        if actors is None:
            raise SchemaError("actor authorizer config 'actors' must be an array")
        if not actors:
            raise SchemaError("actor authorizer config 'actors' must not be empty")
        for actor in actors:
            if not isinstance(actor, str):
                raise SchemaError("actor authorizer config 'actors' must contain only strings")
            if actor not in (ACTOR_USER, ACTOR_AGENT, ACTOR_SYSTEM):
                raise SchemaError(
                    f"actor authorizer config 'actors' contains invalid actor '{actor}' (must be: user, agent, system)"
                )
    elif kind == "state":
        if "allowedStates" not in config:
            raise SchemaError("state authorizer config missing 'allowedStates'")
        states = _list_of_str(config, "allowedStates")
        if states is None:
            raise SchemaError("state authorizer config 'allowedStates' must be an array")
        if not states:
            raise SchemaError("state authorizer config 'allowedStates' must not be empty")
        if not all(isinstance(s, str) for s in states):
            raise SchemaError("state authorizer config 'allowedStates' must contain only strings")


def _check_validator_config(path: str, kind: str, config: dict) -> None:
    """The property validators' ValidateConfig (pkg/schema/validators_*.go, service_property_schema_validators.go)."""
    try:
        if kind in ("minLength", "maxLength", "minItems", "maxItems"):
            if _int_config(path, kind, config) < 0:
                raise SchemaError(f"{path}: {kind} value must be non-negative")
        elif kind == "pattern":
            pattern = config.get("pattern")
            if not isinstance(pattern, str):
                raise SchemaError(f"{path}: pattern validator requires 'pattern' config")
            if problem := go_regexp_error(pattern):
                raise SchemaError(f"{path}: invalid regex pattern: {problem}")
        elif kind == "enum":
            values = config.get("values")
            if not isinstance(values, list):
                raise SchemaError(f"{path}: enum validator requires 'values' config as array")
            if not values:
                raise SchemaError(f"{path}: enum must have at least one value")
        elif kind in ("min", "max"):
            if "value" not in config:
                raise SchemaError(f"{path}: {kind} validator requires 'value' config")
        elif kind == "serviceOption":
            if not config or "value" not in config:
                raise SchemaError("serviceOption validator config missing 'value'")
            if not isinstance(config["value"], str):
                raise SchemaError("serviceOption validator config 'value' must be a string (serviceOptionType)")
            if not config["value"]:
                raise SchemaError("serviceOption validator config 'value' cannot be empty")
        elif kind == "serviceReference" and config:
            if "types" in config:
                types = config["types"]
                if not isinstance(types, list):
                    raise SchemaError("serviceReference validator 'types' must be an array")
                if not types:
                    raise SchemaError("serviceReference validator 'types' array cannot be empty")
                if not all(isinstance(t, str) for t in types):
                    raise SchemaError("serviceReference validator 'types' array must contain only strings")
            if "origin" in config:
                if not isinstance(config["origin"], str):
                    raise SchemaError("serviceReference validator 'origin' must be a string")
                if config["origin"] not in ("consumer", "group"):
                    raise SchemaError("serviceReference validator 'origin' must be 'consumer' or 'group'")
    except _PropError as exc:
        raise SchemaError(str(exc)) from None


def _check_generator_config(config: dict) -> None:
    """parsePoolTypeConfig (pkg/domain/agent_config_schema_generator_pool.go)."""
    if "poolType" not in config:
        raise SchemaError("pool generator config missing 'poolType'")
    if not isinstance(config["poolType"], str):
        raise SchemaError("pool generator config 'poolType' must be a string")
    if not config["poolType"]:
        raise SchemaError("pool generator config 'poolType' cannot be empty")


def _cfg(entry: dict) -> dict:
    config = entry.get("config")
    return config if isinstance(config, dict) else {}


def _check_definition(path: str, definition: dict, engine: str) -> None:
    """validatePropertyDefinition (pkg/schema/engine.go), in Core's order."""
    registry = _REGISTRY[engine]
    kind = definition.get("type") or ""
    if kind not in _TYPES:
        raise SchemaError(f"{path}: invalid type '{kind}'")
    items = definition.get("items")
    if kind == "array" and isinstance(items, dict) and items.get("secret") is not None:
        raise SchemaError(f"{path}: array items cannot be secret")
    if definition.get("secret") is not None and kind in ("object", "array"):
        raise SchemaError(f"{path}: only primitive types can be secret")
    if definition.get("default") is not None:
        try:
            _validate_type(path, definition["default"], kind)
        except _PropError as exc:
            raise SchemaError(f"{path}: default value type mismatch: {exc}") from None
    if definition.get("default") is not None and definition.get("generator") is not None:
        raise SchemaError(f"{path}: cannot have both default and generator")
    nested = definition.get("properties") or {}
    if kind == "object" and nested:
        for name, sub in nested.items():
            if name == "":
                raise SchemaError(f"{path}: nested property name cannot be empty")
            _check_definition(f"{path}.{name}", sub, engine)
    if kind == "array" and isinstance(items, dict):
        _check_definition(f"{path}[]", items, engine)
    for authorizer in definition.get("authorizers") or []:
        if authorizer.get("type") not in registry["authorizers"]:
            raise SchemaError(f"{path}: unknown authorizer '{authorizer.get('type', '')}'")
        _check_authorizer_config(authorizer["type"], _cfg(authorizer))
    for validator in definition.get("validators") or []:
        if validator.get("type") not in registry["validators"]:
            raise SchemaError(f"{path}: unknown validator '{validator.get('type', '')}'")
        _check_validator_config(path, validator["type"], _cfg(validator))
    generator = definition.get("generator")
    if generator is not None:
        if generator.get("type") not in registry["generators"]:
            raise SchemaError(f"{path}: unknown generator '{generator.get('type', '')}'")
        _check_generator_config(_cfg(generator))
    secret = definition.get("secret")
    if secret is not None and secret.get("type") not in ("persistent", "ephemeral"):
        raise SchemaError(f"{path}: secret type must be 'persistent' or 'ephemeral'")


_DEFINITION_FIELDS: dict[str, tuple[type, ...]] = {
    "type": (str,),
    "label": (str,),
    "required": (bool,),
    "immutable": (bool,),
    "authorizers": (list,),
    "secret": (dict,),
    "generator": (dict,),
    "validators": (list,),
    "properties": (dict,),
    "items": (dict,),
}


def check_decodable(schema: Any, where: str) -> None:
    """What encoding/json refuses when it decodes a body into schema.Schema (pkg/schema/schema.go): a field
    of the wrong JSON type. Raises SchemaError with Go's wording; null is always accepted."""

    def fail(field: str, got: Any) -> None:
        raise SchemaError(f"json: cannot unmarshal {go_type(got)} into Go struct field {where}.{field}")

    def definition(d: Any, field: str) -> None:
        if d is None:
            return
        if not isinstance(d, dict):
            fail(field, d)
        for key, kinds in _DEFINITION_FIELDS.items():
            value = d.get(key)
            if value is not None and (not isinstance(value, kinds) or (kinds == (str,) and isinstance(value, bool))):
                fail(f"{field}.{key}", value)
        for entry_key in ("authorizers", "validators"):
            for entry in d.get(entry_key) or []:
                if entry is not None and not isinstance(entry, dict):
                    fail(f"{field}.{entry_key}", entry)
                if isinstance(entry, dict):
                    entry_fields = (("type", str), ("config", dict))
                    for sub, kind in entry_fields:
                        if entry.get(sub) is not None and not isinstance(entry[sub], kind):
                            fail(f"{field}.{entry_key}.{sub}", entry[sub])
        for name, sub in (d.get("properties") or {}).items():
            definition(sub, f"{field}.properties[{name}]")
        definition(d.get("items"), f"{field}.items")

    if schema is None:
        return
    if not isinstance(schema, dict):
        fail("", schema)
    if schema.get("properties") is not None and not isinstance(schema["properties"], dict):
        fail("properties", schema["properties"])
    for name, sub in (schema.get("properties") or {}).items():
        definition(sub, f"properties[{name}]")
    if schema.get("validators") is not None and not isinstance(schema["validators"], list):
        fail("validators", schema["validators"])


def validate_schema(schema: Any, engine: str = ENGINE_SERVICE) -> None:
    """Engine.ValidateSchema (pkg/schema/engine.go) with the registry of `engine`; raises SchemaError."""
    schema = schema if isinstance(schema, dict) else {}
    properties = schema.get("properties") or {}
    if not properties:
        raise SchemaError("schema must have at least one property defined")
    for name, definition in properties.items():
        if name == "":
            raise SchemaError("property name cannot be empty")
        _check_definition(name, definition if isinstance(definition, dict) else {}, engine)
    for validator in schema.get("validators") or []:
        kind = validator.get("type")
        if kind not in _REGISTRY[engine]["schemaValidators"]:
            raise SchemaError(f"unknown schema validator: {kind or ''}")
        config = _cfg(validator)
        names = config.get("properties")
        if not isinstance(names, list):
            raise SchemaError(f"{kind} validator requires 'properties' config as array")
        for name in names:
            if not isinstance(name, str):
                raise SchemaError(f"{kind} validator: all properties must be strings, got {go_type(name)}")
        if len(names) < 2:
            raise SchemaError(f"{kind} validator requires at least 2 properties")


# --------------------------------------------------------------------------- the engine
class _Apply:
    """One ApplyCreate / ApplyUpdate (pkg/schema/engine.go)."""

    def __init__(self, actor: str, status: str, vault_put: VaultPut, vault_delete: VaultDelete | None):
        self.actor = actor
        self.status = status  # ServiceStatus: "" on create
        self.vault_put = vault_put
        self.vault_delete = vault_delete

    def apply(self, op: str, schema: dict, old: dict | None, new: dict | None) -> dict:
        """Engine.apply: only the schema's properties are processed, so anything else is dropped."""
        result: dict[str, Any] = {}
        errors: list[tuple[str, str]] = []
        for name, definition in (schema.get("properties") or {}).items():
            old_value = (old or {}).get(name)
            new_value = (new or {}).get(name)
            try:
                final = self.property(op, name, definition, old_value, new_value)
            except _PropError as exc:
                errors.append((name, str(exc)))
                continue
            except PropertyValidationError as exc:  # a nested object's errors, folded as Core's err.Error()
                errors.append((name, exc.text()))
                continue
            if final is not None:
                result[name] = final
            elif definition.get("required") and old_value is None:
                errors.append((name, "required property is missing"))
        for validator in schema.get("validators") or []:
            try:
                _run_schema_validator(validator.get("type"), result, _cfg(validator))
            except _PropError as exc:
                errors.append(("", str(exc)))
                break
        if errors:
            raise PropertyValidationError(errors)
        return result

    def property(self, op: str, name: str, definition: dict, old: Any, new: Any) -> Any:
        """Engine.processProperty."""
        has_new = new is not None
        if isinstance(new, str) and new.startswith(VAULT_PREFIX) and definition.get("secret") is not None:
            return new  # 1. a vault reference skips every check
        if (  # 2. immutability (updates only, and only a real change)
            definition.get("immutable") and has_new and old is not None and op == OP_UPDATE
            and not deep_equal(old, new)
        ):
            raise _PropError(f"{name}: property is immutable and cannot be changed")
        for authorizer in definition.get("authorizers") or []:  # 3. authorizers, all must pass
            self.authorize(op, name, authorizer.get("type"), _cfg(authorizer), has_new)
        if has_new:  # 4. the given value
            self.validate_value(name, definition, new)
            return self.finalize(op, name, definition, old, new)
        final = None  # 5. default (only without an old value); generators: not emulated
        if definition.get("default") is not None and old is None:
            try:
                self.validate_value(name, definition, definition["default"])
            except _PropError as exc:
                raise _PropError(f"{name}: default value failed validation: {exc}") from None
            final = definition["default"]
        if final is not None:
            return self.finalize(op, name, definition, old, final)
        return old

    def authorize(self, op: str, name: str, kind: str | None, config: dict, has_new: bool) -> None:
        """ActorAuthorizer / StateAuthorizer.Authorize (pkg/domain/service_property_schema_authorizers.go)."""
        if kind == "actor":
            if not has_new:
                return
            actors = config.get("actors")
            if "actors" not in config:
                raise _PropError(f"{name}: actor authorizer config missing 'actors'")
            if not isinstance(actors, list):
                raise _PropError(f"{name}: actor authorizer config 'actors' must be an array")
            if self.actor in [a for a in actors if isinstance(a, str)]:
                return
            allowed = " ".join(a for a in actors if isinstance(a, str))
            raise _PropError(f"{name}: property can only be set by: [{allowed}] (current actor: {self.actor})")
        if kind == "state":
            if op != OP_UPDATE or not has_new:
                return
            if not self.status:
                raise _PropError(f"{name}: state authorizer requires service status for update operations")
            states = config.get("allowedStates")
            if not isinstance(states, list):
                raise _PropError(f"{name}: state authorizer config 'allowedStates' must be an array")
            if self.status in [s for s in states if isinstance(s, str)]:
                return
            allowed = " ".join(s for s in states if isinstance(s, str))
            raise _PropError(
                f"{name}: property cannot be updated in state '{self.status}' (allowed states: [{allowed}])"
            )
        raise _PropError(f"{name}: unknown authorizer type '{kind or ''}'")

    def validate_value(self, path: str, definition: dict, value: Any) -> None:
        """Engine.validatePropertyValue: the type, then each validator in order."""
        _validate_type(path, value, definition.get("type") or "")
        for validator in definition.get("validators") or []:
            _run_validator(validator.get("type"), path, value, _cfg(validator))

    def finalize(self, op: str, name: str, definition: dict, old: Any, value: Any) -> Any:
        """Engine.finalizePropertyValue: nested structures, then the secret."""
        processed = self.nested(op, name, definition, old, value)
        secret = definition.get("secret")
        if secret is not None:
            if isinstance(processed, str) and processed.startswith(VAULT_PREFIX):
                return processed
            ref = self.vault_put(processed, secret.get("type", "persistent"))
            if self.vault_delete and isinstance(old, str) and old.startswith(VAULT_PREFIX):
                self.vault_delete(old[len(VAULT_PREFIX) :])  # a rotation drops the old secret
            return VAULT_PREFIX + ref
        return processed

    def nested(self, op: str, name: str, definition: dict, old: Any, value: Any) -> Any:
        """Engine.processNestedStructure / processNestedObject / processNestedArray."""
        kind = definition.get("type")
        if kind == "object" and definition.get("properties"):
            if not isinstance(value, dict):
                raise _PropError(f"{name}: expected object but got {go_type(value)}")
            return self.apply(op, definition, old if isinstance(old, dict) else None, value)
        items = definition.get("items")
        if kind == "array" and isinstance(items, dict):
            if not isinstance(value, list):
                raise _PropError(f"{name}: expected array but got {go_type(value)}")
            old_items = old if isinstance(old, list) else []
            out = []
            for index, item in enumerate(value):
                old_item = old_items[index] if index < len(old_items) else None
                item_name = f"{name}[{index}]"
                self.validate_value(item_name, items, item)
                out.append(self.nested(op, item_name, items, old_item, item))
            return out
        return value


def apply_create(
    schema: dict | None, props: dict, vault_put: VaultPut, actor: str = ACTOR_USER
) -> dict:
    """Engine.ApplyCreate: the new service's property set (unknown properties dropped, defaults filled,
    secrets replaced by vault references). Raises PropertyValidationError."""
    return _Apply(actor, "", vault_put, None).apply(OP_CREATE, schema or {}, None, props)


def apply_update(
    schema: dict | None,
    old: dict,
    updates: dict,
    status: str,
    vault_put: VaultPut,
    actor: str = ACTOR_USER,
    vault_delete: VaultDelete | None = None,
) -> dict:
    """Engine.ApplyUpdate: the full property set after `updates` by `actor` to a service in `status` (old
    values kept where nothing new is given, objects merged key by key, arrays replaced)."""
    return _Apply(actor, status, vault_put, vault_delete).apply(OP_UPDATE, schema or {}, old, updates)


def ephemeral_refs(schema: dict | None, props: dict | None) -> list[str]:
    """extractEphemeralSecretProperties + extractVaultReferences (pkg/schema/engine.go): vault references held
    by ephemeral secret properties, in nested objects and array items too."""
    refs: list[str] = []

    def walk(definitions: dict, values: Any) -> None:
        if not isinstance(values, dict):
            return
        for name, definition in definitions.items():
            if name not in values:
                continue
            secret = definition.get("secret")
            if secret is not None:
                if secret.get("type") == "ephemeral":
                    refs.extend(secret_refs({name: values[name]}))
                continue
            if definition.get("type") == "object" and definition.get("properties"):
                walk(definition["properties"], values[name])
            items = definition.get("items")
            if definition.get("type") == "array" and isinstance(items, dict) and items.get("properties"):
                for item in values[name] if isinstance(values[name], list) else []:
                    walk(items["properties"], item)

    walk((schema or {}).get("properties") or {}, props)
    return refs


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
