"""Reading the files a user hands to the CLI (properties, operator settings): YAML or JSON mappings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class InputFileError(ValueError):
    """A file could not be read or is not a mapping; the message names the file."""


def load_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a YAML (or JSON, which is YAML) file holding a mapping; `what` names it in errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputFileError(f"{what} file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputFileError(f"{what} file {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputFileError(f"{what} file {path}: not valid YAML/JSON: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputFileError(f"{what} file {path}: expected a mapping, got {type(data).__name__}")
    return data
