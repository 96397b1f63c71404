"""Every module of the agentkube.kamaji collection documents itself the way `ansible-doc` reads it: the
DOCUMENTATION block parses, names the module, and lists exactly the options its argument spec takes (an option
added to the code but not to the docs, or a stale one in the docs, fails here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentkube.core.project import COLLECTION

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py"))
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def docs() -> dict:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    r = subprocess.run([str(BIN / "ansible-doc"), "--json", *(f"{COLLECTION}.{m}" for m in MODULES)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "[ERROR]" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def _argument_spec(module: str) -> set[str]:
    """The option names the module's AnsibleModule takes: its source's argument spec, read by running the module
    with no input up to the point AnsibleModule is built."""
    code = (
        "import sys, json\n"
        "from unittest import mock\n"
        "import ansible.module_utils.basic as basic\n"
        "seen = {}\n"
        "class Stop(Exception): pass\n"
        "def fake(self, argument_spec, **kw):\n"
        "    seen.update(argument_spec); raise Stop\n"
        "with mock.patch.object(basic.AnsibleModule, '__init__', fake):\n"
        f"    import ansible_collections.agentkube.kamaji.plugins.modules.{module} as m\n"
        "    try:\n"
        "        m.main()\n"
        "    except Stop:\n"
        "        pass\n"
        "print(json.dumps(sorted(seen)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout))


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_reads_the_module_and_its_options_match_the_code(docs, module):
    doc = docs[f"{COLLECTION}.{module}"]["doc"]
    assert doc["module"] == module
    assert doc["short_description"] and doc["description"]
    assert set(doc.get("options") or {}) == _argument_spec(module)
