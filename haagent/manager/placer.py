"""The production placer: the leader's failover placement through the ``policies`` engine.

Kept apart from ``manager.core`` so the pure step depends only on the ``Placer`` signature; the
simulator and the daemon both pass this one in.
"""

from __future__ import annotations

from typing import Sequence

from haagent.manager.core import Placer
from haagent.manager.live import LiveMemo, live_cluster
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
