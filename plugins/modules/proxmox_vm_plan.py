#!/usr/bin/python
"""Compare the desired worker VMs with the owned ones: what to create, keep and remove. No API calls."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_vm_config import vm_tags

try:
    from agentkube.core.naming import node_name
except ImportError:  # reported in main()
    node_name = None

DOCUMENTATION = r"""
module: proxmox_vm_plan
short_description: Plan worker VMs from the tenant's node pools and the VMs the service owns
description:
  - >-
    Names come from agentkube.core.naming.node_name (the one derivation every layer uses).
  - >-
    Scale down removes the highest indices of a pool; pools no longer in the spec are removed whole;
    of two VMs with one name (a duplicate), the configured one is kept (then a running one, then the lowest
    vmid); the other is removed.
options:
  tenant: {description: Tenant name., type: str, required: true}
  service_id: {description: Fulcrum service id., type: str, required: true}
  owner_tag: {description: Owner tag., type: str, default: agentkube}
  node_pools: {description: The tenant spec's nodePools., type: list, elements: dict, default: []}
  owned: {description: Owned VMs (proxmox_vm_inventory's vms)., type: list, elements: dict, default: []}
  state: {description: Desired state., type: str, choices: [present, started, stopped, absent], default: present}
  delete_list: {description: With state absent, delete exactly these names., type: list, elements: str, default: []}
author: AgentKube
"""


def desired_vms(tenant: str, service_id: str, owner: str, pools: list[dict]) -> list[dict]:
    out = []
    for pool in pools:
        for index in range(int(pool["count"])):
            out.append({
                "name": node_name(tenant, pool["name"], index),
                "pool": pool["name"],
                "index": index,
                "cores": int(pool["cores"]),
                "memory": int(pool["memoryMiB"]),
                "disk_gib": int(pool["diskGiB"]),
                "tags": vm_tags(owner, service_id, tenant, pool["name"]),
            })
    return out


def plan(p: dict) -> dict:
    # Of two VMs with one name, the one kept is the configured one (tagged, cloud-init written), then a running
    # one, then the lowest vmid: an orphan of an interrupted run (cloned, never configured) is the one removed.
    owned = sorted(p["owned"], key=lambda v: (v["name"], not v.get("configured", v.get("tagged", False)),
                                              v.get("status") != "running", int(v["vmid"])))
    by_name: dict[str, dict] = {}
    duplicates = []
    for vm in owned:
        if vm["name"] in by_name:
            duplicates.append(vm)
        else:
            by_name[vm["name"]] = vm
    if p["state"] == "absent":
        wanted = set(p["delete_list"]) if p["delete_list"] else None
        remove = [v for v in owned if wanted is None or v["name"] in wanted]
        return {"desired": [], "create": [], "keep": [], "remove": remove}
    if p["state"] in ("started", "stopped"):
        return {"desired": [], "create": [], "keep": list(by_name.values()), "remove": []}
    desired = desired_vms(p["tenant"], p["service_id"], p["owner_tag"], p["node_pools"])
    names = {d["name"] for d in desired}
    create, keep = [], []
    for d in desired:
        if d["name"] in by_name:
            keep.append(dict(d, vmid=by_name[d["name"]]["vmid"], node=by_name[d["name"]]["node"]))
        else:
            create.append(d)
    extra = [v for v in by_name.values() if v["name"] not in names]
    # Highest indices first, so a drain/delete loop shrinks a pool from its end.
    extra.sort(key=lambda v: (v.get("pool", ""), -int(v.get("index", -1)), v["name"]))
    return {"desired": desired, "create": create, "keep": keep, "remove": extra + duplicates}


def main():
    module = AnsibleModule(
        argument_spec={
            "tenant": {"type": "str", "required": True},
            "service_id": {"type": "str", "required": True},
            "owner_tag": {"type": "str", "default": "agentkube"},
            "node_pools": {"type": "list", "elements": "dict", "default": []},
            "owned": {"type": "list", "elements": "dict", "default": []},
            "state": {"type": "str", "default": "present",
                      "choices": ["present", "started", "stopped", "absent"]},
            "delete_list": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    if node_name is None:
        module.fail_json(msg="the agentkube package is not importable by the controller's python "
                             "(set ansible_python_interpreter to ansible_playbook_python)")
    for i, pool in enumerate(module.params["node_pools"]):
        for key in ("name", "count", "cores", "memoryMiB", "diskGiB"):
            if key not in pool:
                module.fail_json(msg=f"agentkube_tenant.nodePools[{i}].{key} is missing")
    try:
        result = plan(module.params)
    except ValueError as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
