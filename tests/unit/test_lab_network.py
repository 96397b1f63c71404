"""Each lab that boots worker VMs claims a /24 of 127.0.0.0/8 of its own (lab_guest_machines.LabNetwork), so two labs
on one machine never put sshds at the same addresses."""

from __future__ import annotations

import ipaddress
import random

from agentkube_lab.lab_guest_machines import LabNetwork


def test_a_claimed_network_is_not_handed_out_again_until_released(tmp_path, monkeypatch):
    monkeypatch.setattr(LabNetwork, "LOCK_DIR", tmp_path)
    first = LabNetwork(random.Random(7))
    second = LabNetwork(random.Random(7))  # the same candidates, in the same order
    try:
        assert first.prefix != second.prefix
        for net in (first, second):
            assert ipaddress.ip_network(f"{net.prefix}.0/24").subnet_of(ipaddress.ip_network("127.0.0.0/8"))
            assert not net.prefix.startswith("127.0.")  # left to the fixed test addresses
        first.release()
        again = LabNetwork(random.Random(7))
        assert again.prefix == first.prefix
        again.release()
    finally:
        second.release()
