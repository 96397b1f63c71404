"""Patterns match whole strings in the roles (issue 10, item 8): a value that is valid but for a trailing
newline is refused, naming the field, before anything is touched. Runs the proxmox_vm and kamaji_tcp inputs
checks (tasks_from validate.yml, no API call) with ansible-playbook."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from test_kamaji_tcp_role import REPO, _ansible_env

from agentkube.core.naming import tenant_name

pytestmark = pytest.mark.integration

SERVICE = str(uuid.uuid4())
PLAY = [{
    "name": "Check the roles' inputs",
    "hosts": "localhost",
    "connection": "local",
    "gather_facts": False,
    "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
    "tasks": [
        {"name": "Check the Proxmox inputs",
         "ansible.builtin.include_role": {"name": "proxmox_vm", "tasks_from": "validate.yml"}},
        {"name": "Check the Kamaji inputs",
         "ansible.builtin.include_role": {"name": "kamaji_tcp", "tasks_from": "validate.yml"}},
    ],
}]
GOOD = {
    "agentkube_service": {"id": SERVICE, "name": "Patterns"},
    "agentkube_tenant_name": tenant_name("Patterns", SERVICE),
    "agentkube_tenant": {"kubernetesVersion": "v1.35.7",
                         "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 2048,
                                        "diskGiB": 20}]},
    "proxmox_vm_api_host": "127.0.0.1",
    "proxmox_vm_api_token_id": "agentkube@pve!agent",
    "proxmox_vm_api_token_secret": "not-a-real-secret",
    "proxmox_vm_templates": {"1.35": {"vmid": 9035}},
    "proxmox_vm_ip_pool": "10.0.0.60-10.0.0.199",
    "proxmox_vm_ip_gateway": "10.0.0.1",
}


def _run(tmp_path, **overrides) -> subprocess.CompletedProcess:
    play = tmp_path / "play.yml"
    play.write_text(json.dumps(PLAY))
    vars_file = tmp_path / f"vars-{uuid.uuid4().hex[:6]}.json"
    vars_file.write_text(json.dumps({**GOOD, **overrides}))
    vars_file.chmod(0o600)
    return subprocess.run(["ansible-playbook", "-i", "localhost,", str(play), "-e", f"@{vars_file}"],
                          cwd=REPO, env=_ansible_env(), capture_output=True, text=True, timeout=120)


def test_valid_inputs_pass(tmp_path):
    run = _run(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]


@pytest.mark.parametrize(("overrides", "field"), [
    ({"agentkube_tenant": dict(GOOD["agentkube_tenant"], kubernetesVersion="v1.35.7\n")},
     "agentkube_tenant.kubernetesVersion"),
    ({"agentkube_tenant_name": GOOD["agentkube_tenant_name"] + "\n"}, "agentkube_tenant_name"),
    # no_log task (the secret is checked there too): the failed task's name says which check refused it
    ({"proxmox_vm_api_token_id": "agentkube@pve!agent\n"}, "Check the API settings"),
    ({"proxmox_vm_ip_gateway": "10.0.0.1\n"}, "proxmox_vm_ip_gateway"),
    ({"agentkube_tenant": dict(GOOD["agentkube_tenant"], nodePools=[
        dict(GOOD["agentkube_tenant"]["nodePools"][0], name="default\n")])}, "agentkube_tenant.nodePools[0]"),
], ids=["version", "tenant-name", "token-id", "gateway", "pool-name"])
def test_a_trailing_newline_is_refused_naming_the_field(tmp_path, overrides, field):
    run = _run(tmp_path, **overrides)
    assert run.returncode != 0
    failures = [f"{task['task']['name']}: {host.get('msg', '')} "
                + " ".join(str(r.get("msg", "")) for r in host.get("results", []))
                for play in json.loads(run.stdout)["plays"] for task in play["tasks"]
                for host in task["hosts"].values() if host.get("failed")]
    assert len(failures) == 1 and field in failures[0], failures
