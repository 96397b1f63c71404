"""A ServiceType's lifecycleSchema, as Fulcrum Core reads it: which actions are allowed from a state and
which state a completed or failed job leads to (error transitions picked by `onErrorRegexp`).

Transcribed from fulcrumproject/core pkg/domain/service_lifecycle.go (Validate, ResolveNextState,
ValidateActionAllowed, IsTerminalState); messages are Core's."""

from __future__ import annotations

import re

from agentkube_lab.fulcrum_properties import go_regexp_error


class LifecycleError(ValueError):
    """The lifecycle forbids this action or has no transition for this outcome."""


class NoTransition(LifecycleError):
    """No transition for (state, action, error): Core's ErrNoLifecycleTransition
    (pkg/domain/service_lifecycle.go). A failing job then keeps the service state (pkg/domain/job.go Fail)."""


def validate_schema(schema: object) -> None:
    """LifecycleSchema.Validate (pkg/domain/service_lifecycle.go), in Core's order and words."""
    if not isinstance(schema, dict):
        schema = {}
    states = schema.get("states") or []
    if not states:
        raise LifecycleError("lifecycle must have at least one state")
    names: set[str] = set()
    for state in states:
        name = state.get("name") if isinstance(state, dict) else None
        if not name:
            raise LifecycleError("lifecycle state name cannot be empty")
        if name in names:
            raise LifecycleError(f"duplicate lifecycle state name: {name}")
        names.add(name)
    initial = schema.get("initialState") or ""
    if not initial:
        raise LifecycleError("lifecycle must have an initial state")
    if initial not in names:
        raise LifecycleError(f'lifecycle initial state "{initial}" does not exist in states list')
    for state in schema.get("terminalStates") or []:
        if state not in names:
            raise LifecycleError(f'lifecycle terminal state "{state}" does not exist in states list')
    for state in schema.get("runningStates") or []:
        if state not in names:
            raise LifecycleError(f'lifecycle running state "{state}" does not exist in states list')
    actions = schema.get("actions") or []
    if not actions:
        raise LifecycleError("lifecycle must have at least one action")
    seen: set[str] = set()
    for action in actions:
        name = action.get("name") if isinstance(action, dict) else None
        if not name:
            raise LifecycleError("lifecycle action name cannot be empty")
        if name in seen:
            raise LifecycleError(f"duplicate lifecycle action name: {name}")
        seen.add(name)
        transitions = action.get("transitions") or []
        if not transitions:
            raise LifecycleError(f'lifecycle action "{name}" must have at least one transition')
        for t in transitions:
            if t.get("from", "") not in names:
                raise LifecycleError(
                    f'lifecycle action "{name}" transition references invalid from state "{t.get("from", "")}"'
                )
            if t.get("to", "") not in names:
                raise LifecycleError(
                    f'lifecycle action "{name}" transition references invalid to state "{t.get("to", "")}"'
                )
            pattern = t.get("onErrorRegexp") or ""
            if pattern and (problem := go_regexp_error(pattern)):
                raise LifecycleError(
                    f'lifecycle action "{name}" transition has invalid error regexp "{pattern}": {problem}'
                )


def _action(schema: dict, action: str) -> dict:
    for candidate in schema.get("actions") or []:
        if candidate.get("name") == action:
            return candidate
    raise LifecycleError(f'action "{action}" not found in lifecycle schema')


def is_terminal(schema: dict, state: str) -> bool:
    return state in (schema.get("terminalStates") or [])


def ensure_action_allowed(schema: dict, state: str, action: str) -> None:
    """DoServiceAction's checks (pkg/domain/service.go): terminal state first, then ValidateActionAllowed."""
    if is_terminal(schema, state):
        raise LifecycleError(f"cannot perform action on service in terminal state: {state}")
    if not any(t.get("from") == state for t in _action(schema, action).get("transitions") or []):
        raise LifecycleError(f'action "{action}" is not allowed from state "{state}"')


def next_state(schema: dict, state: str, action: str, error_message: str | None = None) -> str:
    """ResolveNextState: the first success transition from `state`; on failure the first error transition
    from `state` whose `onErrorRegexp` is empty or found in the message (Go's regexp.MatchString searches).
    Raises NoTransition when none applies."""
    transitions = [t for t in _action(schema, action).get("transitions") or [] if t.get("from") == state]
    if error_message is None:
        for t in transitions:
            if not t.get("onError"):
                return t["to"]
        raise NoTransition(
            f'no valid transition found for action "{action}" from state "{state}": no lifecycle transition found'
        )
    for t in transitions:
        if not t.get("onError"):
            continue
        pattern = t.get("onErrorRegexp") or ""
        if not pattern or re.search(pattern, error_message):
            return t["to"]
    raise NoTransition(
        f'no valid error transition found for action "{action}" from state "{state}" with error code '
        f'"{error_message}": no lifecycle transition found'
    )
