"""A step past etcd's transaction limit is split per host, the hosts being fenced first."""

from __future__ import annotations

from haagent.manager.shell import MAX_TXN_OPS, _split
from haagent.model import HostState as S
from haagent.state.codec import action_compares, action_ops
from haagent.state.view import ClusterView, Event, FenceHost, JournalStep, OpStep, SetHostState, SetPlacement
from haagent.store.keys import Keys

K = Keys("c")


def test_parts_keep_each_hosts_actions_together_and_fences_with_their_conditions_first():
    view = ClusterView(7, {}, {}, {}, {}, {}, ())
    actions: list = []
    for i in range(100):  # 100 hosts turning suspect, each with an event
        actions += [SetHostState(f"a{i:03d}", S.ACTIVE, S.SUSPECT, "lease lost"), Event("host_suspect", f"a{i:03d}")]
    # one host being fenced, late in the list, with its journal and a VM placed by its failover
    actions += [SetHostState("z", S.SUSPECT, S.FENCING, "fence"),
                JournalStep("op-z", "z", OpStep("fence_start", 1.0, {})), FenceHost("z", "op-z", 1),
                SetPlacement("vm1", "a001", "op-z", "recovery from z")]
    count = lambda part: len(action_ops(part, view, K, 0.0))  # noqa: E731
    parts = _split(actions, view, count)
    assert len(parts) > 1 and all(count(p) <= MAX_TXN_OPS for p in parts)
    assert sorted(map(repr, (a for p in parts for a in p))) == sorted(map(repr, actions))
    first = parts[0]
    assert [a for a in first if getattr(a, "op", "") == "op-z" or getattr(a, "host", "") == "z"] == actions[-4:]
    assert action_compares(first, K) and not any(action_compares(p, K) for p in parts[1:])
    for i in range(100):  # a host's state and its event never land in different parts
        host = f"a{i:03d}"
        assert len({n for n, p in enumerate(parts) for a in p if getattr(a, "host", "") == host
                    and not isinstance(a, SetPlacement)}) == 1
