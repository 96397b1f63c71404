"""The Ansible side is the agentkube.kamaji collection: `ansible-galaxy collection build` makes an artifact with
the roles, playbooks and plugins (and none of the agent, its tests or the lab), and a play that uses the
installed collection's role by its FQCN finds the role's modules and filters there (roles inside a collection do
not see short filter names: the roles and the template name them by FQCN)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

import agentkube
from agentkube.core.naming import tenant_name
from agentkube.core.project import COLLECTION

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collection")
    r = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = out.glob("agentkube-kamaji-*.tar.gz")
    return path


def test_galaxy_metadata_names_the_collection_the_agent_uses_at_the_agents_version():
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert f"{galaxy['namespace']}.{galaxy['name']}" == COLLECTION
    assert galaxy["version"] == agentkube.__version__
    requirements = yaml.safe_load((REPO / "collections" / "requirements.yml").read_text())
    assert set(galaxy["dependencies"]) == {c["name"] for c in requirements["collections"]}


def test_the_artifact_holds_the_ansible_side_only(artifact):
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
    for needed in ("MANIFEST.json", "meta/runtime.yml", "requirements.txt",
                   "roles/kamaji_tcp/defaults/main.yml", "roles/proxmox_vm/tasks/main.yml",
                   "playbooks/create.yml", "plugins/modules/proxmox_vm_clone.py",
                   "plugins/module_utils/proxmox_api.py", "plugins/filter/agentkube_filters.py",
                   "templates/tenant-control-plane.yaml.j2"):
        assert needed in names, needed
    for left_out in ("agent", "tests", "bench", "roles/kamaji_tcp/molecule"):
        assert not any(n == left_out or n.startswith(left_out + "/") for n in names), left_out
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_a_role_of_the_installed_collection_runs_with_its_filters(artifact, tmp_path):
    # The installed copy only: this checkout's collection (on sys.path through the editable install) is not
    # scanned, and the play runs from a folder without the project's ansible.cfg.
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"),
           "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_CONFIG": str(tmp_path / "none.cfg")}
    install = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--no-deps", "-p",
                              str(tmp_path / "collections"), str(artifact)], env=env, capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    assert (tmp_path / "collections" / "ansible_collections" / "agentkube" / "kamaji" / "MANIFEST.json").is_file()
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Validate a tenant with the installed collection",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [{
            "name": "The kamaji_tcp role's checks",
            "ansible.builtin.include_role": {"name": f"{COLLECTION}.kamaji_tcp", "tasks_from": "validate.yml"},
            "vars": {
                "agentkube_service": {"id": "svc-1", "name": "Team A"},
                "agentkube_tenant_name": tenant_name("Team A", "svc-1"),
                "agentkube_tenant": {"kubernetesVersion": "v1.37.1", "nodePools": []},
            },
        }],
    }]))
    r = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    # The role's default window (v1.33 to v1.36) refuses v1.37, through the collection's own filter.
    assert r.returncode == 2, out
    assert "agentkube_tenant.kubernetesVersion: v1.37.1 is outside the supported window v1.33 to v1.36" in out, out
    assert "No filter named" not in out
