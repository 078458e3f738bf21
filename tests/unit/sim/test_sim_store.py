"""What only the model store does (the rest is the store contract, tests/contract/store): quorum
loss on the virtual clock."""

from __future__ import annotations

import pytest

from haagent.sim.store import NoQuorum, SimStore


def test_without_quorum_nothing_succeeds_and_leases_are_extended_when_it_returns():
    now = [0.0]
    s = SimStore(clock=lambda: now[0])
    lease, _ = s.grant(3.0)
    s.put("alive", "x", lease)
    now[0] = 1.0
    s.set_quorum(False)
    for call in (lambda: s.put("k", "v"), lambda: s.get("alive"), lambda: s.refresh(lease),
                 lambda: s.grant(3.0), lambda: s.get_prefix(""), lambda: s.revision()):
        with pytest.raises(NoQuorum):
            call()
    now[0] = 10.0
    assert s.expire() == []  # no etcd leader, no expiry
    s.set_quorum(True)
    now[0] = 12.9
    assert s.expire() == [] and s.get("alive") is not None  # a new leader restarts every TTL
    now[0] = 13.0
    assert s.expire() == [lease]
