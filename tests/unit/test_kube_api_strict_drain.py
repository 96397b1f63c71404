"""library/kube_node_drain's rules: which pods a drain evicts (kubectl's drain filters) and how a 429 names the
PodDisruptionBudget that refused it (the cause eviction.go sends)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "plugins" / "modules" / "kube_node_drain.py"


@pytest.fixture(scope="module")
def drain():
    spec = importlib.util.spec_from_file_location("kube_node_drain", LIBRARY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pod(name: str, owner: str | None = None, phase: str = "Running", mirror: bool = False, empty_dir: bool = False):
    owners = [SimpleNamespace(kind=owner, controller=True)] if owner else None
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, namespace="ns", owner_references=owners,
                                 annotations={"kubernetes.io/config.mirror": "x"} if mirror else None),
        status=SimpleNamespace(phase=phase),
        spec=SimpleNamespace(volumes=[SimpleNamespace(empty_dir={})] if empty_dir else None))


def test_classify_follows_kubectl_drain_filters(drain) -> None:
    pods = [_pod("rs", "ReplicaSet"), _pod("ds", "DaemonSet"), _pod("static", mirror=True), _pod("bare"),
            _pod("done", phase="Succeeded"), _pod("scratch", "ReplicaSet", empty_dir=True)]

    evict, errors = drain.classify(pods, force=False, ignore_daemonsets=True, delete_emptydir_data=False)

    assert [p.metadata.name for p in evict] == ["rs", "done"]
    assert errors == ["cannot delete Pods that declare no controller (use force): ns/bare",
                      "cannot delete Pods with local storage (use delete_emptydir_data): ns/scratch"]
    evict, errors = drain.classify(pods, force=True, ignore_daemonsets=False, delete_emptydir_data=True)
    assert [p.metadata.name for p in evict] == ["rs", "bare", "done", "scratch"]
    assert errors == ["cannot delete DaemonSet-managed Pods: ns/ds"]


def test_a_refusal_names_the_budget_from_the_apiservers_cause(drain) -> None:
    cause = "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
    body = {"kind": "Status", "status": "Failure", "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget", "message": cause}]}}
    assert drain.refusal(SimpleNamespace(body=json.dumps(body), reason="Too Many Requests")) == ("web-pdb", cause)
    processing = dict(body, details={"causes": [{"reason": "DisruptionBudget", "message":
                                                 "The disruption budget web is still being processed by the server."}]})
    assert drain.refusal(SimpleNamespace(body=json.dumps(processing), reason=""))[0] == "web"
    assert drain.refusal(SimpleNamespace(body="not json", reason="Too Many Requests")) == (None, "Too Many Requests")
