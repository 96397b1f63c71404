"""The Proxmox VE API connection options every module built on module_utils/proxmox_api.py takes
(client_argument_spec there): `extends_documentation_fragment: agentkube.kamaji.proxmox_api`."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  api_host: {description: Proxmox VE API host (a node or the cluster's address)., type: str, required: true}
  api_port: {description: API port., type: int, default: 8006}
  api_token_id:
    description: API token id, C(user@realm!name); its privileges are listed in SECURITY.md.
    type: str
    required: true
  api_token_secret: {description: API token secret (never logged)., type: str, required: true}
  validate_certs: {description: Verify the API's TLS certificate., type: bool, default: true}
  ca_file: {description: CA bundle to verify it with (the system store when unset)., type: path}
  api_timeout: {description: Seconds per API request., type: int, default: 30}
  task_timeout: {description: Seconds to wait for a Proxmox task (UPID) to end., type: int, default: 1800}
  retries: {description: Retries of a request that failed for a transient reason., type: int, default: 6}
  retry_delay: {description: First backoff delay in seconds (doubled per retry)., type: float, default: 1.0}
"""
