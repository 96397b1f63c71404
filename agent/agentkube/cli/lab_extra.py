"""The lab lives in its own package (agentkube_lab), whose dependencies come with the `lab` extra: the commands
that need it import it through here, and say how to install the extra when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'agentkube-kamaji[lab]'"
# the `lab` extra's dependencies (pyproject.toml), some of them imported only once the lab starts
LAB_MODULES = ("fakepve", "jsonschema", "cryptography", "celpy")


class LabMissing(Exception):
    """The lab's package or one of its dependencies is not installed."""


def load(module: str) -> ModuleType:
    try:
        for dependency in LAB_MODULES:
            importlib.import_module(dependency)
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise LabMissing(f"the lab needs the 'lab' extra ({e.name} is not installed): {INSTALL_HINT}") from None
