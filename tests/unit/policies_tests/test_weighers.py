"""Weighers return raw numbers (higher is better); the pipeline normalises them."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.filters import Context
from policies.model import Group, HostAffinity
from policies.state import ClusterState
from policies.weighers import LoadWeigher, NumaFragmentationWeigher, SoftAffinityWeigher


def setup(build, hosts, vms, new, config=PolicyConfig(), groups=()):
    state = ClusterState(build.cluster(hosts, vms, groups), config, leave_out=[new.name])
    return state, state.req(new)


def test_load_weigher_spread_prefers_the_emptier_host_pack_the_fuller(build):
    hosts = [build.host("a"), build.host("b")]
    vms = [build.vm("t", 8, 32768, host="a")]
    for strategy, better in (("spread", "b"), ("pack", "a")):
        state, req = setup(build, hosts, vms, build.vm("x"), PolicyConfig(strategy=strategy))
        w = LoadWeigher()
        raw = {h.name: w.raw(h, req, Context(), state) for h in state.hosts}
        assert max(raw, key=raw.get) == better
        assert w.raw_all(state.hosts, req, Context(), state) == [raw["a"], raw["b"]]


def test_load_weigher_uses_measured_host_load(build):
    hosts = [build.host("a", cpu_used=14.0), build.host("b", cpu_used=1.0)]
    state, req = setup(build, hosts, [], build.vm("x"))
    w = LoadWeigher()
    assert w.raw(state.by_name["b"], req, Context(), state) > w.raw(state.by_name["a"], req,
                                                                    Context(), state)


def test_numa_fragmentation_prefers_one_cell_and_best_fit(build):
    # a: one cell half full (the VM fits it exactly); b: empty. Best fit keeps b's cells whole.
    hosts = [build.host("a"), build.host("b")]
    tenant = build.vm("t", 4, 16384, host="a", numa="strict", numa_cells=(0,))
    state, req = setup(build, hosts, [tenant], build.vm("x", 4, 16384, numa="strict"))
    w = NumaFragmentationWeigher()
    a, b = (w.raw(state.by_name[n], req, Context(), state) for n in "ab")
    assert a == b  # both keep one whole cell free
    # A VM that must span two cells scores lower than one that fits in one.
    state, wide = setup(build, [build.host("c")], [], build.vm("w", 12, 40000, numa="preferred"))
    assert w.raw(state.by_name["c"], wide, Context(), state) < 0


def test_soft_affinity_counts_group_mates_and_preferred_hosts(build):
    groups = [Group("web", "anti-affinity", False), Group("cache", "affinity", False)]
    hosts = [build.host("a"), build.host("b"), build.host("c")]
    vms = [build.vm("web1", host="a", groups=("web",)), build.vm("c1", host="b", groups=("cache",))]
    new = build.vm("x", groups=("web", "cache"), host_affinity=HostAffinity(frozenset({"c"}), False))
    state, req = setup(build, hosts, vms, new, groups=groups)
    w = SoftAffinityWeigher()
    raw = {h.name: w.raw(h, req, Context(), state) for h in state.hosts}
    assert raw == {"a": -1.0, "b": 1.0, "c": 1.0}
    assert w.raw_all(state.hosts, req, Context(), state) == [-1.0, 1.0, 1.0]


def test_naming_convention_gives_soft_anti_affinity(build):
    hosts = [build.host("a"), build.host("b")]
    state, req = setup(build, hosts, [build.vm("acme-prod-api-gateway-1", host="a")],
                       build.vm("acme-prod-api-gateway-2"))
    w = SoftAffinityWeigher()
    assert w.raw(state.by_name["a"], req, Context(), state) == -1.0
    assert w.raw(state.by_name["b"], req, Context(), state) == 0.0
