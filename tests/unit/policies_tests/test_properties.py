"""Properties over random clusters: no plan breaks capacity, NUMA or hard rules; rebalance never
raises the score; the same input gives the same answer. Checked by an independent recount."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from policies import place, rebalance
from policies.config import PolicyConfig
from policies.model import Cluster, Group, Host, HostAffinity, NumaCell, Vm
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


# -- rebalance: every prefix of a plan, and what the cost method saves ------------------------


@st.composite
def running_clusters(draw):
    """A packed random cluster, running, with the rules the engine knows beyond clusters():
    required tags, cpu families, hard host affinity, a host that is not active."""
    base = draw(clusters())
    packed = place(base.vms, base, PolicyConfig(cpu_overcommit=RATIO, strategy="pack"))
    where = {p.vm: (p.host, p.cells) for p in packed.placements}
    names = [h.name for h in base.hosts]
    hosts = tuple(dataclasses.replace(
        h, tags=frozenset(draw(st.sampled_from([(), ("ssd",)]))),
        cpu_family=draw(st.sampled_from(["zen3", "zen3", "skylake"])),
        state=draw(st.sampled_from(["active"] * 5 + ["maintenance"])))
        for h in base.hosts)
    vms = []
    for v in base.vms:
        if v.name not in where:
            continue
        rule = draw(st.sampled_from(["none"] * 4 + ["tags", "affinity"]))
        extra: dict = {}
        if rule == "tags":
            extra["required_tags"] = frozenset({"ssd"})
        elif rule == "affinity":
            extra["host_affinity"] = HostAffinity(frozenset(draw(st.sets(
                st.sampled_from(names), min_size=1, max_size=3)) | {where[v.name][0]}))
        vms.append(dataclasses.replace(v, host=where[v.name][0], numa_cells=where[v.name][1],
                                       **extra))
    return Cluster(hosts, tuple(vms), base.groups)


@st.composite
def swap_clusters(draw):
    """Two plain hosts: on h0 a VM with much memory and few vcpus and one with more vcpus and less
    memory, on h1 a small VM, and a few others anywhere: moving the middle VM over and the small
    one back (a swap) often evens both spreads with less memory than moving the big one."""
    hosts = (Host("h0", 16, 65536, cpu_family="x"), Host("h1", 16, 65536, cpu_family="x"))
    vms = [Vm("big", draw(st.integers(1, 2)), draw(st.sampled_from([8192, 16384])), "h0"),
           Vm("mid", draw(st.integers(2, 4)), draw(st.sampled_from([4096, 8192])), "h0"),
           Vm("small", draw(st.integers(1, 2)), draw(st.sampled_from([1024, 2048])), "h1")]
    for j in range(draw(st.integers(0, 3))):
        vms.append(Vm(f"vm{j}", draw(st.integers(1, 4)),
                      draw(st.sampled_from([1024, 2048, 4096, 8192])),
                      draw(st.sampled_from(["h0", "h1"]))))
    return Cluster(hosts, tuple(vms))


def has_swap(plan) -> bool:
    return any(a.source == b.target and a.target == b.source
               for a, b in zip(plan.moves, plan.moves[1:]))


def utilisation_score(cluster: Cluster, where: dict[str, str], config: PolicyConfig) -> float:
    """The imbalance score recounted from scratch (vcpus stand for cpu load: nothing is measured)."""
    act = {h.name: h for h in cluster.hosts if h.state == "active"}
    if not act:
        return 0.0
    cpu = dict.fromkeys(act, 0.0)
    mem = dict.fromkeys(act, 0.0)
    for v in cluster.vms:
        if where[v.name] in act:
            cpu[where[v.name]] += v.vcpus
            mem[where[v.name]] += v.memory_mib

    def sd(xs):
        mean = sum(xs) / len(xs)
        return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))

    return (config.imbalance_cpu_weight * sd([cpu[n] / act[n].cpus for n in act])
            + config.imbalance_memory_weight * sd([mem[n] / act[n].memory_mib for n in act]))


@SETTINGS
@given(running_clusters(), st.sampled_from(["cost", "greedy"]), st.integers(0, 3),
       st.sampled_from([None, 0, 3, 8]), st.sampled_from([None, 0.0, 6.0, 20.0]),
       st.sampled_from([0.0, 0.01]), st.sampled_from([0.0, 0.3]))
def test_every_prefix_of_a_rebalance_keeps_every_rule_and_lowers_the_score(
        cluster, method, n_frozen, max_moves, max_gib, min_gain, reserve):
    check_every_prefix(cluster, method, n_frozen, max_moves, max_gib, min_gain, reserve, 1.5)


@SETTINGS
@given(swap_clusters(), st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, 4.0, 10.0]),
       st.sampled_from([0.0, 0.01]), st.sampled_from([0.0, 0.3]), st.sampled_from([1.0, 1.5]))
def test_every_prefix_of_a_cost_plan_with_swaps_keeps_every_rule_and_lowers_the_score(
        cluster, max_moves, max_gib, min_gain, reserve, memory_weight):
    check_every_prefix(cluster, "cost", 0, max_moves, max_gib, min_gain, reserve, memory_weight)


def check_every_prefix(cluster, method, n_frozen, max_moves, max_gib, min_gain, reserve,
                       memory_weight):
    config = PolicyConfig(cpu_overcommit=RATIO, reserve_memory=reserve,
                          imbalance_memory_weight=memory_weight)
    frozen = {v.name for v in cluster.vms[:n_frozen]}
    plan = rebalance(cluster, max_moves, min_gain, config, max_gib=max_gib, frozen=frozen,
                     method=method)
    event(f"{method} plan with a swap" if has_swap(plan) else f"{method} plan without a swap")
    vms = {v.name: v for v in cluster.vms}
    hosts = {h.name: h for h in cluster.hosts}
    where = {v.name: (v.host, v.numa_cells or ()) for v in cluster.vms}
    now = utilisation_score(cluster, {n: w[0] for n, w in where.items()}, config)
    assert abs(plan.score_before - now) < 1e-9
    assert len(plan.moves) == len(plan.scores) == len(plan.mib)
    assert max_moves is None or len(plan.moves) <= max_moves
    assert max_gib is None or plan.gib <= max_gib
    assert len({m.vm for m in plan.moves}) == len(plan.moves)  # a VM moves once
    for m, after, mib in zip(plan.moves, plan.scores, plan.mib):
        vm, source, target = vms[m.vm], hosts[m.source], hosts[m.target]
        assert where[m.vm][0] == m.source and m.vm not in frozen and vm.migratable
        assert source.state == target.state == "active" and source.cpu_family == target.cpu_family
        assert vm.required_tags <= target.tags
        assert vm.host_affinity is None or m.target in vm.host_affinity.hosts
        assert mib == vm.memory_mib
        where[m.vm] = (m.target, m.cells)
        check_invariants(cluster, where)
        if reserve and not vm.hugepage_count:
            normal = sum(vms[n].memory_mib for n, (h, _) in where.items()
                         if h == m.target and not vms[n].hugepage_count)
            assert normal <= (target.memory_mib - target.hugepage_mib) * (1 - reserve) + 1e-6
        score = utilisation_score(cluster, {n: w[0] for n, w in where.items()}, config)
        assert abs(score - after) < 1e-9
        assert now - score >= max(min_gain, 1e-9) - 1e-12  # each move gains at least min_gain
        now = score
    assert abs(plan.score_after - now) < 1e-9
    assert plan == rebalance(cluster, max_moves, min_gain, config, max_gib=max_gib,
                             frozen=frozen, method=method)  # deterministic


def memory_to_reach(plan, target: float) -> int:
    """MiB the shortest prefix of ``plan`` at or below score ``target`` migrates."""
    if plan.score_before <= target + 1e-9:
        return 0
    for k, score in enumerate(plan.scores):
        if score <= target + 1e-9:
            return sum(plan.mib[: k + 1])
    raise AssertionError(f"the plan never reaches {target}")


@st.composite
def loaded_clusters(draw):
    """Equal hosts, plain VMs of one cpu load and many memory sizes, crowded onto the first hosts:
    the moves that gain alike differ most in the memory they migrate."""
    n_hosts = draw(st.integers(3, 6))
    hosts = tuple(Host(f"h{i}", 16, 65536, cpu_family="x") for i in range(n_hosts))
    free = [65536] * n_hosts
    vms = []
    for j in range(draw(st.integers(4, 24))):
        mem = draw(st.sampled_from([1024, 2048, 4096, 8192, 16384]))
        i = draw(st.integers(0, n_hosts - 1)) if draw(st.booleans()) else draw(st.integers(0, 1))
        if free[i] >= mem:
            free[i] -= mem
            vms.append(Vm(f"vm{j:02d}", draw(st.integers(1, 4)), mem, f"h{i}",
                          cpu_load=draw(st.sampled_from([0.5, 1.0, 2.0]))))
    return Cluster(hosts, tuple(vms))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(running_clusters(), loaded_clusters(), swap_clusters()))
def test_the_cost_plan_migrates_no_more_memory_than_greedy_for_the_same_score(cluster):
    """Both plans run to their end; at the score both reach (the higher of their two final
    scores), the cost plan's shortest prefix there migrates no more memory than the greedy's."""
    greedy = rebalance(cluster, None, 0.0, CONFIG, method="greedy")
    cost = rebalance(cluster, None, 0.0, CONFIG, method="cost")
    event("cost plan with a swap" if has_swap(cost) else "cost plan without a swap")
    target = max(greedy.score_after, cost.score_after)
    assert memory_to_reach(cost, target) <= memory_to_reach(greedy, target)
