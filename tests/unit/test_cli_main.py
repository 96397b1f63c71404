"""The top-level command line: --version, a --help for users, --log-format json."""

from __future__ import annotations

import json
import logging
import sys

import pytest

import agentkube
from agentkube.cli import main
from agentkube.cli.log_format import JsonFormatter


def test_version_prints_the_one_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"agentkube {agentkube.__version__}\n"


def test_help_names_the_common_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("agentkube run --config agent.yaml", "agentkube render job", "agentkube validate", "Exit status"):
        assert command in out


def test_json_log_lines_carry_time_level_logger_message_and_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("agentkube.agent.loop", logging.ERROR, __file__, 1, "job %s failed", ("j1",),
                                   sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "agentkube.agent.loop", "job j1 failed")
    assert line["time"].endswith("+00:00") and "ValueError: boom" in line["exc"]
