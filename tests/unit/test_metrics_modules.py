"""The tenant_metrics role's modules, their pure parts: which /cluster/resources entries are tenant VMs,
a Proxmox failure as data, TCP summaries, the admin kubeconfig lookup, the kubeconfig reader, and an
unreachable tenant reported in its entry."""

from __future__ import annotations

import base64

import pytest
from unit_support import load_module

vms = load_module("tenant_metrics_vms")
clusters = load_module("tenant_metrics_clusters")


def resource(**kw):
    item = {"type": "qemu", "vmid": 4100, "name": "alpha-default-0", "node": "pve1", "status": "running",
            "template": 0, "tags": "agentkube;svc-1234;tenant-alpha;pool-default", "cpu": 0.5, "maxcpu": 2,
            "mem": 10, "maxmem": 20, "netin": 7, "netout": 8}
    item.update(kw)
    return item


def test_tenant_vms_are_tagged_with_owner_and_tenant_and_not_templates():
    vm = vms.tenant_vm(resource(), "agentkube")
    assert vm["tenant"] == "alpha" and vm["serviceId"] == "1234" and vm["netin"] == 7
    assert vm["disk"] == 0 and vm["maxdisk"] == 0           # missing counters become 0, never None
    assert vms.tenant_vm(resource(template=1), "agentkube") is None
    assert vms.tenant_vm(resource(tags="svc-1234;tenant-alpha"), "agentkube") is None   # not ours
    assert vms.tenant_vm(resource(tags="agentkube;svc-1234"), "agentkube") is None       # no tenant tag
    assert vms.tenant_vm(resource(type="lxc"), "agentkube") is None
    assert vms.tenant_vm(resource(cpu=True), "agentkube")["cpu"] == 0                    # not a number


class _Client:
    def __init__(self, answer=None, error=None):
        self.answer, self.error, self.calls = answer, error, []

    def get(self, path, **params):
        self.calls.append((path, params))
        if self.error:
            raise self.error
        return self.answer


def test_one_call_and_a_proxmox_failure_is_data():
    client = _Client(answer=[resource(), resource(vmid=9035, template=1), resource(vmid=4101, name="b-0",
                                                                                    tags="agentkube;tenant-b")])
    got = vms.collect(client, "agentkube")
    assert client.calls == [("/cluster/resources", {"type": "vm"})]
    assert got["ok"] and [v["vmid"] for v in got["vms"]] == [4100, 4101]
    down = vms.collect(_Client(error=vms.PveApiError(503, "connection error: ConnectionError",
                                                    "/cluster/resources")), "agentkube")
    assert down["ok"] is False and "connection error" in down["error"] and down["vms"] == []


def tcp(name="alpha", status="Ready", replicas=2, ready=2, secret=None):
    obj = {"metadata": {"namespace": "ns", "name": name},
           "spec": {"controlPlane": {"deployment": {"replicas": replicas}}},
           "status": {"kubernetesResources": {"version": {"status": status},
                                              "deployment": {"readyReplicas": ready}}}}
    if secret:
        obj["status"]["kubeconfig"] = {"admin": {"secretName": secret}}
    return obj


def test_tcp_summary_and_admin_kubeconfig_lookup():
    assert clusters.tcp_summary(tcp(status="Sleeping", replicas=0, ready=0)) == {
        "namespace": "ns", "name": "alpha", "status": "Sleeping", "replicas": 0, "readyReplicas": 0}
    assert clusters.tcp_summary({"metadata": {"namespace": "ns", "name": "x"}})["status"] == "Unknown"
    secrets = {("ns", "custom"): {"data": {"admin.conf": base64.b64encode(b"kind: Config").decode()}}}
    assert clusters.admin_kubeconfig(tcp(secret="custom"), secrets) == "kind: Config"
    assert clusters.admin_kubeconfig(tcp(), secrets) is None        # alpha-admin-kubeconfig is missing


KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: b
clusters:
- {name: a, cluster: {server: "https://127.0.0.1:1"}}
- {name: b, cluster: {server: "https://127.0.0.1:9"}}
users:
- {name: u, user: {token: secret-token}}
contexts:
- {name: a, context: {cluster: a, user: u}}
- {name: b, context: {cluster: b, user: u}}
"""


def test_kubeconfig_reader_follows_the_current_context():
    server, _cluster, user = clusters._kubeconfig_target(KUBECONFIG)
    assert server == "https://127.0.0.1:9" and user == {"token": "secret-token"}
    with pytest.raises(ValueError, match="no server"):
        clusters._kubeconfig_target("contexts: []\nclusters: []\nusers: []\n")


def test_tenants_not_ready_are_not_queried_and_an_unreachable_one_is_reported():
    secrets = [{"metadata": {"namespace": "ns", "name": "alpha-admin-kubeconfig"},
                "data": {"admin.conf": base64.b64encode(KUBECONFIG.encode()).decode()}}]  # port 9: refused
    got = clusters.collect([tcp("alpha"), tcp("sleepy", status="Sleeping", replicas=0, ready=0),
                            tcp("nosecret")], secrets, concurrency=2, timeout=2)
    by_name = {t["name"]: t for t in got["tenants"]}
    assert by_name["sleepy"]["queried"] is False and "Sleeping" in by_name["sleepy"]["error"]
    assert by_name["nosecret"]["reachable"] is False and "admin.conf" in by_name["nosecret"]["error"]
    alpha = by_name["alpha"]
    assert alpha["queried"] and not alpha["reachable"] and alpha["error"].startswith("tenant API unreachable")
    assert "secret-token" not in repr(got)
    assert [t["name"] for t in got["kamaji"]["tcps"]] == ["alpha", "sleepy", "nosecret"]


def test_secrets_listing_failure_marks_every_ready_tenant():
    got = clusters.collect([tcp("alpha"), tcp("sleepy", status="Sleeping")], None, 2, 2,
                           secrets_error="HTTP 403: Forbidden")
    by_name = {t["name"]: t for t in got["tenants"]}
    assert by_name["alpha"]["queried"] and "HTTP 403" in by_name["alpha"]["error"]
    assert by_name["sleepy"]["queried"] is False
