"""LAB EMULATOR rules of `kubeadm join` (used by kubeadm_emulator, never a real kubeadm): strict decoding of the
v1beta4 JoinConfiguration, the join preflight checks, and what the emulated kubelet finds on the node.

Each rule is transcribed from kubernetes/kubernetes cmd/kubeadm (cited beside it). A lab VM is a root filesystem
sharing the host's kernel, so the node's kernel state is emulated from the root filesystem, as the VM would have
it after booting:
- a sysctl (net.ipv4.ip_forward ...) is the kernel default (0) with the rootfs's sysctl.d files applied in
  systemd-sysctl's order (sysctl.d(5)); the host's /proc is never read;
- swap is on when the rootfs's /etc/fstab has an active swap entry (what the VM would enable at boot);
- the node's address (for the port checks) is /usr/lib/agentkube-lab/node-address, else 127.0.0.1: the lab's
  VMs live in 127.0.0.0/8 and the check binds there, as kubeadm binds ":10250" on its own machine;
- containerd's cgroup driver is read from the rootfs's /etc/containerd/config.toml.

Standard library only: installed into the root filesystem next to kubeadm_emulator.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path

NODE_ADDRESS_FILE = "/usr/lib/agentkube-lab/node-address"
KUBELET_PORT = 10250  # cmd/kubeadm/app/constants/constants.go KubeletPort
DEFAULT_CA_CERT_PATH = "/etc/kubernetes/pki/ca.crt"  # v1beta4 defaults.go DefaultCACertPath


class CheckError(Exception):
    """A kubeadm error (message already in kubeadm's words)."""


def in_root(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


# ---------------------------------------------------------------- strict decoding
# The fields of kubeadm.k8s.io/v1beta4 JoinConfiguration as released in v1.31+ (cmd/kubeadm/app/apis/kubeadm/
# v1beta4/types.go: JoinConfiguration, NodeRegistrationOptions, Discovery, BootstrapTokenDiscovery, FileDiscovery,
# JoinControlPlane, APIEndpoint, Patches, Timeouts, Arg; core/v1 Taint). None = a scalar; [x] = a list of x.
_ARG = {"name": None, "value": None}
_TAINT = {"key": None, "value": None, "effect": None, "timeAdded": None}
JOIN_CONFIGURATION_FIELDS: dict = {
    "apiVersion": None, "kind": None, "dryRun": None, "caCertPath": None, "skipPhases": [None],
    "nodeRegistration": {"name": None, "criSocket": None, "taints": [_TAINT], "kubeletExtraArgs": [_ARG],
                         "ignorePreflightErrors": [None], "imagePullPolicy": None, "imagePullSerial": None},
    "discovery": {"bootstrapToken": {"token": None, "apiServerEndpoint": None, "caCertHashes": [None],
                                     "unsafeSkipCAVerification": None},
                  "file": {"kubeConfigPath": None}, "tlsBootstrapToken": None},
    "controlPlane": {"localAPIEndpoint": {"advertiseAddress": None, "bindPort": None}, "certificateKey": None},
    "patches": {"directory": None},
    "timeouts": {"controlPlaneComponentHealthCheck": None, "kubeletHealthCheck": None, "kubernetesAPICall": None,
                 "etcdAPICall": None, "tlsBootstrap": None, "discovery": None, "upgradeManifests": None},
}
JOIN_GVK = 'schema.GroupVersionKind{Group:"kubeadm.k8s.io", Version:"v1beta4", Kind:"JoinConfiguration"}'


def _unknown_fields(value: object, schema: object, path: str) -> Iterator[str]:
    if isinstance(schema, dict) and isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in schema:
                yield where
            else:
                yield from _unknown_fields(item, schema[key], where)
    elif isinstance(schema, list) and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unknown_fields(item, schema[0], f"{path}[{i}]")


def strict_decoding_error(document: dict) -> str | None:
    """The error kubeadm's strict decoder gives the document, or None (cmd/kubeadm/app/util/config/strict/strict.go
    VerifyUnmarshalStrict: apimachinery's strict JSON serializer, `strict decoding error: unknown field "a.b"`)."""
    unknown = list(_unknown_fields(document, JOIN_CONFIGURATION_FIELDS, ""))
    if not unknown:
        return None
    fields = ", ".join(f'unknown field "{f}"' for f in unknown)
    return f"error unmarshaling configuration {JOIN_GVK}: strict decoding error: {fields}"


# ---------------------------------------------------------------- the emulated node
SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d")
KERNEL_DEFAULTS = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.default.forwarding": "0"}


def _resolve(root: Path, path: Path) -> Path:
    """Follow symlinks as the VM would: an absolute target is inside the root filesystem."""
    for _ in range(10):
        if not path.is_symlink():
            return path
        target = Path(path.readlink())
        path = in_root(root, str(target)) if target.is_absolute() else path.parent / target
    return path


def sysctl_value(root: Path, key: str) -> str:
    """The value the VM's kernel has for `key` after boot: its default, then the sysctl.d files in
    systemd-sysctl's order (one file per name, the first directory in SYSCTL_DIRS wins; files sorted by name;
    a later assignment wins)."""
    files: dict[str, Path] = {}
    for directory in SYSCTL_DIRS:
        folder = in_root(root, directory)
        if folder.is_dir():
            for conf in folder.glob("*.conf"):
                files.setdefault(conf.name, conf)
    value = KERNEL_DEFAULTS.get(key, "0")
    for name in sorted(files):
        try:
            lines = _resolve(root, files[name]).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            name_part, _, raw = line.partition("=")
            if name_part.strip().lstrip("-").replace("/", ".") == key:
                value = raw.strip()
    return value


def swap_entries(root: Path) -> list[str]:
    """The swap the VM enables at boot: /etc/fstab entries of type swap without noauto."""
    try:
        lines = in_root(root, "/etc/fstab").read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "swap" \
                and "noauto" not in (fields[3].split(",") if len(fields) > 3 else []):
            entries.append(fields[0])
    return entries


def node_address(root: Path) -> str:
    try:
        address = in_root(root, NODE_ADDRESS_FILE).read_text().strip()
    except OSError:
        return "127.0.0.1"
    if not ipaddress.ip_address(address).is_loopback:  # the lab never binds outside 127.0.0.0/8
        raise CheckError(f"{NODE_ADDRESS_FILE}: {address} is not a loopback address")
    return address


def containerd_cgroup_driver(root: Path) -> tuple[str, str]:
    """(driver, where it comes from) for containerd's default runtime: SystemdCgroup of
    plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<default_runtime_name> (config version 2, containerd
    1.x) or plugins."io.containerd.cri.v1.runtime" (version 3, containerd 2.x); unset = cgroupfs, containerd's
    default (containerd docs/cri/config.md "Cgroup Driver")."""
    path = "/etc/containerd/config.toml"
    try:
        config = tomllib.loads(in_root(root, path).read_text())
    except FileNotFoundError:
        return "cgroupfs", f"{path} is missing: containerd's default"
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckError(f"containerd cannot start: {path}: {exc}") from exc
    plugins = config.get("plugins") or {}
    cri = plugins.get("io.containerd.cri.v1.runtime") if config.get("version") == 3 \
        else plugins.get("io.containerd.grpc.v1.cri")
    containerd = (cri or {}).get("containerd") or {}
    runtime = containerd.get("default_runtime_name", "runc")
    options = ((containerd.get("runtimes") or {}).get(runtime) or {}).get("options") or {}
    systemd = options.get("SystemdCgroup", False) is True
    return ("systemd" if systemd else "cgroupfs"), f"{path}: SystemdCgroup = {str(systemd).lower()}"


# ---------------------------------------------------------------- join preflight
def ignored_checks(from_cli: list[str], from_config: list[str]) -> set[str]:
    """cmd/kubeadm/app/apis/kubeadm/validation/validation.go ValidateIgnorePreflightErrors: the flag and
    nodeRegistration.ignorePreflightErrors merged, case-insensitive; 'all' with anything else is an error."""
    ignored = {item.lower() for item in from_config} | {item.lower() for item in from_cli}
    if "all" in ignored and len(ignored) > 1:
        raise CheckError(f'ignore-preflight-errors: Invalid value: "{",".join(sorted(ignored))}": '
                         "don't specify individual checks if 'all' is used")
    return ignored


def _file_available(root: Path, path: str) -> tuple[str, list[str], list[str]]:
    # checks.go FileAvailableCheck: Name "FileAvailable-" + path with "/" -> "-"
    name = "FileAvailable-" + path.replace("/", "-")
    return name, [], ([f"{path} already exists"] if in_root(root, path).exists() else [])


def _file_content(root: Path, path: str, key: str) -> tuple[str, list[str], list[str]]:
    # checks.go FileContentCheck{Content: "1"} on /proc/sys/...; the value is the emulated kernel's (sysctl_value)
    name = "FileContent-" + path.replace("/", "-")
    value = sysctl_value(root, key)
    return name, [], ([] if value.startswith("1") else [f"{path} contents are not set to 1"])


def _swap(root: Path) -> tuple[str, list[str], list[str]]:
    # checks.go SwapCheck: a WARNING only (the kubelet itself refuses swap, see kubelet_start_error)
    warning = ("swap is supported for cgroup v2 only. The kubelet must be properly configured to use swap. Please "
               "refer to https://kubernetes.io/docs/concepts/architecture/nodes/#swap-memory, or disable swap on "
               "the node")
    return "Swap", ([warning] if swap_entries(root) else []), []


def _port_open(root: Path, port: int) -> tuple[str, list[str], list[str]]:
    # checks.go PortOpenCheck: net.Listen("tcp", ":<port>") (Go sets SO_REUSEADDR), on the node's address. A bind
    # with SO_REUSEADDR fails exactly when something listens there; without listen() two lab nodes checking
    # the same address at once do not see each other's check as a listener.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((node_address(root), port))
        except OSError:
            return f"Port-{port}", [], [f"Port {port} is in use"]
    return f"Port-{port}", [], []


def run_join_preflight(root: Path, cfg: dict, ignored: set[str], out) -> None:
    """checks.go JoinNodeChecks + RunChecks, in their order, for a worker (no controlPlane):
    FileAvailable kubelet.conf and bootstrap-kubelet.conf; addCommonChecks' Swap (warning) and Port-10250;
    FileAvailable cfg.CACertPath; and, when the discovery endpoint is an IP literal, addIPv4Checks
    (ip_forward) or addIPv6Checks (ipv6 default forwarding). Not emulated: ContainerRuntimeCheck,
    addExecChecks (the lab's packages are stand-ins), SystemVerification, Hostname, KubeletVersion,
    Service-Kubelet and HTTPProxy (all but the first two are warnings). Since kubernetes/kubernetes#104942
    (v1.23) a worker's join no longer checks that /etc/kubernetes/manifests is empty.
    Warnings and errors go to `out` as kubeadm prints them; any error not ignored raises CheckError."""
    checks = [_file_available(root, "/etc/kubernetes/kubelet.conf"),
              _file_available(root, "/etc/kubernetes/bootstrap-kubelet.conf"),
              _swap(root), _port_open(root, KUBELET_PORT),
              _file_available(root, cfg.get("caCertPath") or DEFAULT_CA_CERT_PATH)]
    endpoint = ((cfg.get("discovery") or {}).get("bootstrapToken") or {}).get("apiServerEndpoint") or ""
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.version == 4:
        checks.append(_file_content(root, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"))
    elif ip is not None:
        checks.append(_file_content(root, "/proc/sys/net/ipv6/conf/default/forwarding",
                                    "net.ipv6.conf.default.forwarding"))
    fatal = []
    for name, warnings, errors in checks:
        if "all" in ignored or name.lower() in ignored:  # setHasItemOrAll: errors become warnings
            warnings, errors = warnings + errors, []
        for warning in warnings:
            out.write(f"\t[WARNING {name}]: {warning}\n")
        fatal += [f"\t[ERROR {name}]: {error}\n" for error in errors]
    if fatal:  # checks.go handleError
        out.write("[preflight] Some fatal errors occurred:\n" + "".join(fatal)
                  + "[preflight] If you know what you are doing, you can make a check non-fatal with "
                    "`--ignore-preflight-errors=...`\n")
        raise CheckError("error execution phase preflight: preflight checks failed")


# ---------------------------------------------------------------- the emulated kubelet's start
def kubelet_start_error(root: Path, kubelet_config: dict) -> str | None:
    """Why the kubelet the join starts would not come up, or None.
    - Swap: the kubelet refuses to run with swap on unless failSwapOn is false (cmd/kubelet/app/server.go
      run -> pkg/kubelet/cm/container_manager_linux.go: "failed to run Kubelet: running with swap on is not
      supported, please disable swap! or set --fail-swap-on flag to false"); kubeadm then fails waiting for it
      (cmd/kubeadm/app/cmd/phases/join/kubelet.go runKubeletWaitBootstrapPhase, kubeadmJoinFailMsg).
    - The cgroup driver: the kubelet's (kubelet-config cgroupDriver, kubeadm's default systemd) must be
      containerd's. With containerd 1.x (Debian's; no CRI RuntimeConfig, so the kubelet's
      KubeletCgroupDriverFromCRI cannot adopt containerd's driver) a mismatch lets the kubelet register and then
      fails every pod sandbox; the lab fails the join at once instead, naming both drivers (stricter, not kinder)."""
    swap = swap_entries(root)
    if swap and kubelet_config.get("failSwapOn", True) is not False:
        return ("The kubelet is not running: failed to run Kubelet: running with swap on is not supported, please "
                f"disable swap! or set --fail-swap-on flag to false (swap in /etc/fstab: {', '.join(swap)})")
    kubelet_driver = kubelet_config.get("cgroupDriver") or "systemd"
    containerd_driver, where = containerd_cgroup_driver(root)
    if kubelet_driver != containerd_driver:
        return (f'The kubelet is unhealthy: its cgroup driver "{kubelet_driver}" (kube-system/kubelet-config '
                f'cgroupDriver) differs from containerd\'s "{containerd_driver}" ({where}); pod sandboxes cannot '
                "be created")
    return None
