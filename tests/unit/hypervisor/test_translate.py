"""libvirtError -> haagent.errors, checked on errors the real library raises."""

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt")

from haagent.errors import (HypervisorUnavailable, InvalidDomain, MigrationError,  # noqa: E402
                            OperationInvalid, VmNotFound)
from haagent.hypervisor.translate import translate  # noqa: E402
from haagent.hypervisor.libvirt_impl import ensure_event_loop  # noqa: E402

pytestmark = pytest.mark.libvirt


def raised(fn) -> "libvirt.libvirtError":
    with pytest.raises(libvirt.libvirtError) as ei:
        fn()
    return ei.value


@pytest.fixture(scope="module")
def conn():
    ensure_event_loop()  # also silences libvirt's default stderr error printer
    c = libvirt.open("test:///default")
    yield c
    c.close()


def test_not_found(conn):
    err = translate(raised(lambda: conn.lookupByName("nope")), "look up nope")
    assert isinstance(err, VmNotFound) and not err.transient
    assert str(err).startswith("look up nope: ")


def test_wrong_state_is_operation_invalid(conn):
    dom = conn.defineXML("<domain type='test'><name>hvt-u-err</name><memory>65536</memory>"
                         "<os><type>hvm</type></os></domain>")
    try:
        err = translate(raised(dom.destroy), "destroy hvt-u-err")  # it is not running
    finally:
        dom.undefine()
    assert isinstance(err, OperationInvalid) and not err.transient


def test_bad_xml_is_invalid_domain(conn):
    err = translate(raised(lambda: conn.defineXML("<domain type='test'><name>x</name></domain>")), "define")
    assert isinstance(err, InvalidDomain) and not err.transient


def test_unreachable_daemon_is_transient():
    err = translate(raised(lambda: libvirt.open("qemu+unix:///system?socket=/nonexistent/sock")), "connect")
    assert isinstance(err, HypervisorUnavailable) and err.transient


def test_unsupported_migration_on_test_driver(conn):
    dom = conn.lookupByName("test")
    e = raised(lambda: dom.migrateToURI3("test:///default", {}, libvirt.VIR_MIGRATE_PEER2PEER))
    err = translate(e, "migrate test", migration=True)
    # the test driver cannot migrate: a permanent "not supported", never a silent success
    assert isinstance(err, (InvalidDomain, MigrationError))
