"""deploy/container/execution-environment.yml, the ansible-builder (3.x) definition for AWX and AAP users: it parses,
uses the version 3 schema, and its dependency files (relative to the definition's folder, as ansible-builder
resolves them) are the repository's requirements.txt and collections/requirements.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EE = REPO / "deploy" / "container" / "execution-environment.yml"
# ansible-builder 3.x: the top-level sections of a version 3 definition
V3_SECTIONS = {"additional_build_files", "additional_build_steps", "build_arg_defaults", "dependencies", "images",
               "options", "version"}


@pytest.fixture(scope="module")
def definition() -> dict:
    return yaml.safe_load(EE.read_text(encoding="utf-8"))


def test_it_is_a_version_3_definition(definition):
    assert definition["version"] == 3
    assert set(definition) <= V3_SECTIONS, set(definition) - V3_SECTIONS
    assert definition["images"]["base_image"]["name"]


def test_its_dependency_files_are_the_collections_own(definition):
    deps = definition["dependencies"]
    assert (EE.parent / deps["python"]).resolve() == REPO / "requirements.txt"
    assert (EE.parent / deps["galaxy"]).resolve() == REPO / "collections" / "requirements.yml"
    for entry in ("python", "galaxy"):
        assert (EE.parent / deps[entry]).is_file(), deps[entry]
    requirements = (REPO / "requirements.txt").read_text().split()
    assert "agentkube-kamaji" in requirements  # the collection's filters and modules import agentkube
    galaxy = yaml.safe_load((REPO / "collections" / "requirements.yml").read_text())
    assert {c["name"] for c in galaxy["collections"]} >= {"kubernetes.core", "community.general"}


def test_ansible_core_matches_the_agents(definition):
    """The EE's ansible-core is the one the agent declares (pyproject.toml), so the playbooks run the same."""
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    core = next(d for d in declared if d.startswith("ansible-core"))
    assert definition["dependencies"]["ansible_core"]["package_pip"].replace(" ", "") == core.replace(" ", "")


def test_ansible_builder_accepts_it():
    """ansible-builder's own schema check and path resolution, where ansible-builder is installed."""
    user_definition = pytest.importorskip("ansible_builder.user_definition", reason="ansible-builder not installed")
    d = user_definition.UserDefinition(str(EE))
    d.validate()
    assert Path(d.get_dep_abs_path("python")).resolve() == REPO / "requirements.txt"
    assert Path(d.get_dep_abs_path("galaxy")).resolve() == REPO / "collections" / "requirements.yml"
