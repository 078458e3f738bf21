"""The production placer: the leader's failover placement through the ``policies`` engine.

Kept apart from ``manager.core`` so the pure step depends only on the ``Placer`` signature; the
simulator and the daemon both pass this one in.
"""

from __future__ import annotations

from typing import Callable, Sequence

from haagent.manager.core import Placer
from haagent.manager.live import LiveMemo, live_cluster
from haagent.manager.rebalance import Rebalancer, RoundLimits, RoundMove, RoundPlan
from haagent.state.view import ClusterView, VmSpec


def policy_placer(config: object = None) -> Placer:
    """The production placer: ``policies.place`` over the live cluster (``manager.live``).

    Every host is given as it is (state, NUMA cells with their free capacity, tags, CPU
    compatibility, load), so the engine's rules (NUMA fit, hugepages, pinning, groups, reserve,
    load) hold for failover as they do for ``haagent plan``. VMs are placed by priority, then size.
    """
    from policies import place
    from policies.config import PolicyConfig

    cfg = config if isinstance(config, PolicyConfig) else PolicyConfig()
    memo = LiveMemo()  # the conversions, reused while unchanged (live_cluster)

    def placer(todo: Sequence[VmSpec], view: ClusterView, avoid: frozenset[str]):
        live = live_cluster(view, cfg, avoid=avoid, unplaced=[t.uuid for t in todo], memo=memo)
        result = place([live.converted[t.uuid][3] for t in todo], live.cluster, cfg)
        return ({live.uuid[p.vm]: p.host for p in result.placements},
                {live.uuid[u.vm]: tuple(u.reasons) for u in result.unplaceable})

    return placer


def policy_mover(config: object = None) -> Placer:
    """The production planner of live migrations: ``policies.move`` over the live cluster.

    Each VM leaves the host its placement names, under the engine's migration rules (CPU
    compatibility with its source as well as NUMA, reserve, affinity and load); ``avoid`` hosts
    take nothing.
    """
    from policies.config import PolicyConfig
    from policies.place import move

    cfg = config if isinstance(config, PolicyConfig) else PolicyConfig()
    memo = LiveMemo()  # the conversions, reused while unchanged (live_cluster)

    def mover(todo: Sequence[VmSpec], view: ClusterView, avoid: frozenset[str]):
        live = live_cluster(view, cfg, avoid=avoid, memo=memo)
        result = move([live.converted[t.uuid][3] for t in todo], live.cluster, cfg, avoid=avoid)
        return ({live.uuid[p.vm]: p.host for p in result.placements},
                {live.uuid[u.vm]: tuple(u.reasons) for u in result.unplaceable})

    return mover


def policy_rebalancer(config: object = None) -> Rebalancer:
    """The production planner of rebalance rounds: ``policies.rebalance`` over the live cluster.

    Only active hosts with a lease take part (``live_cluster`` gives the rest another state);
    ``frozen`` VMs stay. Each move says why it was chosen: the source's and target's utilisation
    against the cluster's mean, and the score it removes per GiB migrated.
    """
    from policies.config import PolicyConfig
    from policies.rebalance import rebalance

    cfg = config if isinstance(config, PolicyConfig) else PolicyConfig()

    def rebalancer(view: ClusterView, frozen: frozenset[str], limits: RoundLimits) -> RoundPlan:
        live = live_cluster(view, cfg)
        plan = rebalance(live.cluster, limits.max_moves, limits.min_gain, cfg, max_gib=limits.max_gib,
                         frozen=frozenset(live.label[u] for u in frozen if u in live.label))
        why = _reasons(live.cluster, cfg, plan)
        moves = tuple(RoundMove(live.uuid[m.vm], m.vm, m.source, m.target, mib, after, w)
                      for m, mib, after, w in zip(plan.moves, plan.mib, plan.scores, why))
        return RoundPlan(moves, plan.score_before, plan.score_after, plan.stopped)

    return rebalancer


def _reasons(cluster, cfg, plan) -> list[str]:
    """Why each move of ``plan`` was chosen, in the state the moves before it leave."""
    from policies.state import ClusterState

    state = ClusterState(cluster, cfg)
    hosts = {hs.name: hs for hs in state.hosts if hs.active and hs.cpus > 0 and hs.memory > 0}
    uc = {h: hs.cpu_load / hs.cpus for h, hs in hosts.items()}
    um = {h: hs.mem_load / hs.memory for h, hs in hosts.items()}
    out = []
    before = plan.score_before
    for m, after in zip(plan.moves, plan.scores):
        req = state.reqs[m.vm]
        mc, mm = sum(uc.values()) / len(uc), sum(um.values()) / len(um)
        gib = req.vm.memory_mib / 1024
        out.append(f"{m.source} runs cpu {uc[m.source]:.0%} mem {um[m.source]:.0%} and {m.target} cpu "
                   f"{uc[m.target]:.0%} mem {um[m.target]:.0%} (mean cpu {mc:.0%} mem {mm:.0%}); "
                   f"{m.vm} ({req.cpu_load:.2f} cores, {gib:.2f} GiB) removes {before - after:.4f} of the score "
                   f"({(before - after) / max(gib, 1 / 1024):.4f} per GiB)")
        src, dst = hosts[m.source], hosts[m.target]
        uc[m.source] -= req.cpu_load / src.cpus
        uc[m.target] += req.cpu_load / dst.cpus
        um[m.source] -= req.mem_load / src.memory
        um[m.target] += req.mem_load / dst.memory
        before = after
    return out
