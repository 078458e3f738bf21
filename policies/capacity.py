"""N+k what-if: for each set of k failed hosts, which HA VMs would not fit on the survivors?

Exact (every set of k active hosts) while the number of sets is at most
``capacity.exact_limit``. Above it, the worst-case heuristic checks the sets that lose the most:
the k hosts carrying the most HA memory, the most HA vcpus, the most HA VMs, and the k hosts with
the most spare memory. It also states an aggregate bound that covers *every* set: the most HA
memory any k hosts carry against the least spare memory k failures can leave. The bound is about
totals only; bin packing can still fail a set the heuristic did not check, and the report says so.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

from policies.config import DEFAULT, PolicyConfig
from policies.filters import RESTART, Context
from policies.model import Cluster
from policies.pipeline import DEFAULT_PIPELINE, Pipeline
from policies.place import Unplaceable, _place_all
from policies.state import ClusterState


@dataclass(frozen=True)
class FailureSet:
    hosts: tuple[str, ...]
    unplaceable: tuple[Unplaceable, ...]


@dataclass(frozen=True)
class CapacityReport:
    failures: int
    exact: bool
    sets_total: int
    sets_checked: int
    at_risk: tuple[FailureSet, ...]  # only the sets where some HA VM would not fit
    bound: str

    @property
    def ok(self) -> bool:
        return not self.at_risk


def _try_set(state: ClusterState, failed: tuple[str, ...], pipeline: Pipeline) -> FailureSet:
    """Fail ``failed``, place their HA VMs on the rest, then restore the state exactly."""
    victims = []
    for name in failed:
        hs = state.by_name[name]
        hs.active, hs.state = False, "failed"
        victims.extend(state.reqs[v] for v in sorted(hs.vms) if state.reqs[v].ha)
    origin = {req.name: state.placed[req.name] for req in victims}
    for req in victims:
        state.remove(req)
    placed, missed, _ = _place_all(victims, state, Context(RESTART), pipeline)
    for req, _choice in placed:
        state.remove(req)
    for req in victims:
        state.add(req, *origin[req.name])
    for name in failed:
        hs = state.by_name[name]
        hs.active, hs.state = True, hs.host.state
    return FailureSet(failed, tuple(missed))


def capacity(cluster: Cluster, failures: int = 1, config: PolicyConfig = DEFAULT, *,
             pipeline: Pipeline = DEFAULT_PIPELINE) -> CapacityReport:
    """Which HA VMs would not fit if any ``failures`` active hosts failed at once."""
    if failures < 1:
        raise ValueError("failures must be at least 1")
    state = ClusterState(cluster, config)
    active = [hs.name for hs in state.hosts if hs.active]
    k = min(failures, len(active))
    total = math.comb(len(active), k)
    if total <= config.capacity_exact_limit:
        sets = list(itertools.combinations(active, k))
        exact = True
    else:
        sets = _worst_sets(state, active, k)
        exact = False
    at_risk = []
    for failed in sets:
        result = _try_set(state, failed, pipeline)
        if result.unplaceable:
            at_risk.append(result)
    bound = (f"exact: all {total} set(s) of {k} host(s) checked" if exact
             else _bound_text(state, active, k, len(sets), total))
    return CapacityReport(failures, exact, total, len(sets), tuple(at_risk), bound)


def _ha(state: ClusterState, host: str) -> tuple[float, int, int]:
    reqs = [state.reqs[v] for v in state.by_name[host].vms if state.reqs[v].ha]
    return (sum(r.memory_mib for r in reqs), sum(r.vcpus for r in reqs), len(reqs))


def _spare_memory(state: ClusterState, host: str) -> float:
    hs = state.by_name[host]
    return max(0.0, hs.normal_memory * state.mem_ratio - hs.memory_alloc)


def _worst_sets(state: ClusterState, active: list[str], k: int) -> list[tuple[str, ...]]:
    ha = {h: _ha(state, h) for h in active}
    keys = [lambda h: (ha[h][0], h), lambda h: (ha[h][1], h), lambda h: (ha[h][2], h),
            lambda h: (_spare_memory(state, h), h)]
    sets: list[tuple[str, ...]] = []
    for key in keys:
        chosen = tuple(sorted(heapq.nlargest(k, active, key=key)))
        if chosen not in sets:
            sets.append(chosen)
    return sets


def _bound_text(state: ClusterState, active: list[str], k: int, checked: int, total: int) -> str:
    ha_mem = sorted((_ha(state, h)[0] for h in active), reverse=True)
    spare = sorted((_spare_memory(state, h) for h in active), reverse=True)
    worst_load = sum(ha_mem[:k])
    # The least spare k failures can leave: assume they take the k largest spares with them.
    worst_spare = sum(spare[k:])
    verdict = "holds" if worst_load <= worst_spare else "does NOT hold"
    return (f"heuristic: checked {checked} of {total} sets of {k} host(s) (those losing the most "
            f"HA memory, HA vcpus, HA VMs and spare memory). Aggregate bound over every set: "
            f"k hosts carry at most {worst_load:.0f} MiB of HA VMs and the survivors keep at least "
            f"{worst_spare:.0f} MiB free, so the total {verdict}; fragmentation can still leave a "
            f"VM out in a set that was not checked")
