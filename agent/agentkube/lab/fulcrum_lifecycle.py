"""A ServiceType's lifecycleSchema, as Fulcrum Core reads it: which actions are allowed from a state and
which state a completed or failed job leads to (error transitions picked by `onErrorRegexp`)."""

from __future__ import annotations

import re


class LifecycleError(ValueError):
    """The lifecycle forbids this action or has no transition for this outcome."""


def validate_schema(schema: object) -> None:
    """Core's structural checks on a lifecycleSchema; raises LifecycleError naming the problem."""
    if not isinstance(schema, dict):
        raise LifecycleError("lifecycleSchema is required and must be an object")
    states = [s.get("name") for s in schema.get("states") or [] if isinstance(s, dict)]
    if not states or any(not name for name in states):
        raise LifecycleError("lifecycleSchema.states must list named states")
    if len(set(states)) != len(states):
        raise LifecycleError("lifecycleSchema.states has duplicate names")
    if schema.get("initialState") not in states:
        raise LifecycleError("lifecycleSchema.initialState must be one of the states")
    for field in ("terminalStates", "runningStates"):
        for name in schema.get(field) or []:
            if name not in states:
                raise LifecycleError(f"lifecycleSchema.{field}: unknown state {name!r}")
    actions = schema.get("actions") or []
    if not actions:
        raise LifecycleError("lifecycleSchema.actions must not be empty")
    seen: set[str] = set()
    for action in actions:
        name = action.get("name")
        if not name or name in seen:
            raise LifecycleError(f"lifecycleSchema.actions: missing or duplicate name {name!r}")
        seen.add(name)
        transitions = action.get("transitions") or []
        if not transitions:
            raise LifecycleError(f"lifecycleSchema action {name!r} has no transitions")
        for t in transitions:
            if t.get("from") not in states or t.get("to") not in states:
                raise LifecycleError(f"lifecycleSchema action {name!r}: transition names an unknown state")
            if t.get("onErrorRegexp"):
                try:
                    re.compile(t["onErrorRegexp"])
                except re.error as exc:
                    raise LifecycleError(f"lifecycleSchema action {name!r}: bad onErrorRegexp: {exc}") from exc


def _action(schema: dict, action: str) -> dict:
    for candidate in schema.get("actions") or []:
        if candidate.get("name") == action:
            return candidate
    raise LifecycleError(f"action {action!r} not found in lifecycle schema")


def is_terminal(schema: dict, state: str) -> bool:
    return state in (schema.get("terminalStates") or [])


def ensure_action_allowed(schema: dict, state: str, action: str) -> None:
    if is_terminal(schema, state):
        raise LifecycleError(f"cannot perform action on service in terminal state: {state}")
    if not any(t.get("from") == state for t in _action(schema, action).get("transitions") or []):
        raise LifecycleError(f"action {action!r} is not allowed from state {state!r}")


def next_state(schema: dict, state: str, action: str, error_message: str | None = None) -> str:
    """The state after a job of `action` from `state` completed (no error) or failed with a message.

    Like Core: the first success transition from `state`; on failure the first error transition from
    `state` whose `onErrorRegexp` is empty or is found in the message (a search, as Go's MatchString)."""
    transitions = [t for t in _action(schema, action).get("transitions") or [] if t.get("from") == state]
    if error_message is None:
        for t in transitions:
            if not t.get("onError"):
                return t["to"]
        raise LifecycleError(f"no valid transition found for action {action!r} from state {state!r}")
    for t in transitions:
        if not t.get("onError"):
            continue
        pattern = t.get("onErrorRegexp") or ""
        if not pattern or re.search(pattern, error_message):
            return t["to"]
    raise LifecycleError(
        f"no valid error transition found for action {action!r} from state {state!r} with error code {error_message!r}"
    )
