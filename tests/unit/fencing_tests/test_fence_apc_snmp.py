"""The apc_snmp plugin reads "off" only from an INTEGER 2 answered for the outlet it asked about."""

from __future__ import annotations

import pytest
from pysnmp.proto import rfc1902, rfc1905

from fencing.plugin import FenceBadReply
from fencing.plugins.apc_snmp import OUTLET_CTL, ApcSnmpPlugin
from haagent.errors import FenceDeviceError

OID = f"{OUTLET_CTL}.3"


def answer(value, oid=OID):
    return [(rfc1902.ObjectName(oid), value)]


def test_an_integer_for_the_outlet_asked_is_its_state():
    assert ApcSnmpPlugin._outlet_state("pdu", OID, answer(rfc1902.Integer32(2))) == 2
    assert ApcSnmpPlugin._outlet_state("pdu", OID, answer(rfc1902.Integer(1))) == 1


@pytest.mark.parametrize("var_binds, why", [
    ([], "no value"),
    (answer(rfc1902.OctetString("2")), "not an outlet state"),
    (answer(rfc1902.OctetString("")), "not an outlet state"),
    (answer(rfc1902.Gauge32(2)), "not an outlet state"),
    (answer(rfc1902.Integer32(2), oid=f"{OUTLET_CTL}.4"), "not for the outlet asked"),
])
def test_anything_else_is_a_transient_bad_reply(var_binds, why):
    with pytest.raises(FenceBadReply, match=why) as err:
        ApcSnmpPlugin._outlet_state("pdu", OID, var_binds)
    assert err.value.transient


@pytest.mark.parametrize("value", [rfc1905.noSuchInstance, rfc1905.noSuchObject, rfc1905.endOfMibView])
def test_a_missing_outlet_is_a_permanent_device_error(value):
    with pytest.raises(FenceDeviceError, match="no such outlet") as err:
        ApcSnmpPlugin._outlet_state("pdu", OID, answer(value))
    assert not err.value.transient


@pytest.mark.parametrize("state", [0, 3, 4, -1])
def test_a_state_other_than_on_or_off_is_never_off(monkeypatch, state):
    plugin = ApcSnmpPlugin("pdu", "kvm01", {"address": "127.0.0.1", "outlet": 3})
    monkeypatch.setattr(plugin, "_request", lambda timeout, value: state)
    with pytest.raises(FenceBadReply, match=f"unexpected outlet state {state}"):
        plugin.status(1.0)
