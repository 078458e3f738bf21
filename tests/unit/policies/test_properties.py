"""Properties over random clusters: no plan breaks capacity, NUMA or hard rules; rebalance never
raises the score; the same input gives the same answer. Checked by an independent recount."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import place, rebalance
from policies.config import PolicyConfig
from policies.model import Cluster, Group, Host, NumaCell, Vm
from policies.rebalance import score

RATIO = 2.0
CONFIG = PolicyConfig(cpu_overcommit=RATIO)
GROUPS = (Group("anti", "anti-affinity", True), Group("aff", "affinity", True),
          Group("soft", "anti-affinity", False))


@st.composite
def clusters(draw):
    n_hosts = draw(st.integers(2, 5))
    hosts = []
    for i in range(n_hosts):
        cells = draw(st.integers(1, 2))
        per_cpu, per_mem = draw(st.sampled_from([4, 8])), draw(st.sampled_from([8192, 16384]))
        pages = draw(st.sampled_from([{}, {2048: 1024}]))
        hosts.append(Host(f"h{i}", per_cpu * cells, per_mem * cells,
                          tuple(NumaCell(c, per_cpu, per_mem, pages) for c in range(cells)),
                          cpu_family="x"))
    vms = []
    for j in range(draw(st.integers(1, 14))):
        vcpus = draw(st.integers(1, 6))
        mem = draw(st.sampled_from([1024, 2048, 4096, 8192]))
        kind = draw(st.sampled_from(["plain", "strict", "preferred", "pinned", "huge"]))
        kw: dict = {}
        if kind in ("strict", "preferred"):
            kw["numa"] = kind
        elif kind == "pinned":
            kw["dedicated_cpus"] = vcpus
            kw["numa"] = "strict"
        elif kind == "huge":
            kw.update(hugepage_size_kib=2048, hugepage_count=mem // 2, numa="strict")
        groups = draw(st.sampled_from([(), ("anti",), ("aff",), ("soft",)]))
        vms.append(Vm(f"acme-prod-svc-{j}" if j % 3 == 0 else f"vm{j}", vcpus, mem, None,
                      groups=groups, priority=draw(st.integers(0, 2)), **kw))
    return Cluster(tuple(hosts), tuple(vms), GROUPS)


def check_invariants(cluster: Cluster, where: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Recount every host and cell from scratch and assert every hard rule."""
    hosts = {h.name: h for h in cluster.hosts}
    vms = {v.name: v for v in cluster.vms}
    for h in cluster.hosts:
        mine = [vms[n] for n, (host, _) in where.items() if host == h.name]
        dedicated = sum(v.dedicated_cpus for v in mine)
        shared = sum(v.vcpus - v.dedicated_cpus for v in mine)
        normal = sum(v.memory_mib for v in mine if not v.hugepage_count)
        assert dedicated <= h.cpus
        assert shared <= (h.cpus - dedicated) * RATIO + 1e-9
        assert normal <= h.memory_mib - h.hugepage_mib
        for c in h.numa:
            parts = []
            for v in mine:
                cells = where[v.name][1]
                if c.id in cells:
                    n = len(cells)
                    parts.append((math.ceil((v.vcpus - v.dedicated_cpus) / n),
                                  math.ceil(v.dedicated_cpus / n),
                                  0 if v.hugepage_count else math.ceil(v.memory_mib / n),
                                  math.ceil(v.hugepage_count / n)))
            assert sum(p[1] for p in parts) <= c.cpus
            assert sum(p[0] for p in parts) <= (c.cpus - sum(p[1] for p in parts)) * RATIO + 1e-9
            assert sum(p[2] for p in parts) <= c.memory_mib - c.hugepage_mib
            assert sum(p[3] for p in parts) <= c.hugepages.get(2048, 0)
    for v in vms.values():
        if v.name in where and (v.numa == "strict" or v.dedicated_cpus or v.hugepage_count):
            assert where[v.name][1], f"{v.name} needs cells"
    members = {}
    for n, (host, _) in where.items():
        for g in vms[n].groups:
            members.setdefault(g, []).append(host)
    assert len(members.get("anti", [])) == len(set(members.get("anti", [])))
    assert len(set(members.get("aff", []))) <= 1
    assert all(h in hosts for h, _ in where.values())


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(clusters())
def test_place_keeps_every_hard_rule_and_drops_nothing(cluster):
    result = place(cluster.vms, cluster, CONFIG)
    assert len(result.placements) + len(result.unplaceable) == len(cluster.vms)
    assert not result.errors
    check_invariants(cluster, {p.vm: (p.host, p.cells) for p in result.placements})
    assert result == place(cluster.vms, cluster, CONFIG)  # deterministic


@SETTINGS
@given(clusters(), st.integers(0, 8))
def test_rebalance_never_raises_the_score_and_keeps_rules(cluster, max_moves):
    first = place(cluster.vms, cluster, PolicyConfig(cpu_overcommit=RATIO, strategy="pack"))
    where = {p.vm: (p.host, p.cells) for p in first.placements}
    running = dataclasses.replace(cluster, vms=tuple(
        dataclasses.replace(v, host=where[v.name][0], numa_cells=where[v.name][1])
        for v in cluster.vms if v.name in where))
    plan = rebalance(running, max_moves, 0.0, CONFIG)
    assert plan.score_after <= plan.score_before + 1e-12
    assert abs(plan.score_before - score(running, CONFIG)) < 1e-9
    assert len(plan.moves) <= max_moves
    for m in plan.moves:
        assert where[m.vm][0] == m.source
        where[m.vm] = (m.target, m.cells)
    check_invariants(running, where)
    assert plan == rebalance(running, max_moves, 0.0, CONFIG)  # deterministic
