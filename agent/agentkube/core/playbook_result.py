"""The one model of what a playbook hands back through `set_stats` (agentkube_result), checked before anything of
it is reported to Fulcrum: a malformed result fails the job, naming the field, instead of reaching Core (which
would store a wrong agentInstanceId or replace agentInstanceData with garbage)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PlaybookResultError(ValueError):
    """The playbook's result does not fit the model; the message names the field."""


class PlaybookResult(BaseModel):
    # the keys are Fulcrum's own (POST /jobs/{id}/complete); anything else is a playbook bug, not data to drop
    model_config = ConfigDict(extra="forbid", strict=True)

    agentInstanceId: str | None = Field(None, min_length=1, max_length=255)
    agentInstanceData: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None


def parse_playbook_result(data: Any) -> PlaybookResult:
    """The validated result; an absent result (None) is an empty one."""
    if data is None:
        return PlaybookResult()
    try:
        return PlaybookResult.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "agentkube_result"
            problems.append(f"{where}: {err['msg']}")
        raise PlaybookResultError("; ".join(problems)) from None
