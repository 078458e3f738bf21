"""Filters: each answers, for one VM and one host, "fits" (None) or "does not fit" (a reason).

A filter never changes its inputs. ``applies`` lets the pipeline skip a filter that cannot reject
this VM (no tags asked, no groups...), which keeps one placement on 10,000 hosts fast.
An exception from ``check`` is a failed filter, reported apart from "does not fit".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policies import numa
from policies.state import ClusterState, HostUsage, Req

RESTART = "restart"  # failover restart or first start: no live migration involved
MIGRATE = "migrate"  # live migration (drain, rebalance): the VM's memory moves as it runs


@dataclass(frozen=True)
class Context:
    """What kind of placement this is, and hosts that must not take anything (a drained source)."""

    mode: str = RESTART
    exclude: frozenset[str] = field(default_factory=frozenset)


class Filter:
    name = "filter"

    def applies(self, req: Req, ctx: Context, state: ClusterState) -> bool:
        return True

    def check(self, host: HostUsage, req: Req, ctx: Context, state: ClusterState) -> str | None:
        raise NotImplementedError

    def filter_all(self, hosts: list[HostUsage], req: Req, ctx: Context, state: ClusterState
                   ) -> list[HostUsage]:
        """Optional fast screen: the hosts that pass, in order. Must agree with ``check``."""
        return [h for h in hosts if self.check(h, req, ctx, state) is None]


class HostStateFilter(Filter):
    """Only active hosts take VMs; a host being drained takes nothing."""

    name = "state"

    def check(self, host, req, ctx, state):
        if not host.active:
            return f"host is {host.state}, only active hosts take VMs"
        if host.name in ctx.exclude:
            return "host is being drained"
        return None

    def filter_all(self, hosts, req, ctx, state):
        exclude = ctx.exclude
        return [h for h in hosts if h.active and h.name not in exclude]


class TagsFilter(Filter):
    """The host carries every tag the VM requires."""

    name = "tags"

    def applies(self, req, ctx, state):
        return bool(req.required_tags)

    def check(self, host, req, ctx, state):
        missing = req.required_tags - host.tags
        return f"missing tags: {', '.join(sorted(missing))}" if missing else None


class MigrationFilter(Filter):
    """A live migration needs a migratable VM and the same CPU model family at both ends."""

    name = "migration"

    def applies(self, req, ctx, state):
        return ctx.mode == MIGRATE

    def check(self, host, req, ctx, state):
        if not req.migratable:
            return "VM cannot live-migrate (migratable is false)"
        source = state.by_name.get(req.source) if req.source else None
        if source is not None and source.family != host.family:
            return f"cpu family {host.family or 'unknown'} differs from the source's " \
                   f"{source.family or 'unknown'}"
        return None


class CapacityFilter(Filter):
    """Unpinned vcpus within cpu_overcommit of the unpinned cpus; memory within memory_overcommit."""

    name = "capacity"

    def check(self, host, req, ctx, state):
        free_cpus = host.cpus - host.dedicated - req.dedicated
        if free_cpus < 0:
            return f"needs {req.dedicated} pinned cpus, {host.cpus - host.dedicated} unpinned"
        # Always checked: pinning cpus shrinks the pool the unpinned vcpus already share.
        limit = free_cpus * state.cpu_ratio
        if host.shared_vcpus + req.shared_vcpus > limit:
            if req.shared_vcpus:
                return (f"needs {req.shared_vcpus} vcpus, {max(0.0, limit - host.shared_vcpus):g} "
                        f"free (cpu_overcommit {state.cpu_ratio:g})")
            return (f"pinning {req.dedicated} cpus would leave {free_cpus} for "
                    f"{host.shared_vcpus} unpinned vcpus (cpu_overcommit {state.cpu_ratio:g})")
        if req.memory:
            limit = host.normal_memory * state.mem_ratio
            if host.memory_alloc + req.memory > limit:
                return (f"needs {req.memory} MiB, {max(0.0, limit - host.memory_alloc):.0f} MiB "
                        f"free (memory_overcommit {state.mem_ratio:g})")
        return None

    def filter_all(self, hosts, req, ctx, state):
        ded, shared, mem = req.dedicated, req.shared_vcpus, req.memory
        cr, mr = state.cpu_ratio, state.mem_ratio
        return [h for h in hosts
                if h.cpus - h.dedicated - ded >= 0
                and h.shared_vcpus + shared <= (h.cpus - h.dedicated - ded) * cr
                and (not mem or h.memory_alloc + mem <= h.normal_memory * mr)]


class NumaFilter(Filter):
    """The VM's NUMA needs (strict cells, pinned cpus, hugepages) fit this host's free cells."""

    name = "numa"

    def applies(self, req, ctx, state):
        return req.binds_cells

    def check(self, host, req, ctx, state):
        if state.fit(req, host) is None:
            cells = state.cells_for(req, host)
            if not cells:
                return f"has none of the NUMA cells {_ids(req.nodeset)} its numatune names"
            return numa.explain_misfit(req, cells, state.cpu_ratio)
        return None


def _ids(ids) -> str:
    return ",".join(str(i) for i in sorted(ids))


class RequirementsFilter(Filter):
    """What the domain XML names must exist on the host: NUMA cells, pinned cpus, a CPU model.

    A VM whose XML asks for something placement cannot honour (``unplaceable``) fits nowhere.
    """

    name = "requirements"

    def applies(self, req, ctx, state):
        return bool(req.unplaceable or req.nodeset or req.max_pinned_cpu >= 0 or req.cpu_model
                    or req.numa != "none" or req.binds_cells)

    def check(self, host, req, ctx, state):
        if req.unplaceable:
            return f"cannot be placed: {req.unplaceable}"
        if host.inventory_unknown:
            return f"its NUMA and CPU inventory is unknown ({host.inventory_unknown})"
        missing = req.nodeset - {c.id for c in host.cells}
        if missing:
            return f"has no NUMA cell {_ids(missing)} (its numatune nodeset is {_ids(req.nodeset)})"
        if req.max_pinned_cpu >= host.cpus:
            return f"has {host.cpus} cpus; the VM pins cpu {req.max_pinned_cpu}"
        if req.cpu_model and host.cpu_models is not None and req.cpu_model not in host.cpu_models:
            return f"cpu model {req.cpu_model} is not usable here"
        return None


class AffinityFilter(Filter):
    """Hard group rules: affinity keeps members on one host, anti-affinity on different hosts."""

    name = "affinity"

    def applies(self, req, ctx, state):
        return bool(req.hard_groups)

    def check(self, host, req, ctx, state):
        for g in req.hard_groups:
            where = state.group_hosts(g.name, req.name)
            if g.policy == "affinity":
                others = sorted(h for h in where if h != host.name)
                if others:
                    return f"group {g.name} (hard affinity) runs on {others[0]}"
            elif host.name in where:
                mate = sorted(state.members[g.name][host.name] - {req.name})[0]
                return f"group {g.name} (hard anti-affinity) already has {mate} here"
        return None


class HostAffinityFilter(Filter):
    """A hard host affinity: only the listed hosts."""

    name = "host_affinity"

    def applies(self, req, ctx, state):
        return req.host_aff_hard

    def check(self, host, req, ctx, state):
        if host.name not in req.host_aff:
            return f"not one of the VM's hosts ({', '.join(sorted(req.host_aff))})"
        return None


class ReserveFilter(Filter):
    """Keeps the configured share of each host free for failover; restarts may use it."""

    name = "reserve"

    def applies(self, req, ctx, state):
        cfg = state.config
        return ctx.mode != RESTART and (cfg.reserve_cpu > 0 or cfg.reserve_memory > 0)

    def check(self, host, req, ctx, state):
        cfg = state.config
        if cfg.reserve_memory and req.memory:
            limit = host.normal_memory * state.mem_ratio * (1 - cfg.reserve_memory)
            if host.memory_alloc + req.memory > limit:
                return (f"would eat into the {cfg.reserve_memory:.0%} of memory reserved for "
                        f"failover ({max(0.0, limit - host.memory_alloc):.0f} MiB free above it)")
        if cfg.reserve_cpu and req.vcpus:
            free_cpus = host.cpus - host.dedicated - req.dedicated
            limit = free_cpus * state.cpu_ratio * (1 - cfg.reserve_cpu)
            if host.shared_vcpus + req.shared_vcpus > limit or free_cpus < host.cpus * cfg.reserve_cpu:
                return f"would eat into the {cfg.reserve_cpu:.0%} of cpu reserved for failover"
        return None


# Cheapest and most selective first: most hosts are rejected by the first two or pass all.
DEFAULT_FILTERS: tuple[Filter, ...] = (HostStateFilter(), HostAffinityFilter(), TagsFilter(),
                                       RequirementsFilter(), MigrationFilter(), CapacityFilter(), ReserveFilter(),
                                       AffinityFilter(), NumaFilter())
