"""NUMA fit: strict in one cell (or N for a VM wider than a cell), preferred, pinned, hugepages."""

from __future__ import annotations

from policies import numa
from policies.config import PolicyConfig
from policies.state import ClusterState


def fit(build, new, tenants=(), **host_kw):
    state = ClusterState(build.cluster([build.host("a", **host_kw)], tenants), PolicyConfig(),
                         leave_out=[new.name])
    hs = state.by_name["a"]
    return numa.fit(state.req(new), hs.cells, state.cpu_ratio)


def test_strict_small_vm_takes_one_cell(build):
    assert fit(build, build.vm("x", 4, 8192, numa="strict")) == (0,)


def test_strict_best_fit_picks_the_fuller_cell(build):
    tenant = build.vm("t", 2, 8192, host="a", numa="strict", numa_cells=(1,))
    assert fit(build, build.vm("x", 2, 8192, numa="strict"), [tenant]) == (1,)


def test_strict_vm_wider_than_a_cell_spans_two(build):
    assert fit(build, build.vm("x", 12, 40000, numa="strict")) == (0, 1)


def test_strict_never_spreads_because_cells_are_busy(build):
    tenants = [build.vm("t0", 1, 20000, host="a", numa="strict", numa_cells=(0,)),
               build.vm("t1", 1, 20000, host="a", numa="strict", numa_cells=(1,))]
    # 12768 MiB free per cell: a 16 GiB VM fits an empty cell, so strict will not split it.
    assert fit(build, build.vm("x", 2, 16384, numa="strict"), tenants) is None


def test_preferred_spreads_then_runs_unbound(build):
    tenants = [build.vm("t0", 1, 20000, host="a", numa="strict", numa_cells=(0,)),
               build.vm("t1", 1, 20000, host="a", numa="strict", numa_cells=(1,))]
    assert fit(build, build.vm("x", 2, 16384, numa="preferred"), tenants) == (0, 1)
    assert fit(build, build.vm("y", 2, 30000, numa="preferred"), tenants) == ()


def test_none_without_pinning_is_unbound(build):
    assert fit(build, build.vm("x", 2, 4096)) == ()


def test_pinned_cpus_bind_cells_and_are_whole_cpus(build):
    assert fit(build, build.vm("x", 8, 4096, dedicated_cpus=8)) == (0,)
    tenant = build.vm("t", 6, 1024, host="a", dedicated_cpus=6, numa_cells=(0,))
    assert fit(build, build.vm("x", 4, 1024, dedicated_cpus=4), [tenant]) == (1,)
    assert fit(build, build.vm("x", 4, 1024, dedicated_cpus=4, numa="strict"),
               [tenant, build.vm("u", 6, 1024, host="a", dedicated_cpus=6, numa_cells=(1,))]) is None


def test_hugepages_come_from_one_size_pool(build):
    pages = {2048: 2048}
    assert fit(build, build.vm("x", 2, 4096, hugepage_size_kib=2048, hugepage_count=2048),
               hugepages=pages) == (0,)
    assert fit(build, build.vm("x", 2, 4096, hugepage_size_kib=2048, hugepage_count=2048,
                               numa="strict"), hugepages={}) is None


def test_host_without_numa_report_counts_as_one_cell(build):
    assert fit(build, build.vm("x", 4, 8192, numa="strict"), cells=0) == (0,)


def test_explain_misfit_names_the_largest_free_cell(build):
    state = ClusterState(build.cluster([build.host("a")]), PolicyConfig())
    req = state.req(build.vm("x", 32, 4096, numa="strict"))
    text = numa.explain_misfit(req, state.by_name["a"].cells, 1.0)
    assert "32 vcpus" in text
