#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, or fails with a clear message.
# Order: $PYTHON, python3.13, python3.12, python3 on PATH, then pyenv's installed versions
# ($PYENV_ROOT/versions/3.1[2-9]*). Each candidate is executed, because pyenv shims exist on PATH
# even when they cannot run ("pyenv: python3.13: command not found").
set -u

ok() { "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

if [ -n "${PYTHON:-}" ]; then
  if ok "$PYTHON"; then command -v "$PYTHON" || echo "$PYTHON"; exit 0; fi
  echo "find-python: PYTHON=$PYTHON is not a working Python >= 3.12" >&2
  exit 1
fi

for c in python3.13 python3.12 python3; do
  if command -v "$c" >/dev/null 2>&1 && ok "$c"; then command -v "$c"; exit 0; fi
done

root="${PYENV_ROOT:-$HOME/.pyenv}"
for d in $(ls -d "$root"/versions/3.1[2-9]* "$root"/versions/3.[2-9][0-9]* 2>/dev/null | sort -rV); do
  if [ -x "$d/bin/python3" ] && ok "$d/bin/python3"; then echo "$d/bin/python3"; exit 0; fi
done

echo "find-python: no Python >= 3.12 found. Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12" >&2
exit 1
