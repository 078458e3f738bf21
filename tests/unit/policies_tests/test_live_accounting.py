"""How the engine accounts memory on the live cluster: measured cell use, unbound VMs drawn from
the freest cells (``unbound_memory = "spread"``), and the water level they share."""

from __future__ import annotations

import pytest

from haagent.model import water_fill
from policies import Cluster, Host, NumaCell, Vm, place


@pytest.mark.parametrize("free, amount, taken", [
    ([1024, 6144], 2048, [0, 2048]),  # the freest cell gives it all while it stays the freest
    ([1024, 1024], 1024, [512, 512]),
    ([500, 300], 100, [100, 0]),
    ([100, 200], 500, [200, 300]),  # beyond all that is free: the rest shared evenly
])
def test_water_fill_takes_from_the_freest_cells_first(free, amount, taken):
    assert water_fill(free, amount) == pytest.approx(taken)
    assert sum(water_fill(free, amount)) == pytest.approx(amount)


def test_water_fill_depends_only_on_the_total():
    free = [700.0, 1500.0, 300.0]
    first = water_fill(free, 400)
    second = water_fill([f - t for f, t in zip(free, first)], 600)
    assert [a + b for a, b in zip(first, second)] == pytest.approx(water_fill(free, 1000))


def cluster(unbound: str) -> Cluster:
    # One host, two cells: cell 0 has 1 GiB free (3 GiB in use), cell 1 4 GiB free.
    h = Host("h1", 8, 8192, numa=(NumaCell(0, 4, 4096, memory_used_mib=3072), NumaCell(1, 4, 4096)))
    return Cluster(hosts=(h,), unbound_memory=unbound)


def test_a_strict_vm_placed_after_an_unbound_one_sees_what_the_unbound_one_left():
    big = Vm("acme-prod-big-1", 1, 3072, priority=100)  # unbound, placed first (priority)
    strict = Vm("acme-prod-db-1", 1, 1024, numa="strict", nodeset=(0,), priority=0)
    spread = place([big, strict], cluster("spread"))
    # 3 GiB drawn where most is free leaves both cells at 1 GiB: db fits cell 0.
    assert {p.vm for p in spread.placements} == {"acme-prod-big-1", "acme-prod-db-1"}
    bigger = Vm("acme-prod-big-1", 1, 4096 + 512, priority=100)  # now cell 0 must give some too
    spread = place([bigger, strict], cluster("spread"))
    assert [u.vm for u in spread.unplaceable] == ["acme-prod-db-1"]
    host_level = place([bigger, strict], cluster("host"))  # the cluster file's default ignores it
    assert not host_level.unplaceable
