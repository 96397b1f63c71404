"""The roles' identity filters (plugins/filter/agentkube_filters.py): whether a tenant name belongs to
a service, the tenant name derived with a one-line error, and the TCPs whose service-id label is exactly the
service's."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from unit_support import playbook_filters

from agentkube.core.naming import tenant_name

SERVICE = "3f2c8a8e-1d2b-4c55-9a0e-0b4f7b1c9d21"
OTHER = "9d1e7f00-2a3b-4c5d-8e9f-001122334455"


@pytest.fixture(scope="module")
def filters():
    return playbook_filters("agentkube_filters_security")


def test_a_derived_or_recorded_name_of_the_service_belongs(filters):
    belongs = filters["agentkube_tenant_name_belongs"]
    assert belongs(tenant_name("Shop", SERVICE), SERVICE)
    assert belongs(tenant_name("The name before a rename", SERVICE), SERVICE)
    assert belongs(tenant_name("42 things", SERVICE), SERVICE)  # digit first: t- prefix, still DNS-1035


@pytest.mark.parametrize("name", [
    tenant_name("Shop", OTHER),                      # another service's suffix
    tenant_name("Shop", SERVICE) + "\n",            # a trailing newline is not a whole-string match
    tenant_name("Shop", SERVICE).upper(),
    "1" + tenant_name("Shop", SERVICE),             # DNS-1035: starts with a letter
    "a" * 40 + "-" + tenant_name("x", SERVICE)[-6:],  # too long for the workers' names
    tenant_name("x", SERVICE)[-6:],                  # the suffix alone
    "{{ lookup('pipe', 'id') }}-" + tenant_name("x", SERVICE)[-6:],
    None, 42, {"name": tenant_name("Shop", SERVICE)}, "",
])
def test_anything_else_does_not_belong(filters, name):
    assert filters["agentkube_tenant_name_belongs"](name, SERVICE) is False


def test_no_name_belongs_to_an_empty_or_missing_service_id(filters):
    name = tenant_name("Shop", SERVICE)
    assert filters["agentkube_tenant_name_belongs"](name, "") is False
    assert filters["agentkube_tenant_name_belongs"](name, None) is False


def test_the_derived_name_filter_names_the_field_it_cannot_use(filters):
    derive = filters["agentkube_tenant_name"]
    assert derive("Shop", SERVICE) == tenant_name("Shop", SERVICE)
    with pytest.raises(AnsibleFilterError, match=r"^agentkube_service\.name: "):
        derive("bell \x07", SERVICE)
    with pytest.raises(AnsibleFilterError, match=r"^agentkube_service\.name: "):
        derive("", SERVICE)
    with pytest.raises(AnsibleFilterError, match=r"^agentkube_service\.id: "):
        derive("Shop", "")


def _tcp(name: str, labels: dict | None) -> dict:
    return {"metadata": {"name": name, **({"labels": labels} if labels is not None else {})}}


def test_only_tcps_labelled_exactly_with_the_service_id_are_the_services(filters):
    of_service = filters["agentkube_tcps_of_service"]
    mine = _tcp("shop-abc123", {"agentkube.io/service-id": SERVICE})
    resources = [
        mine,
        _tcp("other", {"agentkube.io/service-id": OTHER}),
        _tcp("prefix", {"agentkube.io/service-id": SERVICE + "x"}),
        _tcp("unlabelled", None),
        _tcp("null-labels", {}),
        {"metadata": None},
        "not a mapping",
    ]
    assert of_service(resources, SERVICE) == [mine]
    assert of_service(resources, "") == []
    assert of_service(None, SERVICE) == []
