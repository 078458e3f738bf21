"""The migration executor's decisions: drain, undrain and ``vm migrate``, as journaled operations.

Called by ``manager.core.step`` once per round, after the failover rules; pure like it. The rules
(docs/design.md, "Drain and migration"):

* an operation is journaled in ``ops/<id>`` (``intent``, then ``migrate_start``, ``migrated`` or
  ``migrate_failed`` per attempt, ``paused``, ``done``) before it acts; a new leader resumes it
  from the journal and the stored migration records;
* each migration is one ``vms/<uuid>/migration`` record {from, to, epoch, deadline, op, attempt},
  written by the epoch-guarded step; the source agent runs it and reports its outcome in its own
  ``hosts/<h>/migration/<uuid>``;
* a migration settles by where the VM really runs (the hosts' reports), never by the outcome
  alone: on the destination only, placement follows it; on the source (or nowhere) with a failed
  outcome, it is retried on another target, up to ``max_attempts``, then the operation pauses
  with an alert. A migration whose source or destination is lost is left to the failover rules
  (``core._resolve_migration``), which wait for the fence and then ask where the VM runs;
* at most ``max_outgoing`` migrations leave a host, ``max_incoming`` enter one and
  ``max_cluster`` run in the cluster at once; larger VMs leave first (``order``);
* a drained host is ``maintenance``: it takes no VMs and is never fenced for being down.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from haagent.config import MigrationSection
from haagent.manager import rebalance
from haagent.model import HostState as S
from haagent.state.view import (Alert, ClearMigration, ClusterView, ConsumeRequest, Event, JournalStep, Migration, Op, OpStep,
                                Request, SetPlacement, StartMigration, VmSpec)

if TYPE_CHECKING:
    from haagent.manager.core import Placer, _Step

KINDS = ("drain", "return", "migrate", "rebalance")  # op kinds this module runs (rebalance: manager/rebalance.py)
REQUESTS = ("drain", "undrain", "migrate")
LOST = frozenset({S.SUSPECT, S.FENCING, S.FENCED, S.RECOVERING, S.FAILED})


class Refused(ValueError):
    """A drain, undrain or migrate request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class PlannedMove:
    vm: str
    name: str
    memory_mib: int
    source: str
    dest: str | None  # None: no host takes it
    reasons: tuple[str, ...] = ()  # why it cannot go live (cold), or go at all (refused)
    mode: str = "live"  # live | cold (shut down, started on dest: --cold-ok)

    @property
    def verdict(self) -> str:
        return "refused" if self.dest is None else self.mode


NO_LIVE_POLICY = "HA policy none: not live-migrated"
LOCAL_DISKS = "local disk(s) {}: not on shared storage ([agent] shared_paths), so not live-migrated"
UNMANAGED_LIVE_ONLY = "not managed by haagent: live migration only (no spec to start it from)"
COLD_HINT = " (--cold-ok shuts it down and starts it on the target)"


# -- checks shared by the command line (up front) and the leader (on the request) ---------------


def not_live(spec: VmSpec) -> tuple[str, ...]:
    """Why a VM never live-migrates, whatever the target (empty: it may). The one place that
    says it: the plan, the up-front checks and every round of the executor ask it."""
    if spec.policy == "none":
        return (NO_LIVE_POLICY,)
    if spec.local_disks:  # libvirt would refuse (or corrupt) them: the target opens its own copy
        return (LOCAL_DISKS.format(", ".join(spec.local_disks)),)
    return ()


def check_drain(view: ClusterView, host: str, mover: "Placer", limits: MigrationSection,
                partial: bool = False, cold_ok: bool = False, placer: "Placer | None" = None,
                all_vms: bool = False) -> list[PlannedMove]:
    """The moves that would drain ``host`` now; raises Refused (one line) when it must not start."""
    hv = view.hosts.get(host)
    if hv is None:
        raise Refused(f"unknown host {host!r}")
    state = hv.state or S.ACTIVE
    if state is S.DRAINING:
        raise Refused(f"{host} is already draining (watch it: haagent migrations; stop it: haagent host undrain {host})")
    if state is S.MAINTENANCE:
        raise Refused(f"{host} is already in maintenance")
    if state is not S.ACTIVE or not hv.alive:
        raise Refused(f"{host} is {'down' if not hv.alive else state.value}: only an active host with a live "
                      "lease can be drained (a lost host is failed over, not drained)")
    others = [h for h, o in view.hosts.items() if h != host and o.alive and (o.state or S.ACTIVE) is S.ACTIVE]
    if not others:
        raise Refused(f"{host} is the last active host: there is nowhere to move its VMs")
    vms = [u for u, h in view.placements.items() if h == host]
    unmanaged: frozenset[str] = frozenset()
    if all_vms:  # the running VMs haagent does not manage, as the host's report lists them
        view = with_unmanaged(view)
        unmanaged = frozenset(u for u in hv.unmanaged if u not in vms)
        vms += sorted(unmanaged)
    plan = plan_moves(view, vms, mover, limits, cold_ok=cold_ok, placer=placer, unmanaged=unmanaged)
    stuck = [m for m in plan if m.dest is None]
    if stuck and not partial:
        raise Refused("cannot place " + "; ".join(f"{m.name}: {', '.join(m.reasons) or 'no host fits'}"
                                                  for m in stuck) + " (--partial drains the rest)")
    return plan


def check_migrate(view: ClusterView, vm: str, to: str, mover: "Placer") -> PlannedMove:
    """The move ``haagent vm migrate`` would make now; raises Refused (one line) if it cannot."""
    spec = view.specs.get(vm) or next((s for s in view.specs.values() if s.name == vm), None)
    if spec is None:
        raise Refused(f"unknown VM {vm!r}")
    source = view.placements.get(spec.uuid)
    if source is None:
        raise Refused(f"{spec.name} is not placed on any host")
    if spec.uuid in view.migrations:
        raise Refused(f"{spec.name} is migrating already")
    if spec.policy == "none":
        raise Refused(f"{spec.name} has HA policy none: it is not moved by haagent")
    if spec.local_disks:
        raise Refused(f"{spec.name} cannot live-migrate: {not_live(spec)[0]} "
                      f"('haagent host drain {source} --cold-ok' moves it cold)")
    if to:
        if to not in view.hosts:
            raise Refused(f"unknown host {to!r}")
        if to == source:
            raise Refused(f"{spec.name} runs on {to} already")
    avoid = frozenset(h for h in view.hosts if to and h != to)
    [m] = plan_moves(view, [spec.uuid], mover, MigrationSection(), avoid=avoid)
    if m.dest is None:
        raise Refused(f"{spec.name} cannot go to {to or 'any host'}: {', '.join(m.reasons) or 'no host fits'}")
    return m


def plan_moves(view: ClusterView, vms: Sequence[str], mover: "Placer", limits: MigrationSection,
               avoid: frozenset[str] = frozenset(), cold_ok: bool = False,
               placer: "Placer | None" = None, unmanaged: frozenset[str] = frozenset()) -> list[PlannedMove]:
    """Where each VM would go (placed together, so they share the free capacity), in leaving order,
    and how: live (``mover``: the migration rules, CPU compatibility included), or, with
    ``cold_ok``, cold for those that cannot go live (``not_live``, or no live target), placed by
    ``placer`` (the restart rules: a cold start needs no CPU compatibility with the source)."""
    specs = [view.specs[u] for u in vms if u in view.specs]
    specs.sort(key=lambda s: _order(s, limits))
    avoid = avoid | frozenset(h for h, hv in view.hosts.items() if (hv.state or S.ACTIVE) is not S.ACTIVE
                              or not hv.alive)
    movable = [s for s in specs if not not_live(s)]
    chosen, missed = mover(movable, view, avoid) if movable else ({}, {})
    why_not_live = {s.uuid: not_live(s) or tuple(missed.get(s.uuid, ())) or ("no host fits",)
                    for s in specs if s.uuid not in chosen}
    cold_to: dict[str, str] = {}
    cold_missed: dict[str, tuple[str, ...]] = {}
    cold = [s for s in specs if s.uuid not in chosen and s.uuid not in unmanaged]
    if cold and placer is not None:  # asked without --cold-ok too: the refusal then says it would help
        after = replace(view, placements={**view.placements, **chosen})
        sources = frozenset(view.placements.get(s.uuid, "") for s in cold) - {""}
        cold_to, cold_missed = placer(cold, after, avoid | sources)
    out = []
    for s in specs:
        src = view.placements.get(s.uuid, "")
        reasons = why_not_live.get(s.uuid, ())
        if s.uuid in chosen:
            out.append(PlannedMove(s.uuid, s.name, s.memory_mib, src, chosen[s.uuid]))
        elif s.uuid in unmanaged:
            out.append(PlannedMove(s.uuid, s.name, s.memory_mib, src, None, reasons + (UNMANAGED_LIVE_ONLY,)))
        elif cold_ok and s.uuid in cold_to:
            out.append(PlannedMove(s.uuid, s.name, s.memory_mib, src, cold_to[s.uuid], reasons, "cold"))
        else:
            if s.uuid in cold_to:
                reasons = reasons[:-1] + (reasons[-1] + COLD_HINT,)
            elif cold_ok and placer is not None:
                reasons += tuple(f"cold: {r}" for r in cold_missed.get(s.uuid, ("no host fits",)))
            out.append(PlannedMove(s.uuid, s.name, s.memory_mib, src, None, reasons))
    return out


def _order(spec: VmSpec, limits: MigrationSection) -> tuple:
    return (-spec.memory_mib, spec.name, spec.uuid) if limits.order == "largest" else (spec.name, spec.uuid)


# -- the step ----------------------------------------------------------------------------------


def run(st: "_Step", mover: "Placer") -> None:
    """Requests first (each opens or closes an op), then every open op advances one round."""
    limits: MigrationSection = st.cfg.migration
    for r in st.view.requests:
        if r.kind in REQUESTS:
            _request(st, r, mover, limits)
    _settle(st)
    load = _Load.of(st)
    for op in sorted((o for o in st.view.ops.values() if o.kind in KINDS and not o.finished),
                     key=lambda o: (o.rev, o.id)):
        _advance(st, op, mover, limits, load)


def _request(st: "_Step", r: Request, mover: "Placer", limits: MigrationSection) -> None:
    st.consume(r)
    opts = dict(r.options)
    try:
        if r.kind == "drain":
            view = _view(st)
            cold_ok = bool(opts.get("cold_ok"))
            all_vms = bool(opts.get("all"))
            plan = check_drain(view, r.host, mover, limits, partial=bool(opts.get("partial")), cold_ok=cold_ok,
                               placer=st.placer, all_vms=all_vms)
            op_id = f"drain-{r.host}-{st.view.epoch}-{int(st.now * 1000)}"
            extra: dict[str, Any] = {"cold_ok": True, "cold": [m.vm for m in plan if m.mode == "cold"]} if cold_ok else {}
            if all_vms:
                extra["all"] = True
            _open(st, op_id, r.host, "drain", request=r.id, vms=[m.vm for m in plan],
                       partial=bool(opts.get("partial")), max_parallel=_int_opt(opts, "max_parallel"), **extra)
            st.change_state(r.host, S.DRAINING, "operator: haagent host drain")
            st.actions.append(Event("drain_started", host=r.host, op=op_id, detail={"vms": len(plan)}))
        elif r.kind == "undrain":
            _undrain(st, r, opts)
        elif r.kind == "migrate":
            m = check_migrate(_view(st), r.vm, str(opts.get("to") or ""), mover)
            op_id = f"migrate-{m.vm}-{st.view.epoch}-{int(st.now * 1000)}"
            _open(st, op_id, m.source, "migrate", request=r.id, vms=[m.vm],
                       to=str(opts.get("to") or ""))
    except Refused as exc:
        st.actions.append(Event(f"{r.kind}_refused", host=r.host, vm=r.vm, detail={"request": r.id,
                                                                                  "reason": str(exc)}))


BUSY = "another migration job is already running"


def _busy(error: str) -> bool:
    """libvirt refused the job because an abandoned one of the same VM still winds down (a cut-off
    peer can keep it ~a minute): not the VM's fault, so it does not count against max_attempts."""
    return BUSY in error


def _job_may_run(st: "_Step", op: Op, vm: str, source: str) -> bool:
    """Whether the source's last migration job of ``vm`` (in ``op``) may still run in its libvirtd.

    Its order can be gone already (the target was lost and failover resolved the migration) while
    the job is still winding down to its deadline; a new attempt then fails at once ("another
    migration job is already running"). The source's outcome record ends the wait, and so does a
    lease granted to the source after the order (its agent, which ran the job, is not the same).
    """
    last = next((s for s in reversed(op.steps) if s.step == "migrate_start" and s.detail.get("vm") == vm), None)
    if last is None or not last.rev:
        return False
    hv = st.view.hosts.get(source)
    if hv is None or hv.granted_rev > last.rev:
        return False
    report = hv.migration_outcomes.get(vm)
    return (report is None or (report.op, report.attempt) != (op.id, last.detail.get("attempt"))
            or report.outcome == "running")


def _open(st: "_Step", op_id: str, host: str, kind: str, **detail: Any) -> None:
    st.actions.append(JournalStep(op_id, host, OpStep("intent", st.now, detail), kind))


def _int_opt(opts: Mapping[str, Any], name: str) -> int:
    v = opts.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def _undrain(st: "_Step", r: Request, opts: Mapping[str, Any]) -> None:
    host = r.host
    state = st.states.get(host)
    if host not in st.view.hosts:
        raise Refused(f"unknown host {host!r}")
    if state not in (S.DRAINING, S.MAINTENANCE):
        raise Refused(f"{host} is {state.value if state else 'unknown'}, not draining or in maintenance")
    for op in _open_ops(st, "drain", host):
        st.journal(op.id, host, "done", cancelled="undrain")
    st.change_state(host, S.ACTIVE, "operator: haagent host undrain")
    st.actions.append(Event("host_undrained", host=host))
    if opts.get("return_vms"):
        drains = sorted((o for o in st.view.ops.values() if o.kind == "drain" and o.host == host),
                        key=lambda o: (o.rev, o.id))
        moved = {s.detail["vm"]: s.detail["to"] for s in (drains[-1].steps if drains else ())
                 if s.step == "migrated"}
        cold = {s.detail["vm"] for s in (drains[-1].steps if drains else ())
                if s.step == "migrated" and s.detail.get("mode") == "cold"}
        back = sorted(u for u, to in moved.items() if st.placements.get(u) == to)
        if back:
            op_id = f"return-{host}-{st.view.epoch}-{int(st.now * 1000)}"
            extra = {"cold_ok": True, "cold": sorted(cold & set(back))} if cold & set(back) else {}
            _open(st, op_id, host, "return", request=r.id, vms=back, to=host, **extra)


def _open_ops(st: "_Step", kind: str, host: str) -> list[Op]:
    return sorted((o for o in st.view.ops.values() if o.kind == kind and o.host == host and not o.finished),
                  key=lambda o: o.id)


def _view(st: "_Step", unmanaged: bool = False) -> ClusterView:
    """The view with this step's host states and placements, migrations in flight at their target;
    with ``unmanaged``, the running VMs haagent does not manage too (``with_unmanaged``)."""
    from haagent.manager.core import _view_with

    view = _view_with(st)
    if unmanaged:
        view = with_unmanaged(view)
    placements = dict(view.placements)
    for u, m in st.view.migrations.items():
        if u in view.specs:
            placements[u] = m.dest
    return replace(view, placements=placements)


def with_unmanaged(view: ClusterView) -> ClusterView:
    """The view with each running VM haagent does not manage as a spec placed where it runs (its
    host's report: name, vcpus, memory), so that placing around them, and moving them, counts them."""
    specs, placements = dict(view.specs), dict(view.placements)
    for h, hv in sorted(view.hosts.items()):
        if not hv.alive:
            continue
        for u, spec in sorted(hv.unmanaged.items()):
            if u not in specs:
                specs[u] = spec
                placements[u] = h
    return replace(view, specs=specs, placements=placements)


def _unmanaged_on(st: "_Step", uuid: str) -> list[str]:
    """The live hosts whose report lists ``uuid`` among the VMs haagent does not manage."""
    return sorted(h for h, hv in st.view.hosts.items() if hv.alive and uuid in hv.unmanaged)


def _settle(st: "_Step") -> None:
    """Every migration whose two sides are alive: done once the VM runs on the target only; failed
    once the source says so and the VM is not on the target. Lost sides are failover's."""
    from haagent.manager.core import _running_on

    for uuid, m in sorted(st.view.migrations.items()):
        if not m.op:
            continue  # not an order of this executor (no op, no attempt): failover's rules only
        src, dst = st.view.hosts.get(m.source), st.view.hosts.get(m.dest)
        if src is None or dst is None or st.states.get(m.source) in LOST or st.states.get(m.dest) in LOST:
            continue
        if not (src.alive and dst.alive):
            continue  # a side without a lease: its report may be stale; it comes back or is failed over
        managed = uuid in st.view.specs or uuid in st.placements  # (a spec may be unreadable for a while)
        where = _running_on(st, uuid) if managed else _unmanaged_on(st, uuid)
        op = st.view.ops.get(m.op)
        journal = op is not None and not op.finished
        report = src.migration_outcomes.get(uuid)
        if report is not None and (report.op, report.attempt) != (m.op, m.attempt):
            report = None  # an older order's
        if m.mode == "cold-start":
            if where == [m.dest]:  # started on the target: the cold move is done
                st.actions.append(ClearMigration(uuid))
                if journal:
                    st.journal(m.op, op.host, "migrated", vm=uuid, to=m.dest, attempt=m.attempt, mode="cold")
                st.actions.append(Event("migration_completed", host=m.dest, vm=uuid, op=m.op,
                                        detail={"from": m.source, "mode": "cold"}))
                continue
            answer = dst.migration_outcomes.get(uuid)
            if (not where and answer is not None and (answer.op, answer.attempt) == (m.op, m.attempt)
                    and answer.outcome != "running"):
                _cold_start_failed(st, uuid, m, op if journal else None, answer.outcome, answer.error)
            elif not where:
                _cold_start_waiting(st, uuid, m, op)
            continue  # (until then the target's agent starts it; nobody else may)
        if m.mode == "cold" and report is not None and not where and (
                report.outcome == "completed" or (report.outcome != "running" and report.location == "none")):
            # Shut down on the source (even if the call failed, the VM is off there) and running
            # nowhere: placed on the target, whose agent starts it (the order's second half). The
            # source never restarts it: it is not its own.
            st.actions.append(SetPlacement(uuid, m.dest, m.op, f"cold move from {m.source}"))
            st.placements[uuid] = m.dest
            st.actions.append(StartMigration(uuid, m.source, m.dest, st.cfg.migration.cold_start_deadline(), m.op,
                                             m.attempt, mode="cold-start"))
            if journal:
                st.journal(m.op, op.host, "cold_stopped", vm=uuid, to=m.dest, attempt=m.attempt,
                           duration_s=round(report.duration_s, 3))
            st.actions.append(Event("cold_move_stopped", host=m.source, vm=uuid, op=m.op, detail={"to": m.dest}))
            continue
        if m.mode == "cold" and (report is None or report.outcome in ("completed", "running")):
            continue  # shutting down, or stopped and the reports have not caught up
        landed = report is not None and report.outcome == "completed" and report.location == "destination"
        if where == [m.dest] or (landed and not where):
            # On the target only; or the source saw it land there and nobody runs it now (it
            # stopped on the target since): either way it belongs to the target.
            if managed:  # (a VM haagent does not manage has no placement: it is just there now)
                st.actions.append(SetPlacement(uuid, m.dest, m.op, f"migrated from {m.source}"))
                st.placements[uuid] = m.dest
            st.actions.append(ClearMigration(uuid))
            stats = {}
            if report is not None:
                stats = {"duration_s": report.duration_s, "downtime_ms": report.downtime_ms}
            if journal:
                st.journal(m.op, op.host, "migrated", vm=uuid, to=m.dest, attempt=m.attempt, **stats)
            st.actions.append(Event("migration_completed", host=m.dest, vm=uuid, op=m.op,
                                    detail={"from": m.source, **stats}))
            continue
        if report is None or report.outcome in ("completed", "running"):
            continue  # running, or done and the reports have not caught up
        if len(where) > 1 or (where and where != [m.source]):
            continue  # two copies are core's alert; a copy elsewhere waits for the reports
        st.actions.append(ClearMigration(uuid))
        if journal:
            st.journal(m.op, op.host, "migrate_failed", vm=uuid, to=m.dest, attempt=m.attempt,
                       outcome=report.outcome, error=report.error[:200])
        st.actions.append(Event("migration_failed", host=m.source, vm=uuid, op=m.op,
                                detail={"to": m.dest, "outcome": report.outcome, "error": report.error[:200]}))


def _cold_start_waiting(st: "_Step", uuid: str, m: Migration, op: Op | None) -> None:
    """A cold move's start not answered yet: time it on the leader's clock (a new leader starts
    afresh). The target gives the order up itself at its deadline; one that neither starts the
    VM nor gives up well past it (its libvirtd does not answer, its agent is stuck) cannot be
    bypassed safely, as it may still start the VM: an alert says so, and the VM waits there."""
    key = (uuid, m.op, m.attempt)
    since = st.cold_starts[key] = st.status.cold_starts.get(key, st.now)
    waited = st.now - since
    if waited <= m.deadline + 2 * st.cfg.lease_ttl:
        return
    name = st.view.specs[uuid].name if uuid in st.view.specs else uuid
    st.alert("drain_paused", host=op.host if op is not None else m.source, vm=uuid, message=(
        f"{op.kind if op is not None else 'cold move'} {m.op}: {name} is shut down and {m.dest} has neither "
        f"started it nor given its start up, well past the order's deadline ({m.deadline:g}s); it stays "
        f"placed on {m.dest}, whose agent starts it once it can (does its libvirtd answer?); if {m.dest} is "
        "lost, failover takes it over"))


def _cold_start_failed(st: "_Step", uuid: str, m: Migration, op: Op | None, outcome: str, error: str) -> None:
    """The target gave a cold move's start up: it never started the VM for this order and never
    will (its agent answered from the loop that starts VMs, after a libvirt listing without it),
    and the VM runs nowhere. So it may go elsewhere, never twice: retried on another target (the
    restart rules, as the first), up to ``max_attempts`` per VM like a live migration; after that,
    or with no target left, or when its operation is closed, back to its source (whose agent
    restarts it unless its HA policy is none), where the drain's usual pause and alert take it."""
    limits = st.cfg.migration
    st.actions.append(Event("migration_failed", host=m.dest, vm=uuid, op=m.op,
                            detail={"to": m.dest, "outcome": outcome, "error": error[:200], "mode": "cold-start"}))
    tried = [str(s.detail.get("to", "")) for s in (op.steps if op is not None else ())
             if s.step == "migrate_failed" and s.detail.get("vm") == uuid and not _busy(str(s.detail.get("error", "")))]
    tried.append(m.dest)
    spec = st.view.specs.get(uuid)
    dest = None
    if op is not None and spec is not None and len(tried) < limits.max_attempts:
        st.journal(m.op, op.host, "migrate_failed", vm=uuid, to=m.dest, attempt=m.attempt, outcome=outcome,
                   error=error[:200], mode="cold-start")
        base = {h for h, s in st.states.items() if s is not S.ACTIVE or not st.view.hosts[h].alive} | {m.source}
        if op.kind == "return":  # back to its own host, or nowhere
            base |= {h for h in st.view.hosts if h != op.host}
        view = _view(st)
        chosen, _ = st.placer([spec], view, frozenset(base | set(tried)))
        if uuid not in chosen:  # only hosts it failed on are left: a passing cause, maybe
            chosen, _ = st.placer([spec], view, frozenset(base))
        dest = chosen.get(uuid)
    elif op is not None:
        st.journal(m.op, op.host, "migrate_failed", vm=uuid, to=m.dest, attempt=m.attempt, outcome=outcome,
                   error=error[:200], mode="cold-start")
    if dest is not None and op is not None:
        attempt = 1 + sum(1 for s in op.steps if s.step == "migrate_start" and s.detail.get("vm") == uuid)
        deadline = limits.cold_start_deadline()
        st.actions.append(SetPlacement(uuid, dest, m.op, f"cold move from {m.source}: {m.dest} did not start it"))
        st.placements[uuid] = dest
        st.actions.append(StartMigration(uuid, m.source, dest, deadline, m.op, attempt, mode="cold-start"))
        st.journal(m.op, op.host, "migrate_start", vm=uuid, to=dest, attempt=attempt, deadline=deadline,
                   mode="cold-start")
        st.actions.append(Event("migration_started", host=m.source, vm=uuid, op=m.op,
                                detail={"to": dest, "attempt": attempt, "mode": "cold-start"}))
        return
    st.actions.append(ClearMigration(uuid))
    st.actions.append(SetPlacement(uuid, m.source, m.op, f"cold move given up: {m.dest} did not start it"))
    st.placements[uuid] = m.source


@dataclass
class _Load:
    """Migrations in flight per source, per target and in total, including this step's."""

    out: dict[str, int]
    into: dict[str, int]
    total: int
    settled: set[str]
    started: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, st: "_Step") -> "_Load":
        settled = {a.vm for a in st.actions if isinstance(a, ClearMigration)}
        out: dict[str, int] = {}
        into: dict[str, int] = {}
        for u, m in st.view.migrations.items():
            if u not in settled:
                out[m.source] = out.get(m.source, 0) + 1
                into[m.dest] = into.get(m.dest, 0) + 1
        return cls(out, into, sum(out.values()), settled)

    def add(self, vm: str, source: str, dest: str) -> None:
        self.started.add(vm)
        self.out[source] = self.out.get(source, 0) + 1
        self.into[dest] = self.into.get(dest, 0) + 1
        self.total += 1


def _advance(st: "_Step", op: Op, mover: "Placer", limits: MigrationSection, load: _Load) -> None:
    from haagent.manager.core import _running_on

    intent = op.last("intent")
    detail = intent.detail if intent else {}
    if op.kind == "drain" and st.states.get(op.host) in LOST:
        st.journal(op.id, op.host, "done", aborted=f"{op.host} was lost while draining; failover takes over")
        st.actions.append(Event("drain_aborted", host=op.host, op=op.id))
        return
    in_flight = {u for u, m in st.view.migrations.items() if m.op == op.id and u not in load.settled}
    # A VM moves by one migration at a time: one of another op (or started this step) waits.
    busy = {u for u in st.view.migrations if u not in load.settled} | load.started
    moved = {s.detail.get("vm") for s in op.steps if s.step == "migrated"}
    moved |= {a.vm for a in st.actions if isinstance(a, SetPlacement) and a.op == op.id}
    moved |= {a.step.detail.get("vm") for a in st.actions  # settled in this very step
              if isinstance(a, JournalStep) and a.op == op.id and a.step.step == "migrated"}
    failed: dict[str, list[str]] = {}
    last_error: dict[str, str] = {}
    for s in op.steps:
        if s.step == "migrate_failed" and not _busy(str(s.detail.get("error", ""))):
            vm = s.detail.get("vm", "")
            failed.setdefault(vm, []).append(str(s.detail.get("to", "")))
            last_error[vm] = f"{s.detail.get('outcome')} to {s.detail.get('to')}: {s.detail.get('error') or 'no detail'}"
    for a in st.actions:  # failures settled in this very step
        if isinstance(a, Event) and a.kind == "migration_failed" and a.op == op.id \
                and not _busy(str(a.detail.get("error", ""))):
            failed.setdefault(a.vm, []).append(str(a.detail.get("to", "")))
            last_error[a.vm] = f"{a.detail.get('outcome')} to {a.detail.get('to')}: {a.detail.get('error') or 'no detail'}"
    cold_ok = bool(detail.get("cold_ok"))
    all_vms = bool(detail.get("all"))
    extra = st.view.hosts[op.host].unmanaged if all_vms and op.host in st.view.hosts else {}
    known = {**extra, **st.view.specs}
    if op.kind == "drain":
        todo = [u for u, h in sorted(st.placements.items()) if h == op.host and u not in busy
                and u in st.view.specs and (cold_ok or not not_live(st.view.specs[u]))]
        todo += sorted(u for u in extra if u not in busy and u not in st.view.specs and u not in st.placements
                       and not any(k.endswith(f"/vms/{u}/spec") for k, _ in st.view.bad_records))
        fixed = ""
    elif op.kind == "return":
        fixed = op.host
        todo = [u for u in detail.get("vms", []) if u not in moved and u not in busy
                and u in st.placements and st.placements[u] != op.host]
    elif op.kind == "rebalance":
        # Each VM to the host its round planned, from the host it was planned from, while both
        # are active: a move the cluster has moved past (a host lost or draining, the VM moved
        # by failover) is dropped, never re-planned here; the next round plans afresh.
        fixed = ""
        cancel = next((o for o in st.view.ops.values() if o.kind in ("drain", "return") and not o.finished), None)
        if cancel is not None and not op.has("cancelling"):
            st.journal(op.id, op.host, "cancelling", reason=f"{cancel.kind} of {cancel.host} (op {cancel.id})")
        dropped = {s.detail.get("vm") for s in op.steps if s.step == "dropped"}
        # A scheduled round's window binds its moves: once it has closed no move starts (nor is
        # retried); migrations in flight finish, since aborting one midway costs more than it saves.
        closed = "" if cancel is not None or op.has("cancelling") else rebalance.window_closed(op, st.wall)
        left = [u for u in detail.get("vms", []) if u not in moved and u not in in_flight and u not in dropped]
        if closed and left:  # (with only migrations in flight left, there is nothing to drop yet)
            st.journal(op.id, op.host, "cancelling", reason=closed, dropped=left)
            st.actions.append(Event("rebalance_window_closed", op=op.id, detail={
                "dropped": len(left), "vms": left, "in_flight": len(in_flight), "reason": closed}))
        todo = [] if cancel is not None or closed or op.has("cancelling") else [
            u for u in detail.get("vms", []) if u not in moved and u not in busy and u not in dropped
            and st.placements.get(u) == rebalance.move_source(op, u)
            and _running_on(st, u) == [rebalance.move_source(op, u)]  # (stopped since the round: dropped)
            and st.states.get(rebalance.move_source(op, u)) is S.ACTIVE
            and st.states.get(rebalance.move_target(op, u)) is S.ACTIVE]
    else:
        fixed = str(detail.get("to", ""))
        todo = [u for u in detail.get("vms", []) if u not in moved and u not in busy and u in st.placements
                and st.placements[u] != fixed]
    exhausted = sorted(u for u in todo if len(failed.get(u, [])) >= limits.max_attempts)
    if exhausted:
        names = ", ".join(known[u].name if u in known else u for u in exhausted)
        if not op.has("paused"):
            st.journal(op.id, op.host, "paused", vms=exhausted)
        if not in_flight and op.kind != "drain":
            st.journal(op.id, op.host, "done", failed=exhausted)
            return
        then = (f"fix the cause, then 'haagent host undrain {op.host}' and drain again" if op.kind != "rebalance"
                else "the rebalance ends once its migrations in flight settle; fix the cause before the next round")
        st.alert("drain_paused", host=op.host, message=(
            f"{op.kind} {op.id} paused: {names} failed to migrate {limits.max_attempts} times "
            f"(last: {last_error.get(exhausted[0], 'unknown')}); {then}"))
        return
    if op.kind == "drain":
        waiting = [u for u, h in st.placements.items() if h == op.host and u in busy - in_flight]
        waiting += [u for u in extra if u in busy - in_flight]
    else:
        waiting = [u for u in detail.get("vms", []) if u in busy - in_flight and u not in moved]
    if not todo and not in_flight and not waiting:
        if op.kind == "drain":
            if op.host in st.view.hosts and st.states.get(op.host) is S.DRAINING:
                st.journal(op.id, op.host, "done", moved=len(moved))
                st.change_state(op.host, S.MAINTENANCE, "drained: no VMs left")
                st.actions.append(Event("host_maintenance", host=op.host, op=op.id))
        elif op.kind == "rebalance":
            dropped = sorted(u for u in detail.get("vms", []) if u not in moved)
            st.journal(op.id, op.host, "done", moved=len(moved), dropped=dropped)
            st.actions.append(Event("rebalance_finished", op=op.id, detail={"moved": len(moved), "dropped": dropped}))
        else:
            st.journal(op.id, op.host, "done", moved=len(moved))
        return
    if st.in_grace or st.storm():
        return  # a new leader first lets agents reconnect; a storm holds everything
    parallel = int(detail.get("max_parallel") or 0) or limits.max_outgoing
    running = len(in_flight)
    specs = sorted((known[u] for u in todo if u in known), key=lambda s: _order(s, limits))
    base = frozenset(h for h, s in st.states.items() if s is not S.ACTIVE or not st.view.hosts[h].alive)
    view = _view(st, unmanaged=all_vms)
    blocked = []
    for spec in specs:
        managed = spec.uuid in st.view.specs or spec.uuid in st.placements
        source = st.placements[spec.uuid] if managed else op.host
        if running >= parallel or load.total >= limits.max_cluster or load.out.get(source, 0) >= limits.max_outgoing:
            break
        if st.states.get(source) in LOST or not st.view.hosts.get(source, None) or not st.view.hosts[source].alive:
            continue  # failover's VM now
        where = _running_on(st, spec.uuid) if managed else _unmanaged_on(st, spec.uuid)
        if where != [source]:
            if not where and spec.policy == "none" and spec.uuid in failed:
                # back on its host after its cold start failed, where nothing restarts it
                blocked.append(f"{spec.name}: shut down and not running ({last_error.get(spec.uuid)}); "
                               f"HA policy none: start it by hand on {source}, or undrain")
            continue  # not running (its agent restarts it first), or not only there
        if _job_may_run(st, op, spec.uuid, source):
            continue  # the source has not said how its last job of this VM ended: libvirt may still run it
        full = frozenset(h for h, n in load.into.items() if n >= limits.max_incoming)
        tried = frozenset(failed.get(spec.uuid, ()))
        to = fixed or (rebalance.move_target(op, spec.uuid) if op.kind == "rebalance" else "")
        if op.kind == "rebalance" and to in full:
            continue  # its planned target takes it once a migration into it ends
        avoid = base | full | ({h for h in st.view.hosts if h != to} if to else set())
        # Another target than the ones it failed on, if one takes it; else the same one again
        # (the only host left may have failed it for a passing reason, e.g. a job still winding down).
        # Live when it can; cold (--cold-ok) when it cannot: not_live, or no live target.
        mode = "live"
        never = not_live(spec)
        chosen, missed = ({}, {spec.uuid: never}) if never else mover([spec], view, frozenset(avoid | tried))
        if spec.uuid not in chosen and tried - avoid and not never:
            chosen, missed = mover([spec], view, frozenset(avoid))
        if spec.uuid not in chosen and cold_ok and managed:
            mode = "cold"
            chosen, cold_missed = st.placer([spec], view, frozenset(avoid | tried | {source}))
            if spec.uuid not in chosen and tried - avoid:
                chosen, cold_missed = st.placer([spec], view, frozenset(avoid | {source}))
            missed = {spec.uuid: tuple(missed.get(spec.uuid, ())) + tuple(
                f"cold: {r}" for r in cold_missed.get(spec.uuid, ()))}
        dest = chosen.get(spec.uuid)
        if dest == source:
            continue  # never: the mover keeps a VM off its own host
        if dest is None and op.kind == "rebalance":
            # Its planned target no longer takes it (the cluster changed since the round): the
            # move is dropped, not re-planned here and not waited for; the next round plans afresh.
            st.journal(op.id, op.host, "dropped", vm=spec.uuid, to=to,
                       reason=", ".join(missed.get(spec.uuid, ())) or "no longer fits")
            continue
        if dest is None:
            if not (full - base):  # not merely waiting for a busy target
                blocked.append(f"{spec.name}: {', '.join(missed.get(spec.uuid, ())) or 'no host fits'}")
            continue
        attempt = 1 + sum(1 for s in op.steps if s.step == "migrate_start" and s.detail.get("vm") == spec.uuid)
        if mode == "cold":
            deadline = limits.cold_shutdown_timeout
            st.journal(op.id, op.host, "migrate_start", vm=spec.uuid, to=dest, attempt=attempt, deadline=deadline,
                       mode="cold")
            st.actions.append(StartMigration(spec.uuid, source, dest, deadline, op.id, attempt, mode="cold"))
        else:
            tuning = limits.tuning(spec.migration)
            deadline = limits.deadline(spec.memory_mib, int(dict(tuning)["bandwidth_cap"]))
            st.journal(op.id, op.host, "migrate_start", vm=spec.uuid, to=dest, attempt=attempt, deadline=deadline)
            st.actions.append(StartMigration(spec.uuid, source, dest, deadline, op.id, attempt, tuning))
        st.actions.append(Event("migration_started", host=source, vm=spec.uuid, op=op.id,
                                detail={"to": dest, "attempt": attempt, **({"mode": mode} if mode != "live" else {})}))
        load.add(spec.uuid, source, dest)
        running += 1
        view = replace(view, placements={**view.placements, spec.uuid: dest})
    if blocked:
        st.alert("drain_paused", host=op.host, message=f"{op.kind} {op.id} cannot place " + "; ".join(blocked))


__all__ = ["Alert", "KINDS", "PlannedMove", "Refused", "check_drain", "check_migrate", "plan_moves", "run"]
