"""A small Proxmox VE client for the proxmox_vm_* modules on top of proxmoxer's HTTPS backend (the transport
and API-token auth community.proxmox uses too): TLS verified against a CA file, task (UPID) waits, and retries
of the transient errors Proxmox answers under load.

Why our own client next to community.proxmox: the modules here run many VMs at once from threads, must
wait every UPID with a long timeout (community.proxmox polls once a second, then sleeps one more, and
never notices a task that ended in an error until its timeout), and must classify Proxmox's error texts
(`can't lock file ... got timeout`, `VM is locked`, `config file already exists`) to retry the right ones.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse

try:
    import requests
    from proxmoxer import ProxmoxAPI, ResourceException
except ImportError:  # reported by the module that needs it
    ProxmoxAPI = None

# proxmoxer logs every request with its parameters at INFO: keep them out of any log a caller configures.
logging.getLogger("proxmoxer").setLevel(logging.WARNING)

# Errors that go away when retried a little later: config/storage lock contention and locked VMs.
TRANSIENT_MARKERS = (
    "VM is locked",
    "can't lock file",
    "cluster not ready - no quorum",
    "try again",
)
# A clone target id that is already taken (nextid race or another tenant): retry with a fresh id. On the node the
# clone was asked on, clone_vm's early check answers `config file already exists` (qemu-server
# src/PVE/API2/Qemu.pm); an id held on another node passes it and fails inside the clone task, when pmxcfs refuses
# the temporary config (pve-common src/PVE/File.pm: `close (rename) atomic file '...' failed: File exists`).
VMID_TAKEN_MARKERS = ("config file already exists", "already exists on node", "failed: File exists")


class PveApiError(Exception):
    """An error answer of the API (status, message) or a failed task (status 0, its exit status)."""

    def __init__(self, status: int, message: str, path: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message.strip()
        self.path = path

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.message}{where}"

    @property
    def transient(self) -> bool:
        return any(m.lower() in self.message.lower() for m in TRANSIENT_MARKERS) or self.status in (
            502,
            503,
            595,
        )

    @property
    def unanswered(self) -> bool:
        """No answer came back (a timeout, a dropped connection): the server may have done the request."""
        return self.status == 503 and self.message.startswith("connection error")

    @property
    def vmid_taken(self) -> bool:
        return any(m in self.message for m in VMID_TAKEN_MARKERS)

    @property
    def missing(self) -> bool:
        return "does not exist" in self.message and "Configuration file" in self.message


def client_argument_spec() -> dict:
    """The connection options every proxmox_vm_* module takes; the token secret is no_log."""
    return {
        "api_host": {"type": "str", "required": True},
        "api_port": {"type": "int", "default": 8006},
        "api_token_id": {"type": "str", "required": True},
        "api_token_secret": {"type": "str", "required": True, "no_log": True},
        "validate_certs": {"type": "bool", "default": True},
        "ca_file": {"type": "path"},
        "api_timeout": {"type": "int", "default": 30},
        "task_timeout": {"type": "int", "default": 1800},
        "retries": {"type": "int", "default": 6},
        "retry_delay": {"type": "float", "default": 1.0},
    }


def client_from_params(params: dict) -> PveClient:
    if params.get("validate_certs"):
        verify: bool | str = params.get("ca_file") or True
    else:
        verify = False
    return PveClient(
        host=params["api_host"],
        port=params["api_port"],
        token_id=params["api_token_id"],
        token_secret=params["api_token_secret"],
        verify=verify,
        timeout=params["api_timeout"],
        task_timeout=params["task_timeout"],
        retries=params["retries"],
        retry_delay=params["retry_delay"],
    )


class PveClient:
    """Thread-safe: each thread gets its own proxmoxer API object (and so its own HTTP session)."""

    def __init__(
        self,
        host: str,
        port: int,
        token_id: str,
        token_secret: str,
        verify: bool | str = True,
        timeout: int = 30,
        task_timeout: int = 1800,
        retries: int = 6,
        retry_delay: float = 1.0,
    ):
        if ProxmoxAPI is None:
            raise RuntimeError("the python 'proxmoxer' and 'requests' packages are required")
        user, sep, token_name = token_id.partition("!")
        if not sep or not user or not token_name:
            raise ValueError("api_token_id must look like user@realm!tokenname")
        # proxmoxer's HTTPS backend: verify_ssl is passed with every request (a CA path or a bool), so
        # REQUESTS_CA_BUNDLE cannot override a CA file given here; the token goes in the Authorization header.
        self._connect = dict(host=host, port=port, user=user, token_name=token_name, token_value=token_secret,
                             verify_ssl=verify, timeout=timeout, backend="https", service="PVE")
        self.timeout = timeout
        self.task_timeout = task_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._local = threading.local()
        self._vm_audit_ok = False

    # ------------------------------------------------------------------ HTTP

    def _api(self):
        api = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = ProxmoxAPI(**self._connect)
        return api

    def request(self, method: str, path: str, data: dict | None = None, params: dict | None = None):
        call = getattr(self._api()(path.strip("/")), method.lower())  # get/post/put/delete
        try:
            return call(**dict((params if method in ("GET", "DELETE") else data) or {}))
        except ResourceException as e:
            # PVE puts its message in the status line (proxmoxer's `content`) and parameter errors in `errors`.
            message = str(e.content or e.status_message or "").strip()
            if isinstance(e.errors, dict) and e.errors:
                message = f"{message} " + "; ".join(f"{k}: {v}" for k, v in sorted(e.errors.items()))
            raise PveApiError(e.status_code, message or f"HTTP {e.status_code}", path) from None
        except requests.exceptions.SSLError as e:
            raise PveApiError(0, f"TLS verification failed: {e.__class__.__name__}", path) from None
        except requests.exceptions.RequestException as e:
            raise PveApiError(503, f"connection error: {e.__class__.__name__}", path) from None

    def get(self, path: str, **params):
        return self.request("GET", path, params=params or None)

    def post(self, path: str, **data):
        return self.request("POST", path, data=data)

    def put(self, path: str, **data):
        return self.request("PUT", path, data=data)

    def delete(self, path: str, **params):
        return self.request("DELETE", path, params=params or None)

    # ----------------------------------------------------------------- tasks

    def wait_task(self, node: str, upid: str, timeout: float | None = None) -> str:
        """Wait for a task to stop; returns its exit status (OK or WARNINGS...) or raises PveApiError."""
        deadline = time.monotonic() + (timeout or self.task_timeout)
        path = f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/status"
        delay = 0.05
        while True:
            try:
                status = self.get(path)
            except PveApiError as e:
                if not e.transient or time.monotonic() > deadline:
                    raise
                status = {"status": "running"}
            if status.get("status") == "stopped":
                exit_status = str(status.get("exitstatus") or "")
                if exit_status == "OK" or exit_status.startswith("WARNINGS"):
                    return exit_status
                raise PveApiError(0, exit_status or "task failed without exit status", upid)
            if time.monotonic() > deadline:
                raise PveApiError(0, f"timed out after {timeout or self.task_timeout}s waiting for task", upid)
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def run_task(self, method: str, path: str, node: str, data: dict | None = None, timeout=None) -> str:
        """Start an asynchronous call (which answers a UPID) and wait for its task."""
        upid = self.request(method, path, data=data if method != "DELETE" else None,
                            params=data if method == "DELETE" else None)
        if not upid:  # a synchronous answer
            return "OK"
        return self.wait_task(node, upid, timeout)

    def retrying(self, action, what: str = ""):
        """Run action() and retry it with exponential backoff while it fails with a transient error."""
        attempt = 0
        while True:
            try:
                return action()
            except PveApiError as e:
                attempt += 1
                if not e.transient or attempt > self.retries:
                    if what:
                        raise PveApiError(e.status, f"{what}: {e.message}", e.path) from None
                    raise
                time.sleep(self.retry_delay * (2 ** (attempt - 1)))

    # --------------------------------------------------------------- reading

    def cluster_vms(self) -> list[dict]:
        """Every QEMU VM of the cluster: refused unless the token can audit them all (see require_vm_audit)."""
        self.require_vm_audit()
        return [v for v in (self.get("/cluster/resources", type="vm") or []) if v.get("type") == "qemu"]

    def require_vm_audit(self) -> None:
        """/cluster/resources silently leaves out the VMs the token cannot audit (pve-manager PVE/API2/Cluster.pm
        resources: `next if !$rpcenv->check($authuser, "/vms/$vmid", ['VM.Audit'], 1)`), so a token with VM.Audit
        on a pool only would let the allocator hand out the VMIDs and addresses of VMs it does not see. Checked once
        per client through GET /access/permissions?path=/vms (pve-access-control src/PVE/API2/AccessControl.pm
        permissions: any user or token may read its own; answers the privileges held on that path, inherited
        ones included)."""
        if self._vm_audit_ok:
            return
        held = self.request("GET", "/access/permissions", params={"path": "/vms"}) or {}
        if not any("VM.Audit" in (privs or {}) for privs in held.values()):
            raise PveApiError(403, f"the API token {self._connect['user']}!{self._connect['token_name']} lacks "
                                   "VM.Audit on /vms (propagated): /cluster/resources leaves out the VMs it cannot "
                                   "audit, so their VMIDs and addresses could be handed out again; grant the "
                                   "privileges roles/proxmox_vm/README.md lists", "/access/permissions")
        self._vm_audit_ok = True

    def vm_config(self, node: str, vmid: int) -> dict:
        return self.get(f"/nodes/{node}/qemu/{vmid}/config") or {}

    def vm_status(self, node: str, vmid: int) -> dict:
        return self.get(f"/nodes/{node}/qemu/{vmid}/status/current") or {}

    def find_vm(self, vmid: int) -> dict | None:
        for vm in self.cluster_vms():
            if int(vm["vmid"]) == int(vmid):
                return vm
        return None
