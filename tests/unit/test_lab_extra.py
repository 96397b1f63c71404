"""The agent never needs the lab: `agentkube lab` and `agentkube demo` load it by name and say how to install the
`lab` extra when one of its dependencies is missing."""

from __future__ import annotations

import sys

import pytest

from agentkube.cli import main
from agentkube.cli.lab_extra import LabMissing, load


def test_a_missing_lab_dependency_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fakepve", None)  # as if it were not installed
    with pytest.raises(LabMissing, match=r"fakepve is not installed\): pip install 'agentkube-kamaji\[lab\]'"):
        load("agentkube_lab.lab")
    assert main(["demo"]) == 2
    assert main(["lab"]) == 2
    err = capsys.readouterr().err
    assert "agentkube demo: the lab needs the 'lab' extra" in err and "agentkube lab: the lab needs" in err


def test_with_the_extra_the_lab_loads():
    assert load("agentkube_lab.lab").Lab.__module__ == "agentkube_lab.lab"
