"""Weighers: each returns a raw number for one VM on one host that passed every filter; higher is
better. The pipeline scales each weigher's raw numbers to 0..1 over the candidate hosts and
multiplies them by the weigher's configured multiplier. A weigher never changes its inputs.
"""

from __future__ import annotations

from policies import numa
from policies.filters import Context
from policies.state import ClusterState, HostUsage, Req


class Weigher:
    name = "weigher"

    def multiplier(self, state: ClusterState) -> float:
        return 1.0

    def applies(self, req: Req, ctx: Context, state: ClusterState) -> bool:
        return True

    def raw(self, host: HostUsage, req: Req, ctx: Context, state: ClusterState) -> float:
        raise NotImplementedError

    def raw_all(self, hosts: list[HostUsage], req: Req, ctx: Context, state: ClusterState
                ) -> list[float]:
        """Raw values for many hosts; a weigher may do this faster but must agree with ``raw``."""
        return [self.raw(h, req, ctx, state) for h in hosts]


class LoadWeigher(Weigher):
    """Spread: prefer the host least utilised after placing (cpu and memory, weighted like the
    imbalance score). Pack: prefer the most utilised, so idle hosts can be powered down."""

    name = "load"

    def multiplier(self, state):
        return state.config.weights.load

    def raw(self, host, req, ctx, state):
        cfg = state.config
        wc, wm = cfg.imbalance_cpu_weight, cfg.imbalance_memory_weight
        util = (wc * (host.cpu_load + req.cpu_load) / host.cpus
                + wm * (host.mem_load + req.mem_load) / host.memory) / (wc + wm)
        return util if cfg.strategy == "pack" else -util

    def raw_all(self, hosts, req, ctx, state):
        cfg = state.config
        wc, wm = cfg.imbalance_cpu_weight, cfg.imbalance_memory_weight
        sign = (1.0 if cfg.strategy == "pack" else -1.0) / (wc + wm)
        lc, lm = req.cpu_load, req.mem_load
        return [sign * (wc * (h.cpu_load + lc) / h.cpus + wm * (h.mem_load + lm) / h.memory)
                for h in hosts]


class NumaFragmentationWeigher(Weigher):
    """Prefer hosts where the VM spans fewer cells and the largest free cell stays large."""

    name = "numa_fragmentation"

    def multiplier(self, state):
        return state.config.weights.numa_fragmentation

    def applies(self, req, ctx, state):
        return req.binds_cells or req.numa == "preferred"

    def raw(self, host, req, ctx, state):
        cells = state.fit(req, host)
        if not cells:  # unbound: the worst case, the VM's memory may come from any cell
            return -float(len(host.cells))
        part = numa.split(req, len(cells))
        largest = 0.0
        for c in host.cells:
            used = c.memory_used + (part[2] if c.id in cells else 0)
            largest = max(largest, (c.memory - used) / c.memory if c.memory else 0.0)
        return -(len(cells) - 1) + largest


class SoftAffinityWeigher(Weigher):
    """Soft rules: +1 per group mate here for affinity, -1 for anti-affinity, +1 for a preferred host."""

    name = "soft_affinity"

    def multiplier(self, state):
        return state.config.weights.soft_affinity

    def applies(self, req, ctx, state):
        return bool(req.soft_groups) or (req.host_aff is not None and not req.host_aff_hard)

    def raw(self, host, req, ctx, state):
        score = 0.0
        for g in req.soft_groups:
            mates = state.members.get(g.name, {}).get(host.name)
            if mates:
                n = len(mates) - (req.name in mates)
                score += n if g.policy == "affinity" else -n
        if req.host_aff is not None and not req.host_aff_hard and host.name in req.host_aff:
            score += 1.0
        return score

    def raw_all(self, hosts, req, ctx, state):
        # Only hosts with group mates or a preferred host score; the rest are 0.
        named: set[str] = set(req.host_aff or ()) if not req.host_aff_hard else set()
        for g in req.soft_groups:
            named.update(state.members.get(g.name, {}))
        if not named:
            return [0.0] * len(hosts)
        return [self.raw(h, req, ctx, state) if h.name in named else 0.0 for h in hosts]


DEFAULT_WEIGHERS: tuple[Weigher, ...] = (LoadWeigher(), NumaFragmentationWeigher(),
                                         SoftAffinityWeigher())
