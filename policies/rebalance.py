"""The rebalance planner: few live migrations that lower the imbalance score, every rule kept.

Imbalance score (lower is better), over active hosts:

    score = cpu_weight * sd(cpu_load / cpus) + memory_weight * sd(memory_used / memory)

with ``sd`` the population standard deviation and the weights from ``[policy.rebalance]``.

Greedy steepest descent, like Ganeti's hbal: each step takes the single move with the largest
score drop among moves that pass every filter (capacity, NUMA, hard affinity, tags, migration
compatibility, failover reserve), so every prefix of the plan is the best gain we found for its
length. It stops at ``max_moves``, or when the best move gains less than ``min_gain``. A VM moves
at most once per plan (a second hop would be a wasted migration), and only migratable VMs on
active hosts move. The score only ever goes down.

Speed: per-host utilisations and the four sums behind the two deviations are kept up to date, so
a candidate move is scored in O(1). Each step looks only at VMs on the hosts furthest above the
mean (by cpu, by memory and combined) towards the hosts furthest below, and VMs of the same size
on the same host are scored once.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from policies.config import DEFAULT, PolicyConfig
from policies.filters import MIGRATE, Context
from policies.model import Cluster
from policies.pipeline import DEFAULT_PIPELINE, Pipeline
from policies.place import Move
from policies.state import ClusterState

FRONTIER = 6  # hosts taken from each end, per dimension, at every step
MAX_CHECKS = 200  # candidate moves checked against the filters per step before giving up


@dataclass(frozen=True)
class RebalancePlan:
    moves: tuple[Move, ...]
    score_before: float
    score_after: float
    stopped: str  # why planning stopped: max_moves, min_gain, no_move


def imbalance(state: ClusterState) -> float:
    """The imbalance score of a state (see the module docstring)."""
    act = [hs for hs in state.hosts if hs.active and hs.cpus > 0 and hs.memory > 0]
    if not act:
        return 0.0
    cfg = state.config
    return (cfg.imbalance_cpu_weight * _sd([hs.cpu_load / hs.cpus for hs in act])
            + cfg.imbalance_memory_weight * _sd([hs.mem_load / hs.memory for hs in act]))


def score(cluster: Cluster, config: PolicyConfig = DEFAULT) -> float:
    """The imbalance score of a cluster as it runs now."""
    return imbalance(ClusterState(cluster, config))


def _sd(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def _sd_sums(s1: float, s2: float, n: int) -> float:
    return math.sqrt(max(0.0, s2 / n - (s1 / n) ** 2))


def rebalance(cluster: Cluster, max_moves: int = 20, min_gain: float = 0.0,
              config: PolicyConfig = DEFAULT, *, pipeline: Pipeline = DEFAULT_PIPELINE
              ) -> RebalancePlan:
    """Plan at most ``max_moves`` live migrations, each lowering the score by at least ``min_gain``."""
    if max_moves < 0 or min_gain < 0:
        raise ValueError("max_moves and min_gain must not be negative")
    state = ClusterState(cluster, config)
    before = imbalance(state)
    act = [hs for hs in state.hosts if hs.active and hs.cpus > 0 and hs.memory > 0]
    n = len(act)
    if n < 2 or max_moves == 0:
        return RebalancePlan((), before, before, "no_move" if n < 2 else "max_moves")
    wc, wm = config.imbalance_cpu_weight, config.imbalance_memory_weight
    index = {hs.name: i for i, hs in enumerate(act)}
    uc = [hs.cpu_load / hs.cpus for hs in act]
    um = [hs.mem_load / hs.memory for hs in act]
    s1c, s2c = sum(uc), sum(u * u for u in uc)
    s1m, s2m = sum(um), sum(u * u for u in um)
    current = wc * _sd_sums(s1c, s2c, n) + wm * _sd_sums(s1m, s2m, n)
    moved: set[str] = set()
    moves: list[Move] = []
    threshold = max(min_gain, 1e-9)
    stopped = "max_moves"
    while len(moves) < max_moves:
        mc, mm = s1c / n, s1m / n
        sdc, sdm = _sd_sums(s1c, s2c, n) or 1.0, _sd_sums(s1m, s2m, n) or 1.0
        dev = [wc * (uc[i] - mc) / sdc + wm * (um[i] - mm) / sdm for i in range(n)]
        rng = range(n)
        sources = set(heapq.nlargest(FRONTIER, rng, key=dev.__getitem__))
        sources |= set(heapq.nlargest(FRONTIER, rng, key=uc.__getitem__))
        sources |= set(heapq.nlargest(FRONTIER, rng, key=um.__getitem__))
        targets = set(heapq.nsmallest(FRONTIER, rng, key=dev.__getitem__))
        targets |= set(heapq.nsmallest(FRONTIER, rng, key=uc.__getitem__))
        targets |= set(heapq.nsmallest(FRONTIER, rng, key=um.__getitem__))
        tlist = sorted(targets)
        cands: list[tuple[float, str, int]] = []
        for s in sorted(sources):
            hs = act[s]
            seen_sizes: set[tuple[float, float]] = set()
            for vname in sorted(hs.vms):
                if vname in moved:
                    continue
                req = state.reqs[vname]
                if not req.migratable:
                    continue
                size = (req.cpu_load, req.mem_load)
                if size in seen_sizes:
                    continue
                seen_sizes.add(size)
                dc, dm = req.cpu_load, req.mem_load
                ucs, ums = uc[s], um[s]
                ucs2, ums2 = ucs - dc / hs.cpus, ums - dm / hs.memory
                # Sums with the source side already moved: only the target side varies below.
                b1c, b2c = s1c - ucs + ucs2, s2c - ucs * ucs + ucs2 * ucs2
                b1m, b2m = s1m - ums + ums2, s2m - ums * ums + ums2 * ums2
                for t in tlist:
                    if t == s:
                        continue
                    ht = act[t]
                    uct, umt = uc[t], um[t]
                    uct2, umt2 = uct + dc / ht.cpus, umt + dm / ht.memory
                    c1, c2 = b1c - uct + uct2, b2c - uct * uct + uct2 * uct2
                    m1, m2 = b1m - umt + umt2, b2m - umt * umt + umt2 * umt2
                    new = wc * math.sqrt(max(0.0, c2 / n - (c1 / n) ** 2)) \
                        + wm * math.sqrt(max(0.0, m2 / n - (m1 / n) ** 2))
                    if current - new >= threshold:
                        cands.append((new, vname, t))
        if not cands:
            stopped = "min_gain" if min_gain > 0 else "no_move"
            break
        cands.sort(key=lambda c: (c[0], c[1], act[c[2]].name))
        chosen = None
        ctx_cache: dict[int, Context] = {}
        for new, vname, t in cands[:MAX_CHECKS]:
            req = state.reqs[vname]
            src = state.placed[vname][0]
            ctx = ctx_cache.setdefault(index[src], Context(MIGRATE, frozenset({src})))
            ok, _ = pipeline.passing(req, ctx, state, [act[t]])
            if ok:
                chosen = (new, vname, t)
                break
        if chosen is None:
            stopped = "no_move"
            break
        new, vname, t = chosen
        req = state.reqs[vname]
        src_name = state.placed[vname][0]
        s = index[src_name]
        target = act[t]
        cells = state.fit(req, target) or ()
        state.remove(req)
        state.add(req, target.name, cells)
        for i in (s, t):
            hs = act[i]
            nc, nm = hs.cpu_load / hs.cpus, hs.mem_load / hs.memory
            s1c += nc - uc[i]
            s2c += nc * nc - uc[i] * uc[i]
            s1m += nm - um[i]
            s2m += nm * nm - um[i] * um[i]
            uc[i], um[i] = nc, nm
        current = wc * _sd_sums(s1c, s2c, n) + wm * _sd_sums(s1m, s2m, n)
        moved.add(vname)
        moves.append(Move(vname, src_name, target.name, cells))
    after = imbalance(state)
    return RebalancePlan(tuple(moves), before, after, stopped)
