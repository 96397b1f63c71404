#!/usr/bin/python
"""Cordon and drain a Kubernetes Node through the eviction API, retrying evictions that a PodDisruptionBudget
refuses (429) until a time bound; on failure the Node is uncordoned and the message names the node and the
budgets that blocked it."""

from __future__ import annotations

import contextlib
import json
import re
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: kube_node_drain
short_description: Drain a Node, honouring PodDisruptionBudgets, within a time bound
description:
  - >-
    Cordons the Node, then evicts (POST pods/<name>/eviction, policy/v1) every pod on it that C(kubectl drain)
    would evict, and waits until they are gone (Terminating pods included, they still run).
  - >-
    An eviction refused with 429 TooManyRequests (a PodDisruptionBudget that allows no disruption now) is retried
    every O(retry_delay_seconds) until O(timeout_seconds) have passed, as C(kubectl drain) does.
  - >-
    When the bound runs out, or an eviction fails otherwise, the Node is uncordoned (when this run cordoned it)
    and the module fails naming the Node, the pods left, and each PodDisruptionBudget that refused them with the
    API server's own reason.
  - >-
    Why not kubernetes.core.k8s_drain - it fails on the first 429 and its wait only warns when pods are still
    there at its timeout.
  - >-
    Which pods are evicted follows k8s.io/kubectl pkg/drain/filters.go; mirror pods are skipped, DaemonSet pods
    are skipped with O(ignore_daemonsets) (else an error), pods without a controller need O(force), pods with
    emptyDir volumes need O(delete_emptydir_data); finished pods (Succeeded, Failed) are always deleted.
options:
  kubeconfig: {description: The cluster's kubeconfig as a dict., type: dict, required: true, no_log: true}
  name: {description: The Node., type: str, required: true}
  grace_period_seconds: {description: "Grace period of the evicted pods (default: each pod's own).", type: int}
  timeout_seconds:
    {description: Bound for the whole drain (refused evictions retried until then)., type: int, default: 300}
  retry_delay_seconds:
    {description: Seconds between retries of refused evictions and checks for pods gone., type: int, default: 5}
  ignore_daemonsets: {description: Skip DaemonSet pods., type: bool, default: true}
  delete_emptydir_data: {description: Evict pods with emptyDir volumes (their data is lost)., type: bool, default: true}
  force: {description: Evict pods without a controller (they are not recreated)., type: bool, default: false}
author: AgentKube
"""

RETURN = r"""
evicted: {description: "namespace/name of the pods evicted", type: list, returned: always}
blocked_by:
  {description: "namespace/name of the budgets that refused evictions at the end", type: list, returned: failure}
"""

_MIRROR = "kubernetes.io/config.mirror"
# the cause message of eviction.go's 429s: "The disruption budget <name> needs ..." / "... is still being ..."
_BUDGET = re.compile(r"The disruption budget (\S+) ")


def _name(pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def classify(pods, force: bool, ignore_daemonsets: bool, delete_emptydir_data: bool) -> tuple[list, list[str]]:
    """(pods to evict, errors), by kubectl's drain filters."""
    evict, errors = [], []
    for pod in pods:
        annotations = pod.metadata.annotations or {}
        if _MIRROR in annotations:
            continue
        if (pod.status.phase if pod.status else None) in ("Succeeded", "Failed"):
            evict.append(pod)
            continue
        owners = pod.metadata.owner_references or []
        controller = next((o for o in owners if o.controller), None)
        if controller is not None and controller.kind == "DaemonSet":
            if not ignore_daemonsets:
                errors.append(f"cannot delete DaemonSet-managed Pods: {_name(pod)}")
            continue
        if controller is None and not force:
            errors.append(f"cannot delete Pods that declare no controller (use force): {_name(pod)}")
            continue
        if any(v.empty_dir is not None for v in (pod.spec.volumes or [])) and not delete_emptydir_data:
            errors.append(f"cannot delete Pods with local storage (use delete_emptydir_data): {_name(pod)}")
            continue
        evict.append(pod)
    return evict, errors


def refusal(exc) -> tuple[str | None, str]:
    """(budget name, reason) from a 429 eviction answer."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    causes = (body.get("details") or {}).get("causes") or []
    reason = "; ".join(c.get("message", "") for c in causes if c.get("reason") == "DisruptionBudget")
    match = _BUDGET.search(reason)
    return (match.group(1) if match else None), (reason or body.get("message") or str(exc.reason))


def main():
    module = AnsibleModule(argument_spec={
        "kubeconfig": {"type": "dict", "required": True, "no_log": True},
        "name": {"type": "str", "required": True},
        "grace_period_seconds": {"type": "int"},
        "timeout_seconds": {"type": "int", "default": 300},
        "retry_delay_seconds": {"type": "int", "default": 5},
        "ignore_daemonsets": {"type": "bool", "default": True},
        "delete_emptydir_data": {"type": "bool", "default": True},
        "force": {"type": "bool", "default": False},
    }, supports_check_mode=True)
    p = module.params
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
    except ImportError:
        module.fail_json(msg="the kubernetes Python client is required on the controller")
    if p["timeout_seconds"] < 0 or p["retry_delay_seconds"] < 1:
        module.fail_json(msg="timeout_seconds must be >= 0 and retry_delay_seconds >= 1")
    node = p["name"]
    try:
        core = client.CoreV1Api(config.new_client_from_config_dict(p["kubeconfig"]))
    except Exception as e:  # noqa: BLE001 - any malformed kubeconfig is a clear failure
        module.fail_json(msg=f"kubeconfig: {type(e).__name__}")

    try:
        was_cordoned = bool(core.read_node(node).spec.unschedulable)
    except ApiException as e:
        module.fail_json(msg=f"Node {node}: {e.status} {e.reason}")
    cordoned = False
    if not was_cordoned and not module.check_mode:
        core.patch_node(node, {"spec": {"unschedulable": True}})
        cordoned = True

    def fail(msg: str, **extra) -> None:
        if cordoned:
            try:
                core.patch_node(node, {"spec": {"unschedulable": False}})
                msg += f"; Node {node} was uncordoned"
            except ApiException as e:
                msg += f"; uncordoning Node {node} failed too ({e.status} {e.reason}), it stays unschedulable"
        elif was_cordoned:
            msg += f"; Node {node} was already cordoned before the drain and is left so"
        module.fail_json(msg=msg, changed=cordoned, **extra)

    def pods_on_node():
        return core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items

    first, errors = classify(pods_on_node(), p["force"], p["ignore_daemonsets"], p["delete_emptydir_data"])
    if errors:
        fail(f"Draining Node {node}: " + "; ".join(errors))
    if module.check_mode:
        module.exit_json(changed=not was_cordoned or bool(first), evicted=[_name(x) for x in first])

    deadline = time.monotonic() + p["timeout_seconds"]
    evicted: list[str] = []
    blocked: dict[str, tuple[str, str]] = {}  # pod -> (budget, reason), refused at the last try
    while True:
        pods, errors = classify(pods_on_node(), p["force"], p["ignore_daemonsets"], p["delete_emptydir_data"])
        if errors:
            fail(f"Draining Node {node}: " + "; ".join(errors), evicted=evicted)
        if not pods:
            break
        blocked = {}
        for pod in pods:
            if pod.metadata.deletion_timestamp is not None:
                continue  # Terminating: it still runs until its grace period ends
            body = {"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": pod.metadata.name, "namespace": pod.metadata.namespace}}
            if p["grace_period_seconds"] is not None:
                body["deleteOptions"] = {"gracePeriodSeconds": p["grace_period_seconds"]}
            try:
                core.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace, body)
                evicted.append(_name(pod))
            except ApiException as e:
                if e.status == 404:
                    continue
                if e.status == 429:
                    budget, reason = refusal(e)
                    blocked[_name(pod)] = (f"{pod.metadata.namespace}/{budget}" if budget else "", reason)
                    continue
                message = e.reason
                with contextlib.suppress(ValueError):
                    message = json.loads(e.body or "{}").get("message") or message
                fail(f"Draining Node {node}: evicting pod {_name(pod)} failed: {e.status} {message}",
                     evicted=evicted)
        if time.monotonic() >= deadline:
            left = [_name(x) for x in pods]
            parts = [f"Draining Node {node} did not finish within {p['timeout_seconds']}s"]
            budgets = sorted({b for b, _ in blocked.values() if b})
            for pod_name, (budget, reason) in sorted(blocked.items()):
                parts.append(f"eviction of pod {pod_name} refused by PodDisruptionBudget {budget or '(unnamed)'}"
                             f" ({reason})")
            terminating = [x for x in left if x not in blocked]
            if terminating:
                parts.append("pods still terminating: " + ", ".join(terminating))
            fail("; ".join(parts), evicted=evicted, blocked_by=budgets, pods_left=left)
        time.sleep(min(p["retry_delay_seconds"], max(deadline - time.monotonic(), 0.1)))
    module.exit_json(changed=cordoned or bool(evicted), evicted=evicted)


if __name__ == "__main__":
    main()
