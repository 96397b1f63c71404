"""The lab: everything a deployment talks to, on loopback, with TLS from the lab CAs.

- the Fulcrum Core emulator (always);
- the Kubernetes API emulator acting as the Kamaji parent cluster (`kube=True`): TenantControlPlanes
  become tenant API servers on 127.0.0.1;
- the Proxmox VE emulator, fakepve (`pve=True`), with one template per supported Kubernetes minor;
- EMULATED workers (`emulated_workers=True`, needs root and the cached Debian 12 root filesystem): each worker
  VM boots like a cloud image (lab_guest_machines.py: a root filesystem copy per VM, cloud-init applied, an sshd on
  the VM's address in 127.0.0.0/8) and is reached over SSH as the cloud-init user with become, its host key pinned
  through the guest agent; kubelet/kubeadm come from the lab's pkgs.k8s.io on loopback (k8s_apt_repo.py), whose
  packages carry the lab kubeadm emulator (a real kubelet cannot run here). Without them the playbooks skip the
  join (`agentkube_join_workers: false` in the generated inventory).

state_dir/
  ca/                 the lab CA and server certificates (Fulcrum)
  kube/               the Kubernetes emulator's state and CA; kube/parent.kubeconfig (0600)
  pve/                fakepve's CA
  workers/            the emulated workers' root filesystems, one per VM
  ssh/                the controller's SSH key for the workers (0600)
  known_hosts/        the per-tenant known_hosts files the playbooks write
  apt/                the lab's Kubernetes apt repository and its signing key
  agent-token         the agent's Fulcrum token (0600)
  agent.yaml          agent configuration pointing at the lab (token by file, CA verified)
  inventory/          hosts.yml + group_vars/all.yml with the operator settings for the lab (0600: it holds
                      the lab's Proxmox token secret)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agentkube.core.project import project_dir
from agentkube_lab.certs import LabCA
from agentkube_lab.fulcrum_catalog import Catalog, register_catalog
from agentkube_lab.fulcrum_emulator import FulcrumEmulator
from agentkube_lab.vm_guest_os import ROOTFS_MARKERS

log = logging.getLogger(__name__)

PROJECT = project_dir()
OWNER_TAG = "agentkube"
MANAGED_BY = "app.kubernetes.io/managed-by=agentkube"
LAB_CNI_MANIFEST = PROJECT / "roles" / "tenant_baseline" / "files" / "lab-cni-stand-in.yaml"


REHEARSAL_SPEC: dict[str, Any] = {
    "kubernetesVersion": "v1.35.7",
    "nodePools": [{"name": "default", "count": 1, "cores": 2, "memoryMiB": 2048, "diskGiB": 20}],
}


def rootfs_cache() -> Path:
    """The cached Debian 12 root filesystem the emulated workers are copied from ($AGENTKUBE_ROOTFS_CACHE, by
    default in the user's cache directory; `make rootfs` builds the checkout's own)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentkube" / "rootfs" / "debian12"
    return Path(os.environ.get("AGENTKUBE_ROOTFS_CACHE") or default)


def rootfs_complete(path: Path) -> bool:
    return all((Path(path) / marker).exists() for marker in ROOTFS_MARKERS)


def emulated_workers_available() -> tuple[bool, str]:
    """(True, "") when emulated workers can run here, else (False, why not)."""
    if os.geteuid() != 0:
        return False, "booting the workers' root filesystems (chroot, namespaces, sshd) needs root"
    if not rootfs_complete(rootfs_cache()):
        return False, (f"no cached Debian 12 root filesystem at {rootfs_cache()} "
                       "(build it with roles/kubeadm_node/molecule/default/build_rootfs.sh)")
    return True, ""


class Lab:
    def __init__(self, state_dir: Path, *, groups: int = 1, operator_vars: dict[str, Any] | None = None,
                 extra_service_types: list[dict] | None = None, kube: bool = True, pve: bool = True,
                 emulated_workers: bool | None = None, tcp_ready_delay: float = 1.0, realistic_pve: bool = True):
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca = LabCA(self.state_dir / "ca")
        self.fulcrum = FulcrumEmulator(cert=self.ca.issue("fulcrum"))
        self.groups = groups
        self.operator_vars = dict(operator_vars or {})
        self.extra_service_types = list(extra_service_types or [])
        self.catalog: Catalog | None = None
        self.kube: Any = None
        self.pve: Any = None
        if kube:
            from agentkube_lab.kube_emulator import KubeEmulator

            self.kube = KubeEmulator(self.state_dir / "kube", ready_delay=tcp_ready_delay)
        if emulated_workers is None:
            emulated_workers = kube and pve and emulated_workers_available()[0]
        elif emulated_workers:
            ok, why = emulated_workers_available()
            if not ok:
                raise RuntimeError(f"emulated workers are not available: {why}")
        self.emulated_workers = bool(emulated_workers)
        self.apt_repo: Any = None
        self.network: Any = None
        if pve:
            from agentkube_lab.pve_lab import LAB_NETWORK, PveLab

            if self.emulated_workers:
                from agentkube_lab.lab_guest_machines import LabNetwork

                self.network = LabNetwork()  # the VMs' sshds: addresses no other lab on this machine uses
            # Proxmox as a real cluster behaves (pvestatd's lag, two-step clones, HA-managed VMs, the
            # least-privileged token ...: pve_realism.py); realistic_pve=False only for fakepve's kinder model.
            self.pve = PveLab(self.state_dir / "pve", realistic=realistic_pve,
                              network=self.network.prefix if self.network else LAB_NETWORK)
        if self.emulated_workers:
            from agentkube_lab.k8s_apt_repo import K8sAptRepo
            from agentkube_lab.lab_guest_machines import GuestMachines

            # Worker VMs boot like cloud images (cloud-init applied, an sshd on their address) and get kubelet and
            # kubeadm from the lab's pkgs.k8s.io on loopback.
            self.pve.guests.machines = GuestMachines(rootfs_cache(), self.workers_dir)
            self.apt_repo = K8sAptRepo(self.state_dir / "apt")

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> Lab:
        self.fulcrum.start()
        try:
            if self.kube is not None:
                self.kube.start()
            if self.pve is not None:
                self.pve.start()
            if self.apt_repo is not None:
                self.apt_repo.start()
        except BaseException:
            self.stop()
            raise
        self.catalog = register_catalog(self.fulcrum, groups=self.groups,
                                        extra_service_types=self.extra_service_types)
        self._write_files()
        log.info("lab up: Fulcrum emulator at %s", self.fulcrum.url)
        return self

    def stop(self) -> None:
        if self.pve is not None:
            self.pve.stop()
        if self.apt_repo is not None:
            self.apt_repo.stop()
        if self.network is not None:
            self.network.release()
        if self.kube is not None:
            self.kube.stop()
        self.fulcrum.stop()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what is left behind -------------------------------------------------------------------------
    @property
    def checked(self) -> list[str]:
        """What leftovers() looks at, for people reading the demo's verdict."""
        checked = []
        if self.kube is not None:
            checked.append(f"no TenantControlPlane labelled {MANAGED_BY} in the Kamaji emulator")
        if self.pve is not None:
            checked.append(f"no VM tagged {OWNER_TAG} in fakepve")
        if self.emulated_workers:
            checked.append("no emulated worker root filesystem")
        return checked

    def leftovers(self) -> list[str]:
        """Infrastructure any agentkube tenant still owns in the lab's emulators."""
        left: list[str] = []
        if self.kube is not None:
            for tcp in self.kube.list("kamaji.clastix.io/v1alpha1", "TenantControlPlane", label_selector=MANAGED_BY):
                meta = tcp["metadata"]
                left.append(f"TenantControlPlane {meta.get('namespace')}/{meta['name']}")
        if self.pve is not None:
            for vm in self.pve.call(self._owned_vms):
                left.append(f"VM {vm}")
        if self.emulated_workers and self.workers_dir.exists():
            # a VM's disk (its sshd's log stays beside it, as a VM's console log would)
            left.extend(f"emulated worker root filesystem {p.name}" for p in sorted(self.workers_dir.iterdir())
                        if p.is_dir())
        return left

    def _owned_vms(self) -> list[str]:
        fake = self.pve.fake
        names = []
        for vm in list(fake.vms.values()) if isinstance(fake.vms, dict) else list(fake.vms):
            tags = str(vm.config.get("tags") or "").replace(",", ";").split(";")
            if OWNER_TAG in tags and not vm.config.get("template"):
                names.append(f"{vm.vmid} {vm.config.get('name', '')} on {vm.node}")
        return names

    # -- what the agent and the operator use --------------------------------------------------------
    @property
    def token_file(self) -> Path:
        return self.state_dir / "agent-token"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "agent.yaml"

    @property
    def inventory_dir(self) -> Path:
        return self.state_dir / "inventory"

    @property
    def parent_kubeconfig(self) -> Path:
        return self.state_dir / "kube" / "parent.kubeconfig"

    @property
    def workers_dir(self) -> Path:
        return self.state_dir / "workers"

    def worker_root(self, name: str) -> Path:
        """The root filesystem (disk) of the lab VM named `name` (one per VM: `<name>-<vmid>-<random>`)."""
        disks = sorted(p for p in self.workers_dir.glob(f"{name}-[0-9]*-*") if p.is_dir())
        if len(disks) != 1:
            raise LookupError(f"lab VM {name}: {len(disks)} disks in {self.workers_dir}")
        return disks[0]

    @property
    def ssh_key(self) -> Path:
        """The controller's SSH key for the workers' cloud-init user (0600; made at start)."""
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def ssh_public_key(self) -> str:
        return Path(f"{self.ssh_key}.pub").read_text().strip()

    def create_rehearsal_service(self, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """A service of the shipped type in the first group, with its create job Pending (for rehearsals)."""
        assert self.catalog is not None, "the lab is not started"
        return self.fulcrum.create_service(name, self.catalog.service_type_id, self.catalog.group_ids[0],
                                           self.catalog.agent_id, spec or REHEARSAL_SPEC)

    def agent_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "fulcrum": {"url": self.fulcrum.url, "token_file": str(self.token_file),
                        "ca_file": str(self.ca.ca_file)},
            "agent": {"state_dir": str(self.state_dir / "agent"), "heartbeat_interval_s": 2,
                      "poll_interval_s": 0.5},
            "runner": {"inventory": str(self.inventory_dir / "hosts.yml")},
        }
        if self.kube is not None:  # one active instance through a Lease on the Kamaji parent, as in production
            config["leadership"] = {"kubeconfig": str(self.parent_kubeconfig), "namespace": "kamaji-system"}
        return config

    def group_vars(self) -> dict[str, Any]:
        """The operator settings (inventory group_vars) pointing the playbooks at this lab."""
        settings: dict[str, Any] = {}
        if self.kube is not None:
            settings.update({
                "kamaji_tcp_kubeconfig": str(self.parent_kubeconfig),
                "kamaji_tcp_validate_certs": True,
                "kamaji_tcp_namespace": "kamaji-tenants",
                "kamaji_tcp_poll_interval": 1,
                "kamaji_tcp_ready_timeout": 120,
                "kamaji_tcp_delete_timeout": 60,
                # The lab's CNI stand-in (a ConfigMap and a namespace, no pods): the lab has no network.
                "tenant_baseline_cni_manifest_files": {"calico": [str(LAB_CNI_MANIFEST)],
                                                       "cilium": [str(LAB_CNI_MANIFEST)]},
                "tenant_baseline_download_dir": str(self.state_dir / "downloads"),
            })
        if self.pve is not None:
            settings.update(self.pve.group_vars())
        settings["agentkube_join_workers"] = self.emulated_workers
        if self.emulated_workers:
            settings.update({
                # The workers are reached as in production (SSH as the cloud-init user, become, host keys pinned
                # through the guest agent); only addresses of the lab network are ever connected to.
                "ansible_ssh_private_key_file": str(self.ssh_key),
                "proxmox_vm_ssh_public_keys": [self.ssh_public_key],
                "agentkube_worker_networks": ["127.0.0.0/8"],
                "agentkube_known_hosts_dir": str(self.state_dir / "known_hosts"),
                # The lab's pkgs.k8s.io (k8s_apt_repo.py): kubelet/kubeadm/kubectl packages of the lab stand-ins.
                "kubeadm_node_package_repo_url": self.apt_repo.url + "core:/stable:/{{ kubeadm_node_minor }}/deb/",
                # EMULATED workers: no systemd runs in a lab VM, and its kubelet is a stand-in that never gets Ready.
                "kubeadm_node_manage_services": False,
                "kubeadm_node_wait_ready": False,
            })
        settings.update(self.operator_vars)
        return settings

    def _write_files(self) -> None:
        assert self.catalog is not None
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.catalog.agent_token)
        self.config_file.write_text(yaml.safe_dump(self.agent_config(), sort_keys=False))
        if self.kube is not None:
            self.kube.write_kubeconfig(self.parent_kubeconfig)
        if self.emulated_workers:
            shutil.rmtree(self.workers_dir, ignore_errors=True)
            self.workers_dir.mkdir(mode=0o700)
            if not self.ssh_key.exists():
                self.ssh_key.parent.mkdir(mode=0o700, exist_ok=True)
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agentkube-lab",
                                "-f", str(self.ssh_key)], check=True, capture_output=True)
        (self.inventory_dir / "group_vars").mkdir(parents=True, exist_ok=True)
        hosts = {"all": {"hosts": {"localhost": {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        }}}}
        (self.inventory_dir / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
        path = self.inventory_dir / "group_vars" / "all.yml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# Operator settings generated by the lab\n" + yaml.safe_dump(self.group_vars(), sort_keys=True))
        os.chmod(path, 0o600)
