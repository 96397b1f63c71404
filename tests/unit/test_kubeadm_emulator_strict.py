"""The lab kubeadm emulator is as strict as kubeadm: the join preflight (RunJoinNodeChecks) with
--ignore-preflight-errors, the kubelet-start phase's order (ca.crt and bootstrap-kubelet.conf first), the emulated
kubelet's refusals (swap, a cgroup driver that differs from containerd's) and strict decoding of the
JoinConfiguration (an error for `kubeadm config validate`, a warning for `kubeadm join`, as in kubeadm)."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest
import yaml
from test_kubeadm_emulator import _config, _node, root, tenant, write_containerd_config  # noqa: F401 (fixtures)

from agentkube_lab import kubeadm_checks as kc
from agentkube_lab import kubeadm_emulator as ke

CA = "etc/kubernetes/pki/ca.crt"
BOOTSTRAP = "etc/kubernetes/bootstrap-kubelet.conf"
KUBELET_CONF = "etc/kubernetes/kubelet.conf"


def _kubelet_config_map(tenant) -> dict:  # noqa: F811
    """kube-system/kubelet-config, once the tenant (Kamaji's upload) has written it."""
    store = tenant.store
    for _ in range(250):
        cm = store.find(store.resolve("v1", "ConfigMap"), "kube-system", "kubelet-config")
        if cm is not None:
            return cm
        time.sleep(0.02)
    raise AssertionError("the tenant never uploaded kube-system/kubelet-config")


def _join(tmp_path, tenant, *flags: str, **overrides) -> int:  # noqa: F811
    return ke.kubeadm_main(["join", "--config", _config(tmp_path, tenant, **overrides), *flags])


# ---------------------------------------------------------------- preflight
@pytest.mark.parametrize(("path", "check"), [
    (CA, "FileAvailable--etc-kubernetes-pki-ca.crt"),
    (BOOTSTRAP, "FileAvailable--etc-kubernetes-bootstrap-kubelet.conf"),
    (KUBELET_CONF, "FileAvailable--etc-kubernetes-kubelet.conf"),
])
def test_a_file_left_by_an_earlier_join_is_refused_and_can_be_ignored(tmp_path, tenant, root, capsys, path, check):  # noqa: F811
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text("left behind")

    assert _join(tmp_path, tenant) == 1
    err = capsys.readouterr().err
    assert f"[ERROR {check}]: /{path} already exists" in err
    assert "[preflight] Some fatal errors occurred:" in err and "--ignore-preflight-errors=..." in err
    assert "preflight checks failed" in err
    assert _node(tenant) is None and not (root / "var/lib/kubelet").exists(), "nothing past preflight"

    assert _join(tmp_path, tenant, f"--ignore-preflight-errors={check.lower()}") == 0  # case-insensitive
    assert f"[WARNING {check}]" in capsys.readouterr().err
    assert _node(tenant) is not None


def test_ip_forward_comes_from_the_nodes_sysctl_configuration(tmp_path, tenant, root, capsys):  # noqa: F811
    (root / "etc/sysctl.d/99-kubernetes.conf").unlink()  # the kernel's default: 0
    assert _join(tmp_path, tenant) == 1
    assert ("[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: /proc/sys/net/ipv4/ip_forward contents are not "
            "set to 1") in capsys.readouterr().err

    # systemd-sysctl order: one file per name (/etc over /usr/lib), files by name, the last assignment wins
    (root / "usr/lib/sysctl.d").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/sysctl.d/50-forward.conf").write_text("net.ipv4.ip_forward = 1\n")
    (root / "etc/sysctl.d/50-forward.conf").write_text("net/ipv4/ip_forward=0\n")  # shadows /usr/lib's
    assert kc.sysctl_value(root, "net.ipv4.ip_forward") == "0"
    (root / "etc/sysctl.d/60-forward.conf").write_text("# later\n-net.ipv4.ip_forward = 1\n")
    assert kc.sysctl_value(root, "net.ipv4.ip_forward") == "1"
    assert _join(tmp_path, tenant) == 0


def test_the_ip_forward_error_can_be_ignored_through_the_join_configuration(tmp_path, tenant, root, capsys):  # noqa: F811
    (root / "etc/sysctl.d/99-kubernetes.conf").unlink()
    ignore = {"nodeRegistration.ignorePreflightErrors": ["FileContent--proc-sys-net-ipv4-ip_forward"]}
    assert _join(tmp_path, tenant, **ignore) == 0
    assert "[WARNING FileContent--proc-sys-net-ipv4-ip_forward]" in capsys.readouterr().err


def test_all_cannot_be_combined_with_single_checks(tmp_path, tenant, root, capsys):  # noqa: F811
    assert _join(tmp_path, tenant, "--ignore-preflight-errors=all,Swap") == 1
    assert "don't specify individual checks if 'all' is used" in capsys.readouterr().err


def test_port_10250_in_use_on_the_nodes_address_is_refused(tmp_path, tenant, root, capsys):  # noqa: F811
    address = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    (root / "usr/lib/agentkube-lab/node-address").write_text(address + "\n")
    with socket.create_server((address, kc.KUBELET_PORT)):
        assert _join(tmp_path, tenant) == 1
        assert "[ERROR Port-10250]: Port 10250 is in use" in capsys.readouterr().err
        assert _join(tmp_path, tenant, "--ignore-preflight-errors=all") == 0


def test_a_non_empty_manifests_directory_does_not_stop_a_worker_join(tmp_path, tenant, root):  # noqa: F811
    # kubernetes/kubernetes#104942 (v1.23) dropped that check for workers; kubeadm 1.35 joins
    (root / "etc/kubernetes/manifests").mkdir(parents=True)
    (root / "etc/kubernetes/manifests/static.yaml").write_text("kind: Pod\n")
    assert _join(tmp_path, tenant) == 0


def test_swap_is_a_preflight_warning_and_the_kubelet_refuses_it(tmp_path, tenant, root, capsys):  # noqa: F811
    (root / "etc/fstab").write_text("/dev/vda1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n"
                                    "#/old none swap sw 0 0\n")
    assert _join(tmp_path, tenant) == 1
    err = capsys.readouterr().err
    assert "[WARNING Swap]: swap is supported for cgroup v2 only" in err
    assert "error execution phase kubelet-start" in err and "running with swap on is not supported" in err
    assert "/swapfile" in err and "/old" not in err
    assert _node(tenant) is None
    assert (root / CA).exists() and not (root / BOOTSTRAP).exists(), "ca.crt stays; the phase removes the other"
    assert _join(tmp_path, tenant) == 1
    assert "[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]" in capsys.readouterr().err  # a retry is refused


def test_failswapon_false_in_the_tenants_kubelet_config_lets_the_kubelet_run_with_swap(tmp_path, tenant, root):  # noqa: F811
    (root / "etc/fstab").write_text("/swapfile none swap sw 0 0\n")
    cm = _kubelet_config_map(tenant)
    config = yaml.safe_load(cm["data"]["kubelet"])
    cm["data"]["kubelet"] = yaml.safe_dump({**config, "failSwapOn": False})
    tenant.store.put(cm)
    assert _join(tmp_path, tenant) == 0


# ---------------------------------------------------------------- kubelet-start
def test_a_cgroup_driver_that_differs_from_containerds_fails_the_join_naming_both(tmp_path, tenant, root, capsys):  # noqa: F811
    write_containerd_config(root, systemd=False)
    assert _join(tmp_path, tenant) == 1
    err = capsys.readouterr().err
    assert 'cgroup driver "systemd" (kube-system/kubelet-config cgroupDriver)' in err, err
    assert 'containerd\'s "cgroupfs" (/etc/containerd/config.toml: SystemdCgroup = false)' in err, err
    assert _node(tenant) is None and not (root / KUBELET_CONF).exists()
    assert (root / CA).exists() and not (root / BOOTSTRAP).exists()


def test_containerd_2_configuration_is_read_too(root):  # noqa: F811
    (root / "etc/containerd/config.toml").write_text(
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n"
        "  SystemdCgroup = true\n")
    assert kc.containerd_cgroup_driver(root)[0] == "systemd"
    (root / "etc/containerd/config.toml").unlink()
    assert kc.containerd_cgroup_driver(root)[0] == "cgroupfs"  # containerd's default


def test_a_ready_node_of_the_same_name_stops_the_join_before_the_kubelet_starts(tmp_path, tenant, root, capsys):  # noqa: F811
    tenant.store.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w0"},
                      "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert _join(tmp_path, tenant) == 1
    assert 'a Node with name "w0" and status "Ready" already exists in the cluster' in capsys.readouterr().err
    assert not (root / "var/lib/kubelet/config.yaml").exists()


def test_a_missing_kubelet_config_fails_kubelet_start_after_the_ca_is_written(tmp_path, tenant, root, capsys):  # noqa: F811
    _kubelet_config_map(tenant)
    tenant.store.delete(tenant.store.resolve("v1", "ConfigMap"), "kube-system", "kubelet-config")
    assert _join(tmp_path, tenant) == 1
    assert "error execution phase kubelet-start: no kubelet component config found" in capsys.readouterr().err
    assert (root / CA).exists() and not (root / BOOTSTRAP).exists() and _node(tenant) is None


def test_reset_clears_a_half_finished_join(tmp_path, tenant, root):  # noqa: F811
    write_containerd_config(root, systemd=False)
    assert _join(tmp_path, tenant) == 1
    (root / BOOTSTRAP).write_text("left by a killed join")
    assert ke.kubeadm_main(["reset", "-f"]) == 0
    assert not (root / CA).exists() and not (root / BOOTSTRAP).exists()
    write_containerd_config(root, systemd=True)
    assert _join(tmp_path, tenant) == 0 and _node(tenant) is not None


# ---------------------------------------------------------------- strict decoding
UNKNOWN = {"nodeRegistration.nodeName": "x", "discovery.bootstrapToken.ttl": "1h"}
STRICT = ('error unmarshaling configuration schema.GroupVersionKind{Group:"kubeadm.k8s.io", Version:"v1beta4", '
          'Kind:"JoinConfiguration"}: strict decoding error: unknown field "discovery.bootstrapToken.ttl", '
          'unknown field "nodeRegistration.nodeName"')


def test_config_validate_refuses_unknown_fields_with_kubeadms_message(tmp_path, tenant, root, capsys):  # noqa: F811
    config = _config(tmp_path, tenant, **UNKNOWN)
    document = yaml.safe_load(Path(config).read_text())
    assert kc.strict_decoding_error(document) is not None
    # keys in document order (safe_dump sorted them: discovery before nodeRegistration)
    assert ke.kubeadm_main(["config", "validate", "--config", config]) == 1
    assert STRICT in capsys.readouterr().err


def test_join_only_warns_on_unknown_fields_as_kubeadm_does(tmp_path, tenant, root, capsys):  # noqa: F811
    assert _join(tmp_path, tenant, **UNKNOWN) == 0
    assert STRICT in capsys.readouterr().err
    assert _node(tenant) is not None


@pytest.mark.parametrize("field", ["metadata", "discovery.timeout", "nodeRegistration.taints.0.tolerationSeconds"])
def test_fields_v1beta4_does_not_have_are_unknown(tmp_path, tenant, root, field):  # noqa: F811
    document = yaml.safe_load(Path(_config(tmp_path, tenant)).read_text())
    *parents, leaf = field.split(".")
    target = document
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    target[leaf] = 1
    error = kc.strict_decoding_error(document)
    assert error is not None and f'unknown field "{field.replace(".0.", "[0].")}"' in error


def test_every_field_the_roles_template_sets_is_known(tmp_path, tenant, root):  # noqa: F811
    config = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration", "caCertPath": "/x",
              "discovery": {"bootstrapToken": {"apiServerEndpoint": "a:1", "token": "t", "caCertHashes": ["h"],
                                               "unsafeSkipCAVerification": False}, "tlsBootstrapToken": "t"},
              "nodeRegistration": {"name": "n", "criSocket": "unix:///s", "imagePullPolicy": "IfNotPresent",
                                   "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}],
                                   "kubeletExtraArgs": [{"name": "node-labels", "value": "a=b"}]},
              "timeouts": {"discovery": "5m0s", "tlsBootstrap": "5m0s"}}
    assert kc.strict_decoding_error(config) is None
