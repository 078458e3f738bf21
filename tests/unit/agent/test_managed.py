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


def test_the_mark_carries_the_vms_own_migration_tuning():
    mark = validate(None, "migrate", (), {"bandwidth_cap": 50, "postcopy": True})
    marked = with_mark(XML, mark)
    assert 'migration="bandwidth_cap=50,postcopy=true"' in marked
    assert parse_mark(marked) == mark and mark.migration == (("bandwidth_cap", 50), ("postcopy", True))
    with pytest.raises(InvalidDomain, match=r"migration max_downtime_ms: must be between 0 and 3600000"):
        validate(None, "restart", (), {"max_downtime_ms": -1})
    # a damaged tuning attribute drops only the tuning: the VM stays managed with its priority
    damaged = marked.replace("bandwidth_cap=50", "bandwidth_cap=fast")
    assert parse_mark(damaged) == HaMark(None, "migrate")


def test_vm_manage_refuses_bad_tuning_in_one_line_before_touching_libvirt(tmp_path):
    from click.testing import CliRunner

    from haagent.cli import main

    cfg = tmp_path / "haagent.toml"
    cfg.write_text('cluster = "c"\nhost = "h1"\n[etcd]\nendpoints = ["http://127.0.0.1:1"]\n[metrics]\nlisten = ""\n')
    res = CliRunner().invoke(main, ["vm", "manage", "web-1", "--migration-bandwidth-cap", "-5", "--config", str(cfg)])
    assert res.exit_code == 2
    assert res.output.strip() == "haagent: migration bandwidth_cap: must be between 0 and 100000 (0: no cap; got -5)"
