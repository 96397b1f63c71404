"""kubernetes.core's k8s and k8s_info modules against the Kubernetes/Kamaji emulator, through a kubeconfig
with TLS verified: create a TenantControlPlane, poll until Ready, read the admin kubeconfig Secret, talk to
the tenant API server with that admin.conf, then delete and wait until gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from agentkube_lab.kube_emulator import KubeEmulator

pytestmark = pytest.mark.integration

PLAYBOOK = """
- name: Drive the Kamaji emulator with kubernetes.core
  hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    tcp:
      apiVersion: kamaji.clastix.io/v1alpha1
      kind: TenantControlPlane
      metadata: {name: demo, namespace: tenants, labels: {agentkube.io/service-id: svc-1}}
      spec:
        dataStoreSchema: tenants_demo
        networkProfile: {}  # Kamaji's CEL rules on spec read it: without it the apiserver refuses the TCP
        controlPlane: {deployment: {replicas: 1}, service: {serviceType: ClusterIP}}
        kubernetes:
          version: v1.34.2
          kubelet: {configurationJSONPatches: [{op: replace, path: /cgroupDriver, value: systemd}]}
  tasks:
    - name: Namespace
      kubernetes.core.k8s:
        state: present
        definition: {apiVersion: v1, kind: Namespace, metadata: {name: tenants}}
    - name: TenantControlPlane
      kubernetes.core.k8s: {state: present, definition: "{{ tcp }}"}
      register: created
    - name: Wait for Ready by polling version.status
      kubernetes.core.k8s_info:
        api_version: kamaji.clastix.io/v1alpha1
        kind: TenantControlPlane
        name: demo
        namespace: tenants
      register: info
      until: >-
        info.resources | length > 0 and
        (info.resources[0].status.kubernetesResources.version.status | default('')) == 'Ready'
      retries: 40
      delay: 1
    - name: Re-apply is a no-op once Ready
      kubernetes.core.k8s: {state: present, definition: "{{ tcp }}"}
      register: again
    - name: Skipping a minor version is refused
      kubernetes.core.k8s:
        state: present
        definition: "{{ tcp | combine({'spec': {'kubernetes': {'version': 'v1.36.0'}}}, recursive=true) }}"
      register: skipped
      failed_when: false
    - name: Admin kubeconfig secret
      kubernetes.core.k8s_info:
        kind: Secret
        namespace: tenants
        name: "{{ info.resources[0].status.kubeconfig.admin.secretName }}"
      register: admin
      no_log: true
    - name: Write admin.conf
      ansible.builtin.copy:
        content: "{{ admin.resources[0].data['admin.conf'] | b64decode }}"
        dest: "{{ workdir }}/admin.conf"
        mode: "0600"
      no_log: true
    - name: Tenant nodes
      kubernetes.core.k8s_info: {kind: Node, kubeconfig: "{{ workdir }}/admin.conf"}
      register: nodes
    - name: Tenant cluster-info
      kubernetes.core.k8s_info:
        kind: ConfigMap
        namespace: kube-public
        name: cluster-info
        kubeconfig: "{{ workdir }}/admin.conf"
      register: cluster_info
    - name: Delete and wait until gone
      kubernetes.core.k8s:
        state: absent
        api_version: kamaji.clastix.io/v1alpha1
        kind: TenantControlPlane
        name: demo
        namespace: tenants
        wait: true
        wait_timeout: 30
      register: deleted
    - name: Deleting what is gone
      kubernetes.core.k8s:
        state: absent
        api_version: kamaji.clastix.io/v1alpha1
        kind: TenantControlPlane
        name: demo
        namespace: tenants
      register: deleted_again
    - name: Report
      ansible.builtin.copy:
        dest: "{{ workdir }}/report.json"
        mode: "0600"
        content: "{{ report | to_json }}"
      vars:
        report:
          created: "{{ created.changed }}"
          endpoint: "{{ info.resources[0].status.controlPlaneEndpoint }}"
          again: "{{ again.changed }}"
          skipped_msg: "{{ skipped.msg | default('') }}"
          nodes: "{{ nodes.resources | map(attribute='metadata.name') | list }}"
          cluster_info_server: "{{ (cluster_info.resources[0].data.kubeconfig | from_yaml).clusters[0].cluster.server
            }}"
          deleted: "{{ deleted.changed }}"
          deleted_again: "{{ deleted_again.changed }}"
"""


def test_kubernetes_core_drives_the_emulator(tmp_path: Path) -> None:
    with KubeEmulator(tmp_path / "kube", ready_delay=0.5) as emu:
        kubeconfig = emu.write_kubeconfig(tmp_path / "kubeconfig")
        playbook = tmp_path / "play.yml"
        playbook.write_text(PLAYBOOK)
        seen: dict[str, str] = {}

        def register_worker() -> None:  # what a joining kubelet would do, once the tenant API exists
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (tenant := emu.tenant("tenants", "demo")) is None:
                time.sleep(0.02)
            if tenant is not None:
                tenant.add_node("worker-1")
                seen["token"] = yaml.safe_load(tenant.kubeconfig)["users"][0]["user"]["client-key-data"]

        worker = threading.Thread(target=register_worker, daemon=True)
        worker.start()

        env = dict(os.environ, K8S_AUTH_KUBECONFIG=str(kubeconfig), ANSIBLE_NOCOLOR="1",
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        ansible = Path(sys.executable).parent / "ansible-playbook"
        result = subprocess.run(
            [str(ansible), "-i", "localhost,", "-c", "local", str(playbook), "-e", f"workdir={tmp_path}"],
            env=env, capture_output=True, text=True, timeout=300, check=False)
        worker.join(timeout=5)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        report = json.loads((tmp_path / "report.json").read_text())
        tenant = emu.tenant("tenants", "demo")
        assert tenant is None  # deleted: the controller stopped and forgot the tenant API server
        assert report["created"] is True and report["again"] is False
        assert "non-sequential" in report["skipped_msg"]
        assert report["endpoint"].startswith("127.0.0.1:")
        assert report["cluster_info_server"] == f"https://{report['endpoint']}"
        assert report["nodes"] == ["worker-1"]
        assert report["deleted"] is True and report["deleted_again"] is False
        assert emu.get("kamaji.clastix.io/v1alpha1", "TenantControlPlane", "tenants", "demo") is None
        assert seen["token"] not in result.stdout + result.stderr  # no_log kept the credential out
