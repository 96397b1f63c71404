"""PveLab's real-cluster behaviours (agentkube_lab.pve_realism), each against the running lab over HTTPS.

One lab per behaviour group, time_scale small: 10 PVE seconds are 0.02 s of wall time."""

from __future__ import annotations

import time
import urllib.parse

import pytest
import requests

from agentkube_lab.pve_lab import VM_STORAGE, PveLab, template_vmid
from agentkube_lab.pve_realism import Realism, cross_node_collision_message

TEMPLATE = template_vmid("1.35")
SCALE = 0.002


class Api:
    def __init__(self, lab: PveLab):
        self.lab = lab
        self.base = f"{lab.url}/api2/json"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"PVEAPIToken={lab.token_id}={lab.token_secret}"

    def call(self, method: str, path: str, **data):
        kwargs = {"params": data} if method in ("GET", "DELETE") else {"data": data}
        resp = self.session.request(method, self.base + path, timeout=30, verify=self.lab.ca_file, **kwargs)
        body = resp.json() if resp.content else {}
        return resp.status_code, (body.get("data") if resp.ok else body.get("message", ""))

    def ok(self, method: str, path: str, **data):
        status, data = self.call(method, path, **data)
        assert status == 200, f"{method} {path}: {status} {data}"
        return data

    def task(self, node: str, upid: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        path = f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/status"
        while True:
            status = self.ok("GET", path)
            if status["status"] == "stopped" or time.monotonic() > deadline:
                return status
            time.sleep(0.005)

    def resource(self, vmid: int) -> dict | None:
        return next((r for r in self.ok("GET", "/cluster/resources", type="vm") if r["vmid"] == vmid), None)

    def clone(self, newid: int, name: str, **extra) -> str:
        return self.ok("POST", f"/nodes/pve1/qemu/{TEMPLATE}/clone", newid=newid, name=name, full=1,
                       storage=VM_STORAGE, pool="agentkube", **extra)


def lab_with(tmp_path_factory, name: str, **realism) -> PveLab:
    return PveLab(tmp_path_factory.mktemp(name), time_scale=SCALE, realism=Realism(**realism)).start()


@pytest.fixture(scope="module")
def lagging(tmp_path_factory):
    # A pvestatd cycle far longer than a test: each test runs the cycles itself (cycle()), so what the API
    # shows between two of them is certain.
    lab = lab_with(tmp_path_factory, "pve-lag", status_period=3600.0, two_step_clone=True, cross_node_collision=True)
    yield Api(lab)
    lab.stop()


def cycle(api: Api) -> None:
    api.lab.call(api.lab.fake.lab_broadcast)


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    lab = lab_with(tmp_path_factory, "pve-ha", ha_managed=True)
    yield Api(lab)
    lab.stop()


def wait_until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_default_lab_has_no_realism(tmp_path):
    lab = PveLab(tmp_path, time_scale=SCALE)
    assert not lab.realism.any
    assert PveLab(tmp_path, realistic=True).realism == Realism.realistic()


def test_templates_are_in_the_first_broadcast(lagging):
    entry = lagging.resource(TEMPLATE)
    assert entry["name"] == "k8s-1-35-template" and entry["template"] == 1 and entry["status"] == "stopped"


def test_fresh_clone_is_unknown_and_nameless_until_the_broadcast_and_its_lock_is_live(lagging):
    lagging.lab.call(lagging.lab.fake.ceph_slow, 500.0, "HEALTH_OK")  # a disk copy of 1 s of wall time
    upid = lagging.clone(4101, "lag-a-0", description="agentkube: svc=x ip=127.0.10.60")
    entry = lagging.resource(4101)
    assert entry["status"] == "unknown" and "name" not in entry and "template" not in entry
    assert entry["lock"] == "clone" and entry["node"] == "pve1"  # read live
    # Two-step config: during the copy only the clone lock, no name, no description.
    config = lagging.ok("GET", "/nodes/pve1/qemu/4101/config")
    assert {k for k in config if k != "digest"} == {"lock"}
    assert lagging.ok("GET", "/nodes/pve1/qemu/4101/status/current")["name"] == "VM 4101"
    cycle(lagging)  # pvestatd saw the VM during its copy: qemu-server vmstatus names it "VM <vmid>"
    entry = lagging.resource(4101)
    assert entry["name"] == "VM 4101" and entry["status"] == "stopped" and entry["template"] == 0
    status = lagging.task("pve1", upid)
    assert status["exitstatus"] == "OK"
    config = lagging.ok("GET", "/nodes/pve1/qemu/4101/config")
    assert config["name"] == "lag-a-0" and "agentkube: svc=x" in config["description"] and "lock" not in config
    assert config["scsi0"].startswith(f"{VM_STORAGE}:")
    assert lagging.resource(4101)["name"] == "VM 4101"  # until the next cycle
    cycle(lagging)
    assert lagging.resource(4101)["name"] == "lag-a-0"
    lagging.lab.call(lagging.lab.fake.ceph_slow, lagging.lab.clone_secs, "HEALTH_OK")


def test_a_started_vm_shows_stopped_until_the_broadcast(lagging):
    lagging.lab.call(lagging.lab.fake.ceph_slow, 0.0, "HEALTH_OK")
    assert lagging.task("pve1", lagging.clone(4102, "lag-b-0"))["exitstatus"] == "OK"
    cycle(lagging)
    assert lagging.task("pve1", lagging.ok("POST", "/nodes/pve1/qemu/4102/status/start"))["exitstatus"] == "OK"
    assert lagging.ok("GET", "/nodes/pve1/qemu/4102/status/current")["status"] == "running"
    assert lagging.resource(4102)["status"] == "stopped"
    cycle(lagging)
    assert lagging.resource(4102)["status"] == "running"
    lagging.lab.call(lagging.lab.fake.ceph_slow, lagging.lab.clone_secs, "HEALTH_OK")


def test_vmid_taken_on_another_node_fails_inside_the_clone_task(lagging):
    fake = lagging.lab.fake
    lagging.lab.call(lambda: fake.add_vm(4190, "elsewhere", node="pve2"))
    upid = lagging.clone(4190, "lag-c-0")  # accepted: the early check sees pve1's configs only
    status = lagging.task("pve1", upid)
    assert status["exitstatus"] == cross_node_collision_message("pve1", 4190)
    assert lagging.ok("GET", "/nodes/pve2/qemu/4190/config")["name"] == "elsewhere"
    # The same node: PVE's synchronous error, as before.
    lagging.lab.call(lambda: fake.add_vm(4191, "here", node="pve1"))
    code, message = lagging.call("POST", f"/nodes/pve1/qemu/{TEMPLATE}/clone", newid=4191, name="x", full=1)
    assert code == 500 and message.strip() == "unable to create VM 4191: config file already exists"


def test_ha_managed_clone_start_and_stop_are_requests_and_destroy_waits_for_the_real_state(ha):
    assert ha.task("pve1", ha.clone(4110, "ha-a-0"))["exitstatus"] == "OK"
    wait_until(lambda: any(r["sid"] == "vm:4110" for r in ha.ok("GET", "/cluster/ha/resources")))
    fake = ha.lab.fake
    ha.lab.call(lambda: setattr(fake, "time_scale", 0.05))  # ha_delay 10 s = 0.5 s: room to look
    try:
        start = ha.ok("POST", "/nodes/pve1/qemu/4110/status/start")
        assert ":hastart:" in start and ha.task("pve1", start)["exitstatus"] == "OK"
        assert ha.ok("GET", "/nodes/pve1/qemu/4110/status/current")["status"] == "stopped"
        wait_until(lambda: ha.ok("GET", "/nodes/pve1/qemu/4110/status/current")["status"] == "running")
        stop = ha.ok("POST", "/nodes/pve1/qemu/4110/status/stop")
        assert ":hastop:" in stop and ha.task("pve1", stop)["exitstatus"] == "OK"
        code, message = ha.call("DELETE", "/nodes/pve1/qemu/4110", purge=1)
        assert code == 500 and message.strip() == "VM 4110 is running - destroy failed"
    finally:
        ha.lab.call(lambda: setattr(fake, "time_scale", SCALE))
    wait_until(lambda: ha.ok("GET", "/nodes/pve1/qemu/4110/status/current")["status"] == "stopped")
    code, message = ha.call("DELETE", "/nodes/pve1/qemu/4110")
    assert code == 500 and "used in HA resources and purge parameter not set" in message
    done = ha.task("pve1", ha.ok("DELETE", "/nodes/pve1/qemu/4110", purge=1))
    assert done["exitstatus"] == "OK"
    assert not any(r["sid"] == "vm:4110" for r in ha.ok("GET", "/cluster/ha/resources"))


def test_ha_resources_api_add_and_delete(ha):
    assert ha.task("pve1", ha.clone(4111, "ha-b-0"))["exitstatus"] == "OK"
    wait_until(lambda: any(r["sid"] == "vm:4111" for r in ha.ok("GET", "/cluster/ha/resources")))
    code, message = ha.call("POST", "/cluster/ha/resources", sid="vm:4111")
    assert code == 500 and message.strip() == "resource ID 'vm:4111' already defined"
    ha.ok("DELETE", "/cluster/ha/resources/vm:4111")
    code, message = ha.call("DELETE", "/cluster/ha/resources/vm:4111")
    assert code == 500 and message.strip() == "cannot delete service 'vm:4111', not HA managed!"
    # Added with the default state `started`: the HA manager starts it.
    ha.ok("POST", "/cluster/ha/resources", sid="4111")
    wait_until(lambda: ha.ok("GET", "/nodes/pve1/qemu/4111/status/current")["status"] == "running")


def test_least_privileged_token_holds_exactly_the_documented_privileges(tmp_path):
    lab = PveLab(tmp_path, time_scale=SCALE, realism=Realism.realistic(status_period=0.2)).start()
    try:
        api = Api(lab)
        held = api.ok("GET", "/access/permissions")
        assert set(held["/vms"]) >= {"VM.Audit", "VM.Clone", "VM.Allocate", "VM.Config.Cloudinit", "VM.PowerMgmt"}
        assert "/" not in held  # nothing cluster-wide: no Sys.Audit, no Sys.Console
        assert api.task("pve1", api.clone(4120, "lp-a-0"))["exitstatus"] == "OK"
        wait_until(lambda: (api.resource(4120) or {}).get("name") == "lp-a-0")  # pvestatd's cycle (0.2 s here)
        # Cloud-init options need VM.Config.Cloudinit (qemu-server), not VM.Config.HWType.
        upid = api.ok("POST", "/nodes/pve1/qemu/4120/config", ciuser="agentkube", ipconfig0="ip=dhcp", onboot=1)
        assert api.task("pve1", upid)["exitstatus"] == "OK"
        code, _ = api.call("GET", "/cluster/ha/resources")
        assert code == 403
        # A privilege the role does not document (VM.Config.HWType): refused.
        upid = api.ok("POST", "/nodes/pve1/qemu/4120/config", vga="std")
        assert api.task("pve1", upid)["exitstatus"] == "Permission check failed (/vms/4120, VM.Config.HWType)"
    finally:
        lab.stop()


def test_guest_agent_file_read_waits_for_the_file_and_needs_its_privilege(tmp_path):
    """The host key is read before the first SSH connection: PVE answers a file the guest has not written yet with the
    agent's error (qemu-server Agent.pm file-read), and without VM.GuestAgent.FileRead with a 403."""
    lab = PveLab(tmp_path, time_scale=SCALE, realism=Realism(least_privilege=True)).start()
    try:
        api = Api(lab)
        assert api.task("pve1", api.clone(4130, "fr-a-0"))["exitstatus"] == "OK"
        assert api.task("pve1", api.ok("POST", "/nodes/pve1/qemu/4130/status/start"))["exitstatus"] == "OK"
        path, key = "/nodes/pve1/qemu/4130/agent/file-read", "/etc/ssh/ssh_host_ed25519_key.pub"
        answers = []
        wait_until(lambda: answers.append(api.call("GET", path, file=key)) or "not running" not in answers[-1][1])
        code, message = answers[-1]
        assert (code, message.strip()) == (500, f"Agent error: failed to open file '{key}' (mode: 'r'): "
                                                "No such file or directory")

        def drop_file_read():
            for _path, privs in lab.fake.acl[lab.token_id]:
                privs.discard("VM.GuestAgent.FileRead")

        lab.call(drop_file_read)
        code, message = api.call("GET", path, file=key)
        assert code == 403 and "VM.GuestAgent.FileRead" in message, message
    finally:
        lab.stop()


def test_the_role_readme_documents_exactly_the_lab_tokens_privileges():
    """The lab's least-privileged token and roles/proxmox_vm/README.md's privilege table are one list."""
    import re
    from pathlib import Path

    from agentkube_lab.pve_realism import role_privileges

    readme = (Path(__file__).resolve().parents[2] / "roles" / "proxmox_vm" / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| ") and "`" in line]
    documented: dict[str, set[str]] = {}
    path = ""
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "ACL path":
            continue  # the header
        if cells[0]:
            path = cells[0].split("`")[1]
        documented.setdefault(path, set()).update(re.findall(r"`((?:VM|Datastore|SDN|Sys)\.[A-Za-z.]+)`", cells[1]))
    lab = role_privileges("<proxmox_vm_storage>", "<proxmox_vm_bridge>")
    assert documented == {p: set(privs) for p, privs in lab.items()}


def test_the_lab_and_the_demo_run_proxmox_as_a_real_cluster(tmp_path):
    from agentkube_lab.lab import Lab

    lab = Lab(tmp_path / "lab", kube=False, emulated_workers=False)
    assert lab.pve.realism == Realism.realistic()
    assert lab.pve.realism.describe() == ("pvestatd lag 10 s, two-step clones, cross-node VMID collisions, "
                                          "HA-managed VMs, least-privileged token")
    assert not Lab(tmp_path / "kind", kube=False, emulated_workers=False, realistic_pve=False).pve.realism.any
    assert Realism().describe() == "fakepve's model only"
