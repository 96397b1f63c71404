"""The test suite's own layout: tests/ has no __init__.py files, so pytest imports each test file by its basename
(the default `prepend` import mode); two files with one basename break the collection of whichever comes second
("import file mismatch"), and under pytest-xdist only when both land in the same process."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_basename_of_its_own():
    names = Counter(path.name for path in TESTS.rglob("*.py") if path.name not in ("__init__.py", "conftest.py"))
    assert [name for name, count in names.items() if count > 1] == []
