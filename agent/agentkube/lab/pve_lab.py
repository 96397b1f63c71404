"""The lab's Proxmox VE: fakepve (a pip-installed test/lab dependency, AGPL) served on loopback.

`PveLab(state_dir).start()` runs a FakePve in a background thread with its own asyncio loop, on
127.0.0.1 and a free port, with a certificate from the lab CA (clients verify TLS against it), one
template per supported Kubernetes minor, an API token for the agent, and simulated time: VM disks live
on a (fake) Ceph RBD storage whose I/O takes `clone_secs` PVE seconds, so clones hold `lock: clone`
and tasks really run for a while. `.fake` is the FakePve, for fault injection from tests.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from pathlib import Path
from typing import Any

from agentkube.lab.certs import LabCA

SUPPORTED_MINORS = ("1.33", "1.34", "1.35", "1.36")
TEMPLATE_VMID_BASE = 9000  # template of 1.35 is 9035
VM_STORAGE = "vmstore"
NODES = ("pve1", "pve2")
TOKEN_USER = "agentkube@pve"  # noqa: S105 - a user name, not a secret
TOKEN_NAME = "agent"  # noqa: S105 - the token id; its secret is random per lab start


def template_vmid(minor: str) -> int:
    return TEMPLATE_VMID_BASE + int(minor.split(".")[1])


def _lab_fake_class():
    """FakePve plus the one VM endpoint the lab needs stateful that fakepve answers generically:
    `PUT /nodes/{node}/qemu/{vmid}/resize` (grow only, takes the VM config lock, runs as a task)."""
    from fakepve import FakePve, PveError

    class LabPve(FakePve):
        def _routes_lab_qemu_resize(self):
            return [("PUT", "/nodes/{node}/qemu/{vmid}/resize", self._lab_resize)]

        async def _lab_resize(self, values, user):
            vm = self.find(values["node"], values["vmid"])
            disk, size = str(values["disk"]), str(values["size"])
            current = str(vm.config.get(disk) or "")
            if not current:
                raise PveError(500, f"disk '{disk}' does not exist")
            parts = current.split(",")
            old = next((p[5:] for p in parts if p.startswith("size=")), "0G")
            unit = {"K": 1 / 1048576, "M": 1 / 1024, "G": 1, "T": 1024}
            old_gib = float(old[:-1]) * unit[old[-1]] if old[-1] in unit else float(old) / 2**30
            want = size.lstrip("+")
            want_gib = float(want[:-1]) * unit[want[-1]] if want[-1] in unit else float(want) / 2**30
            new_gib = old_gib + want_gib if size.startswith("+") else want_gib
            if new_gib < old_gib:
                raise PveError(500, "shrinking disks is not supported")

            async def body():
                await self.ceph_io(vm, [disk])
                kept = [p for p in vm.config[disk].split(",") if not p.startswith("size=")]
                vm.config[disk] = ",".join([*kept, f"size={int(new_gib)}G"])

            if vm.lock:
                raise PveError(500, f"VM is locked ({vm.lock})")
            return await self.task(vm.node, "resize", vm.vmid, user, body, vm=vm)

    return LabPve


class PveLab:
    """A FakePve on 127.0.0.1 for the lab, the tests and the benchmark."""

    def __init__(self, state_dir: Path | str, time_scale: float = 0.01, clone_secs: float = 20.0,
                 nodes: tuple[str, ...] = NODES):
        self.state_dir = Path(state_dir)
        self.time_scale = time_scale
        self.clone_secs = clone_secs
        self.nodes = nodes
        self.host = "127.0.0.1"
        self.port = 0
        self.token_id = f"{TOKEN_USER}!{TOKEN_NAME}"
        self.token_secret = ""
        self.ca_file = ""
        self.fake: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> PveLab:
        if self._thread:
            return self
        cert = LabCA(self.state_dir / "ca").issue("pve")
        self.ca_file = str(cert.ca_file)
        self.token_secret = secrets.token_hex(16)
        fake = _lab_fake_class()(host=self.host, port=0)
        fake.time_scale = self.time_scale
        fake.shutdown_default_timeout = 60
        for node in self.nodes:
            fake.add_node(node)
        fake.add_ceph_storage(VM_STORAGE, pool="vms")
        fake.ceph_slow(self.clone_secs, health="HEALTH_OK")
        fake.pools.setdefault("agentkube", set())
        fake.apitokens[self.token_id] = self.token_secret
        for minor in SUPPORTED_MINORS:
            vmid = template_vmid(minor)
            fake.add_vm(vmid, f"k8s-{minor.replace('.', '-')}-template", node=self.nodes[0], template=True,
                        config={
                            "scsi0": f"{VM_STORAGE}:base-{vmid}-disk-0,size=10G",
                            "ide2": f"{VM_STORAGE}:vm-{vmid}-cloudinit,media=cdrom",
                            "boot": "order=scsi0",
                            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
                            "agent": "1",
                            "cores": 2,
                            "memory": 2048,
                            "tags": f"k8s-{minor.replace('.', '-')};template",
                            "template": 1,
                        })
        self.fake = fake
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(fake.start(str(cert.cert_file), str(cert.key_file)))
            except Exception as e:  # noqa: BLE001 - reported to start()
                errors.append(e)
                ready.set()
                return
            self.port = fake.port
            ready.set()
            loop.run_forever()
            loop.run_until_complete(fake.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fakepve", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            self._thread = None
            raise RuntimeError(f"fakepve did not start: {errors[0]}")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> PveLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers

    def call(self, coro_or_fn, *args, timeout: float = 30):
        """Run a FakePve coroutine (e.g. fake.hold_config_lock) or function in the fake's loop thread."""
        assert self._loop is not None, "lab not started"

        async def invoke():
            result = coro_or_fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def group_vars(self) -> dict:
        """proxmox_vm_* operator settings pointing at this lab (TLS verified against the lab CA)."""
        return {
            "proxmox_vm_api_host": self.host,
            "proxmox_vm_api_port": self.port,
            "proxmox_vm_api_token_id": self.token_id,
            "proxmox_vm_api_token_secret": self.token_secret,
            "proxmox_vm_validate_certs": True,
            "proxmox_vm_ca_file": self.ca_file,
            "proxmox_vm_node": self.nodes[0],
            "proxmox_vm_target_nodes": list(self.nodes),
            "proxmox_vm_storage": VM_STORAGE,
            "proxmox_vm_pool": "agentkube",
            "proxmox_vm_bridge": "vmbr0",
            "proxmox_vm_templates": {m: {"vmid": template_vmid(m)} for m in SUPPORTED_MINORS},
            "proxmox_vm_vmid_min": 4100,
            "proxmox_vm_vmid_max": 4999,
            "proxmox_vm_full_clone": True,
            "proxmox_vm_ip_mode": "static",
            "proxmox_vm_ip_pool": "10.0.0.60-10.0.0.199",
            "proxmox_vm_ip_prefix": 24,
            "proxmox_vm_ip_gateway": "10.0.0.1",
            "proxmox_vm_nameservers": ["10.0.0.1"],
            "proxmox_vm_ciuser": "agentkube",
            "proxmox_vm_ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAgentKubeLabKeyOnly lab"],
            # Lab time is scaled: PVE seconds pass time_scale times faster, so waits stay short.
            "proxmox_vm_shutdown_timeout": 60,
            "proxmox_vm_retry_delay": 0.2,
        }


def main(argv: list[str] | None = None) -> int:
    """`python -m agentkube.lab.pve_lab --state-dir D --vars-file F`: serve until SIGTERM/SIGINT, with the
    proxmox_vm_* settings pointing at the lab written to F (0600, it holds the lab token secret)."""
    import argparse
    import json
    import os
    import signal

    parser = argparse.ArgumentParser(description="Serve the lab's fakepve on 127.0.0.1")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--vars-file", required=True)
    parser.add_argument("--pidfile", help="written once the lab serves; removed on exit")
    parser.add_argument("--time-scale", type=float, default=0.01)
    args = parser.parse_args(argv)
    lab = PveLab(args.state_dir, time_scale=args.time_scale).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fd = os.open(args.vars_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(lab.group_vars(), fh)
    os.replace(args.vars_file + ".tmp", args.vars_file)
    if args.pidfile:
        Path(args.pidfile).write_text(f"{os.getpid()}\n")
    print(f"fakepve lab on {lab.url}", flush=True)
    stop.wait()
    lab.stop()
    Path(args.vars_file).unlink(missing_ok=True)
    if args.pidfile:
        Path(args.pidfile).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
