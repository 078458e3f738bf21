"""One test per filter decision: fits (None) or does not fit (a reason naming the cause)."""

from __future__ import annotations

import pytest

from policies.config import PolicyConfig
from policies.filters import (MIGRATE, RESTART, AffinityFilter, CapacityFilter, Context,
                              HostAffinityFilter, HostStateFilter, MigrationFilter, NumaFilter,
                              ReserveFilter, TagsFilter)
from policies.model import Group, HostAffinity
from policies.state import ClusterState


def setup(build, hosts, vms, new, config=PolicyConfig(), groups=()):
    state = ClusterState(build.cluster(hosts, vms, groups), config, leave_out=[new.name])
    return state, state.req(new)


def test_state_filter_accepts_active_rejects_others_and_drained(build):
    state, req = setup(build, [build.host("a"), build.host("b", state="maintenance")], [],
                       build.vm("x"))
    f = HostStateFilter()
    assert f.check(state.by_name["a"], req, Context(), state) is None
    assert "maintenance" in f.check(state.by_name["b"], req, Context(), state)
    assert "drained" in f.check(state.by_name["a"], req, Context(MIGRATE, frozenset({"a"})), state)
    assert f.filter_all(state.hosts, req, Context(), state) == [state.by_name["a"]]


def test_tags_filter_names_missing_tags(build):
    state, req = setup(build, [build.host("a", tags=frozenset({"ssd"}))], [],
                       build.vm("x", required_tags=frozenset({"ssd", "gpu"})))
    assert TagsFilter().check(state.by_name["a"], req, Context(), state) == "missing tags: gpu"
    assert TagsFilter().applies(req, Context(), state)
    _, plain = setup(build, [build.host("a")], [], build.vm("y"))
    assert not TagsFilter().applies(plain, Context(), state)


def test_migration_filter_needs_same_cpu_family_and_migratable(build):
    hosts = [build.host("a", cpu_family="skylake"), build.host("b", cpu_family="skylake"),
             build.host("c", cpu_family="zen3")]
    state, req = setup(build, hosts, [], build.vm("x", host="a"))
    f, ctx = MigrationFilter(), Context(MIGRATE)
    assert f.check(state.by_name["b"], req, ctx, state) is None
    assert "differs" in f.check(state.by_name["c"], req, ctx, state)
    assert not f.applies(req, Context(RESTART), state)  # a restart needs no compatible cpu
    state, pinned = setup(build, hosts, [], build.vm("y", host="a", migratable=False))
    assert "cannot live-migrate" in f.check(state.by_name["b"], pinned, ctx, state)


@pytest.mark.parametrize("vcpus,memory,ratio,fits", [
    (8, 4096, 1.0, True),    # 8 of 16 cpus left after the 8-vcpu tenant
    (9, 4096, 1.0, False),   # one vcpu too many without overcommit
    (40, 4096, 3.0, True),   # 48 vcpus allowed at 3:1
    (2, 40000, 1.0, False),  # memory: 32768 used of 65536
])
def test_capacity_filter_with_overcommit(build, vcpus, memory, ratio, fits):
    tenant = build.vm("t", 8, 32768, host="a")
    state, req = setup(build, [build.host("a")], [tenant], build.vm("x", vcpus, memory),
                       PolicyConfig(cpu_overcommit=ratio))
    reason = CapacityFilter().check(state.by_name["a"], req, Context(), state)
    assert (reason is None) == fits
    assert (CapacityFilter().filter_all(state.hosts, req, Context(), state) != []) == fits


def test_capacity_filter_memory_overcommit_defaults_to_one(build):
    assert PolicyConfig().memory_overcommit == 1.0
    tenant = build.vm("t", 1, 60000, host="a")
    state, req = setup(build, [build.host("a")], [tenant], build.vm("x", 1, 8192),
                       PolicyConfig(memory_overcommit=1.5))
    assert CapacityFilter().check(state.by_name["a"], req, Context(), state) is None


def test_capacity_filter_pinned_cpus_are_not_overcommitted(build):
    pinned = build.vm("p", 12, 1024, host="a", dedicated_cpus=12)
    state, req = setup(build, [build.host("a")], [pinned], build.vm("x", 16, 1024),
                       PolicyConfig(cpu_overcommit=4))
    assert CapacityFilter().check(state.by_name["a"], req, Context(), state) is None  # 4 cpus x 4
    state, req = setup(build, [build.host("a")], [pinned], build.vm("x", 17, 1024),
                       PolicyConfig(cpu_overcommit=4))
    assert "needs 17 vcpus" in CapacityFilter().check(state.by_name["a"], req, Context(), state)


def test_numa_filter_strict_needs_one_cell(build):
    # Two cells of 8 cpus / 32 GiB; a tenant strictly in each leaves 20 GiB free per cell.
    tenants = [build.vm("t0", 2, 12288, host="a", numa="strict", numa_cells=(0,)),
               build.vm("t1", 2, 12288, host="a", numa="strict", numa_cells=(1,))]
    state, fits = setup(build, [build.host("a")], tenants, build.vm("x", 4, 20480, numa="strict"))
    assert NumaFilter().check(state.by_name["a"], fits, Context(), state) is None
    state, big = setup(build, [build.host("a")], tenants, build.vm("x", 4, 24576, numa="strict"))
    reason = NumaFilter().check(state.by_name["a"], big, Context(), state)
    assert reason and "24576 MiB" in reason  # 40 GiB free in total, but not in one cell


def test_numa_filter_hugepages_per_cell(build):
    h = build.host("a", hugepages={2048: 1024})  # 2 GiB of 2 MiB pages in each cell
    state, ok = setup(build, [h], [], build.vm("x", 2, 2048, hugepage_size_kib=2048,
                                              hugepage_count=1024))
    assert NumaFilter().check(state.by_name["a"], ok, Context(), state) is None
    state, wrong = setup(build, [h], [], build.vm("x", 2, 2048, hugepage_size_kib=1048576,
                                                 hugepage_count=2))
    assert "hugepages" in NumaFilter().check(state.by_name["a"], wrong, Context(), state)


def test_affinity_filter_hard_anti_affinity_and_affinity(build):
    groups = [Group("db", "anti-affinity", True), Group("app", "affinity", True)]
    hosts = [build.host("a"), build.host("b")]
    vms = [build.vm("db1", host="a", groups=("db",)), build.vm("app1", host="b", groups=("app",))]
    state, db2 = setup(build, hosts, vms, build.vm("db2", groups=("db",)), groups=groups)
    f = AffinityFilter()
    assert "already has db1" in f.check(state.by_name["a"], db2, Context(), state)
    assert f.check(state.by_name["b"], db2, Context(), state) is None
    state, app2 = setup(build, hosts, vms, build.vm("app2", groups=("app",)), groups=groups)
    assert "runs on b" in f.check(state.by_name["a"], app2, Context(), state)
    assert f.check(state.by_name["b"], app2, Context(), state) is None


def test_naming_convention_hard_anti_affinity_when_configured(build):
    from policies.config import NamingPolicy
    cfg = PolicyConfig(naming=NamingPolicy(service_anti_affinity="hard"))
    state, req = setup(build, [build.host("a")], [build.vm("acme-prod-web-1", host="a")],
                       build.vm("acme-prod-web-2"), cfg)
    assert "acme-prod-web-1" in AffinityFilter().check(state.by_name["a"], req, Context(), state)


def test_host_affinity_filter_hard_only(build):
    hosts = [build.host("a"), build.host("b")]
    state, req = setup(build, hosts, [], build.vm("x", host_affinity=HostAffinity(frozenset({"b"}))))
    f = HostAffinityFilter()
    assert "not one of" in f.check(state.by_name["a"], req, Context(), state)
    assert f.check(state.by_name["b"], req, Context(), state) is None
    state, soft = setup(build, hosts, [], build.vm("y", host_affinity=HostAffinity(frozenset({"b"}),
                                                                                   hard=False)))
    assert not f.applies(soft, Context(), state)


def test_reserve_filter_keeps_room_for_failover_but_restarts_may_use_it(build):
    cfg = PolicyConfig(reserve_memory=0.25)
    tenant = build.vm("t", 2, 40960, host="a")
    state, req = setup(build, [build.host("a")], [tenant], build.vm("x", 2, 16384, host="b"), cfg)
    f = ReserveFilter()
    assert "reserved for failover" in f.check(state.by_name["a"], req, Context(MIGRATE), state)
    assert not f.applies(req, Context(RESTART), state)
