"""The version window is defined once, in the kamaji_tcp role's defaults: the agent's defaults, `agentkube
validate`, the filters and the playbooks all follow it, and no other file carries the numbers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from agentkube.core import project, version_window
from agentkube.core.tcp_manifest import TcpSettings
from agentkube.core.tenant_spec import SpecError, validate_tenant_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def moved_window(tmp_path, monkeypatch):
    """A copy of the project whose role defaults say v1.34 to v1.35."""
    defaults = tmp_path / version_window.ROLE_DEFAULTS
    defaults.parent.mkdir(parents=True)
    shutil.copy(project.project_dir() / version_window.ROLE_DEFAULTS, defaults)
    text = defaults.read_text()
    text = re.sub(r"(?m)^kamaji_tcp_min_version: .*$", "kamaji_tcp_min_version: v1.34", text)
    text = re.sub(r"(?m)^kamaji_tcp_max_version: .*$", "kamaji_tcp_max_version: v1.35", text)
    defaults.write_text(text)
    monkeypatch.setattr(version_window, "project_dir", lambda: tmp_path)
    version_window.default_window.cache_clear()
    yield
    version_window.default_window.cache_clear()


def test_everything_python_follows_the_role_defaults(moved_window):
    assert version_window.default_window() == ((1, 34), (1, 35))
    assert TcpSettings().window == ((1, 34), (1, 35))
    with pytest.raises(SpecError, match=r"v1\.36\.0 is outside the supported window v1\.34 to v1\.35"):
        validate_tenant_spec({"kubernetesVersion": "v1.36.0", "nodePools": []})


def test_no_other_file_defines_the_window():
    """Literal windows elsewhere (a `default('v1.33')` in a play, a constant in the agent) would drift."""
    literal = re.compile(r"default\(\s*['\"]v?1\.\d+['\"]\s*\)|=\s*\(1, ?\d+\)|^\s*kamaji_tcp_m\w+_version: v", re.M)
    found = []
    for base in ("agent/agentkube", "plugins", "playbooks", "roles", "inventories"):
        for path in (REPO / base).rglob("*"):
            if path.suffix not in (".py", ".yml", ".yaml") or "molecule" in path.parts or path.is_symlink():
                continue
            if path.relative_to(REPO).as_posix() == version_window.ROLE_DEFAULTS:
                continue
            found += [f"{path.relative_to(REPO)}: {m.group(0).strip()}" for m in literal.finditer(path.read_text())]
    assert found == []
