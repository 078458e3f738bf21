"""The HA mark in domain XML, and setting it through the hypervisor port on the test driver."""

from __future__ import annotations

import pytest

from haagent.agent.managed import NS, PREFIX, HaMark, parse_mark, validate, with_mark
from haagent.errors import InvalidDomain

XML = "<domain type='qemu'><name>acme-prod-db-1</name><memory>65536</memory></domain>"


def test_roundtrip_and_removal():
    marked = with_mark(XML, HaMark(10, "migrate"))
    assert parse_mark(marked) == HaMark(10, "migrate")
    assert parse_mark(with_mark(marked, None)) is None
    assert parse_mark(XML) is None


def test_priority_is_optional():
    marked = with_mark(XML, HaMark(None, "restart"))
    assert "priority" not in marked and parse_mark(marked) == HaMark(None, "restart")


@pytest.mark.parametrize("priority,policy,message", [
    (5, "reboot", "policy must be one of restart, migrate, none (got 'reboot')"),
    (5000, "restart", "priority must be between -1000 and 1000 (got 5000)"),
])
def test_bad_mark_is_a_clear_error(priority, policy, message):
    with pytest.raises(InvalidDomain, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(priority, policy)


def test_malformed_xml_is_a_clear_error():
    with pytest.raises(InvalidDomain, match="malformed domain XML"):
        parse_mark("<domain><name>x</name>")


def test_set_mark_live_through_libvirt_test_driver():
    pytest.importorskip("libvirt")
    from haagent.hypervisor.libvirt_impl import LibvirtHypervisor

    hv = LibvirtHypervisor("test:///default")
    try:
        vm = hv.list_vms()[0]
        hv.set_metadata(vm.uuid, NS, PREFIX, HaMark(7, "restart").element())
        assert parse_mark(hv.vm_xml(vm.uuid)) == HaMark(7, "restart")
        hv.set_metadata(vm.uuid, NS, PREFIX, None)
        assert parse_mark(hv.vm_xml(vm.uuid)) is None
    finally:
        hv.close()
