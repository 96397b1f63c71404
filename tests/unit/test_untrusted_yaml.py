"""The one writer of the vars files handed to ansible-playbook: every string is data (the root is `!unsafe`), and
no string reads back as another type."""

from __future__ import annotations

import pytest

from agentkube.core.untrusted_yaml import dump_untrusted, load_untrusted

TRICKY = ["yes", "no", "on", "1.0", "0x10", "~", "null", "2024-01-01", "*alias", "&anchor", "!unsafe x", "- a",
          "{{ 7*7 }}", "{% raw %}", "{# c #}", "a: b", "line\nbreak", "é☃", "\u2028", "'", '"', "#x", ""]


def test_the_root_is_unsafe_and_strings_keep_their_type():
    data = {"s": TRICKY, "n": 3, "f": 1.5, "b": False, "none": None, "nested": {t: t for t in TRICKY}}
    text = dump_untrusted(data, "a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n--- !unsafe\n")
    assert load_untrusted(text) == data


def test_only_a_mapping_is_a_vars_document():
    with pytest.raises(TypeError):
        dump_untrusted(["x"])  # type: ignore[arg-type]


def test_shared_objects_are_written_in_full_not_as_aliases():
    shared = {"k": "v"}
    text = dump_untrusted({"a": shared, "b": shared})
    assert "&" not in text and "*" not in text
