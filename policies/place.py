"""Failover placement, drain planning and explanations, on top of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from haagent.errors import PlacementInputError
from policies.config import DEFAULT, PolicyConfig
from policies.filters import MIGRATE, RESTART, Context
from policies.model import Cluster, Vm
from policies.pipeline import DEFAULT_PIPELINE, HostVerdict, Pipeline
from policies.state import ClusterState, Req


@dataclass(frozen=True)
class Placement:
    vm: str
    host: str
    cells: tuple[int, ...] = ()
    priority: int = 0


@dataclass(frozen=True)
class Unplaceable:
    vm: str
    reasons: tuple[str, ...]
    priority: int = 0


@dataclass(frozen=True)
class PlacementResult:
    """Where each VM goes, in the order they were placed; the ones that fit nowhere, with why."""

    placements: tuple[Placement, ...]
    unplaceable: tuple[Unplaceable, ...]
    errors: tuple[str, ...] = ()  # failed filters or weighers: a bug or bad plugin, not a misfit
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    target: str
    cells: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvacuationPlan:
    """Live migrations that drain ``host``, in order; VMs that cannot leave it, with why."""

    host: str
    moves: tuple[Move, ...]
    unplaceable: tuple[Unplaceable, ...]
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Explanation:
    vm: str
    mode: str
    hosts: tuple[HostVerdict, ...]
    chosen: str | None


def _place_all(reqs: list[Req], state: ClusterState, ctx: Context, pipeline: Pipeline):
    placed, missed, errors = [], [], []
    for req in sorted(reqs, key=Req.order_key):
        choice = pipeline.select(req, state, ctx)
        errors.extend(choice.errors)
        if choice.host is None:
            missed.append(Unplaceable(req.name, choice.reasons, req.priority))
            continue
        if req.name in state.placed:
            state.remove(req)
        state.add(req, choice.host, choice.cells)
        placed.append((req, choice))
    return placed, missed, errors


def place(vms: Iterable[Vm], cluster: Cluster, config: PolicyConfig = DEFAULT, *,
          pipeline: Pipeline = DEFAULT_PIPELINE) -> PlacementResult:
    """Place VMs (restart after failover, or first start): by priority, then size; none dropped."""
    vms = list(vms)
    names = [v.name for v in vms]
    if len(set(names)) != len(names):
        raise PlacementInputError("place: the same VM is listed twice")
    state = ClusterState(cluster, config, leave_out=names)
    reqs = [state.req(v) for v in vms]
    placed, missed, errors = _place_all(reqs, state, Context(RESTART), pipeline)
    return PlacementResult(
        tuple(Placement(r.name, c.host, c.cells, r.priority) for r, c in placed),
        tuple(missed), tuple(dict.fromkeys(errors)), tuple(state.warnings))


def move(vms: Iterable[Vm], cluster: Cluster, config: PolicyConfig = DEFAULT, *, avoid: Iterable[str] = (),
         pipeline: Pipeline = DEFAULT_PIPELINE) -> PlacementResult:
    """Plan live migrations of running VMs (each leaves its host), keeping off ``avoid``."""
    vms = list(vms)
    state = ClusterState(cluster, config)
    sources = frozenset(v.host for v in vms if v.host)
    ctx = Context(MIGRATE, sources | frozenset(avoid))
    placed, missed, errors = _place_all([state.req(v) for v in vms], state, ctx, pipeline)
    return PlacementResult(
        tuple(Placement(r.name, c.host, c.cells, r.priority) for r, c in placed),
        tuple(missed), tuple(dict.fromkeys(errors)), tuple(state.warnings))


def evacuate(host: str, cluster: Cluster, config: PolicyConfig = DEFAULT, *,
             pipeline: Pipeline = DEFAULT_PIPELINE) -> EvacuationPlan:
    """Plan the live migrations that drain one host, by priority then size."""
    if host not in {h.name for h in cluster.hosts}:
        raise PlacementInputError(f"evacuate: unknown host {host!r}")
    state = ClusterState(cluster, config)
    ctx = Context(MIGRATE, frozenset({host}))
    reqs, stuck = [], []
    for vm in sorted((v for v in cluster.vms if v.host == host), key=lambda v: v.name):
        req = state.req(vm)
        if not vm.migratable:
            stuck.append(Unplaceable(vm.name, ("cannot live-migrate (migratable is false): shut it "
                                               "down or restart it elsewhere",), req.priority))
        else:
            reqs.append(req)
    placed, missed, errors = _place_all(reqs, state, ctx, pipeline)
    missed_all = sorted(stuck + missed, key=lambda u: (-u.priority, u.vm))
    return EvacuationPlan(host, tuple(Move(r.name, host, c.host, c.cells) for r, c in placed),
                          tuple(missed_all), tuple(dict.fromkeys(errors)))


def explain(vm: Vm | str, cluster: Cluster, config: PolicyConfig = DEFAULT, *, mode: str = RESTART,
            pipeline: Pipeline = DEFAULT_PIPELINE) -> Explanation:
    """Every host, with the filter that rejected it and why, or what each weigher scored."""
    if isinstance(vm, str):
        try:
            vm = cluster.vm(vm)
        except KeyError:
            raise PlacementInputError(f"explain: unknown VM {vm!r}") from None
    exclude = frozenset({vm.host}) if mode == MIGRATE and vm.host else frozenset()
    # Where would it go if placed now: it no longer counts on its current host.
    state = ClusterState(cluster, config, leave_out=[vm.name] if mode == RESTART else [])
    req = state.req(vm)
    verdicts = pipeline.explain_hosts(req, state, Context(mode, exclude))
    chosen = next((v.host for v in verdicts if v.chosen), None)
    return Explanation(vm.name, mode, tuple(verdicts), chosen)
