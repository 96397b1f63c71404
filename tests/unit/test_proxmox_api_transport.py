"""PveClient (plugins/module_utils/proxmox_api.py) over proxmoxer's HTTPS backend, against the lab's Proxmox:
API-token auth, TLS verified against the lab CA, and each kind of failure mapped to the PveApiError the modules
classify (an API error with its message and parameter errors, TLS, no answer)."""

from __future__ import annotations

import socket

import pytest

from agentkube_lab.certs import LabCA
from agentkube_lab.pve_lab import PveLab, template_vmid
from agentkube_lab.pve_realism import Realism
from ansible_collections.agentkube.kamaji.plugins.module_utils.proxmox_api import PveApiError, PveClient


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with PveLab(tmp_path_factory.mktemp("pve-transport"), time_scale=0.002) as lab:
        yield lab


def client(lab: PveLab, **over) -> PveClient:
    args = dict(host=lab.host, port=lab.port, token_id=lab.token_id, token_secret=lab.token_secret,
                verify=lab.ca_file, timeout=5, retries=0, retry_delay=0.01)
    return PveClient(**(args | over))


def test_reads_with_the_token_over_verified_tls(lab):
    vmid = template_vmid("1.35")
    found = client(lab).find_vm(vmid)
    assert found and found["node"] == lab.nodes[0]
    assert client(lab).vm_config(found["node"], vmid)["template"] == 1


def test_a_wrong_token_secret_is_an_api_error_not_data(lab):
    with pytest.raises(PveApiError) as err:
        client(lab, token_secret="0" * 32).cluster_vms()
    assert err.value.status == 401


def test_an_api_error_carries_the_message_and_the_parameter_errors(lab):
    vmid = template_vmid("1.35")
    with pytest.raises(PveApiError) as err:
        client(lab).put(f"/nodes/{lab.nodes[0]}/qemu/{vmid}/config", cores="many")
    assert err.value.status == 400
    assert "cores" in err.value.message, err.value.message  # the field PVE names
    with pytest.raises(PveApiError) as err:
        client(lab).vm_config(lab.nodes[0], 99999)
    assert err.value.missing, err.value.message


def test_a_certificate_from_another_ca_fails_verification(lab, tmp_path):
    other = LabCA(tmp_path / "other-ca").issue("other")
    with pytest.raises(PveApiError) as err:
        client(lab, verify=str(other.ca_file)).cluster_vms()
    assert err.value.status == 0 and "TLS verification failed" in err.value.message


def test_no_answer_is_unanswered():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(PveApiError) as err:
        PveClient("127.0.0.1", port, "agent@pve!t", "x", timeout=2).cluster_vms()
    assert err.value.unanswered


def test_a_token_id_without_its_name_is_refused():
    with pytest.raises(ValueError, match="user@realm!tokenname"):
        PveClient("127.0.0.1", 8006, "agent@pve", "x")


def test_a_token_that_cannot_audit_every_vm_is_refused_before_listing(tmp_path):
    """VM.Audit on a pool only: /cluster/resources would hide the other VMs from the allocator."""
    with PveLab(tmp_path / "lab", time_scale=0.002, realism=Realism(least_privilege=True)) as lab:
        assert client(lab).cluster_vms()  # the documented privileges: VM.Audit on /vms
        acl = lab.fake.acl[lab.token_id]
        acl[:] = [(path, privs - {"VM.Audit"}) if path == "/vms" else (path, privs) for path, privs in acl]
        lab.fake.grant(lab.token_id, "/pool/tenants", "VM.Audit")
        with pytest.raises(PveApiError) as err:
            client(lab).cluster_vms()
    assert err.value.status == 403
    assert "VM.Audit on /vms" in err.value.message and lab.token_id in err.value.message
