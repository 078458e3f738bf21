"""A fence is dispatched as soon as the transaction that journals its start has committed, before
the shell waits for its watch to bring that write back."""

from __future__ import annotations

from haagent.manager import core
from haagent.manager.shell import LeaderShell
from haagent.model import HostState as S
from haagent.state.view import ClusterView, HostView
from haagent.store.keys import Keys


class Store:
    def __init__(self, calls: list):
        self.calls = calls

    def epoch(self):
        return 4

    def view(self):
        hosts = {"h1": HostView("h1", False, S.SUSPECT, failover="f1"), "h2": HostView("h2", True, S.ACTIVE),
                 "h3": HostView("h3", True, S.ACTIVE)}
        return ClusterView(0, hosts, {}, {})

    def write(self, ops, compares):
        self.calls.append(("write", len(ops), len(compares)))
        return 42

    def caught_up(self, revision):
        self.calls.append(("caught_up", revision))
        return True

    def events_lease(self):
        return None


class Fences:
    def __init__(self, calls: list):
        self.calls = calls

    def start(self, action, cancel, done):
        self.calls.append(("fence", action.host))

    def read_power(self, action, done):
        self.calls.append(("read", action.host))


def test_the_fence_goes_out_before_the_shell_waits_for_its_own_write():
    calls: list = []
    cfg = core.ManagerConfig(fence_delay=0.0, new_leader_grace=0.0)
    shell = LeaderShell(Keys("c"), cfg, lambda todo, view, avoid: ({}, {}), Store(calls), Fences(calls),
                        clock=lambda: 100.0, wall=lambda: 1e9, sink=lambda event, fields: None)
    shell.tick()
    kinds = [c[0] for c in calls]
    assert kinds == ["write", "fence", "caught_up"], calls
    assert calls[0][2] == 1  # the write held only while h1 had no lease
