"""`python -m agentkube.adapters.env_exec ENV_FILE -- COMMAND...`: exec COMMAND with the variables of a JSON
file added to the environment, after deleting the file.

The job runner hands secret environment variables (runner.extra_env) to ansible-playbook this way: ansible-runner
records the environment it was given in `artifacts/<ident>/command`, so secrets never go through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m agentkube.adapters.env_exec ENV_FILE -- COMMAND...", file=sys.stderr)
        return 2
    env_file, command = argv[0], argv[2:]
    try:
        with open(env_file, encoding="utf-8") as f:
            extra = json.load(f)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(env_file)
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        print(f"{env_file}: not a JSON object of strings", file=sys.stderr)
        return 2
    os.environ.update(extra)
    os.execvp(command[0], command)  # noqa: S606 - the runner's own ansible-playbook command line
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
