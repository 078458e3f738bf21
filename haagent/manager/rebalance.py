"""The leader's scheduled rebalancing: one round every ``interval`` inside the window, pure.

Called by ``manager.core.step`` once per step, after the migration executor. The rules
(docs/rebalance.md):

* a round is due every ``[rebalance] interval`` on the leader's clock (a new leader waits one
  interval), and runs only while the wall clock is inside ``window`` (``in_window``); its intent
  keeps the window, and the executor starts none of its moves once it has closed
  (``window_closed``; moves in flight finish, the rest are dropped); a round is skipped while
  the new leader's grace lasts, the storm guard holds, a host is lost or being failed over, a
  host drains, or any operation of the migration executor is open (never two at once);
* a round plans from the live inventory (smoothed load) with the ``Rebalancer`` port: only
  ``active`` hosts with a lease take part, every placement rule holds after every move; VMs a
  rebalance moved within ``vm_cooldown`` (the journals say which, so a new leader knows them),
  VMs migrating and VMs not running only where placed stay where they are;
* hysteresis: nothing is planned while the score is at or below ``threshold``, each move must
  gain ``min_gain``, a move is made only once two rounds in a row plan it, and a plan never sends
  a VM back to a host a rebalance took it from while that move's journal is kept (the plan is
  cut there, or re-planned without that VM);
* ``advise`` writes the plan as a ``rebalance_advised`` event (and webhook), once per distinct
  plan; ``auto`` opens an op of kind ``rebalance`` that the migration executor carries out with
  the limits, journal and failure handling of a drain (``manager.drain``); ``off`` plans nothing
  on its own. ``haagent rebalance run`` asks for a round now, whatever the mode, window or
  threshold, and is refused (an event says why) while the executor is busy.

The step returns what a round did in ``ManagerStatus.rebalance_last`` (the shell turns it into
metrics); nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from haagent.config import RebalanceSection, window_problem
from haagent.model import HostState as S
from haagent.state.view import ClusterView, Event, JournalStep, Op, OpStep

if TYPE_CHECKING:
    from haagent.manager.core import _Step

KIND = "rebalance"
OP_HOST = "cluster"  # an op's head names a host; a rebalance is the whole cluster's
EXECUTOR_KINDS = ("drain", "return", "migrate", KIND)  # ops of the migration executor
REPLANS = 4  # plans tried per round when a plan's first move would send a VM back
BUSY_STATES = frozenset({S.SUSPECT, S.FENCING, S.FENCED, S.RECOVERING, S.DRAINING})


@dataclass(frozen=True)
class RoundLimits:
    max_moves: int | None
    max_gib: float | None
    min_gain: float


@dataclass(frozen=True)
class RoundMove:
    vm: str  # uuid
    name: str
    source: str
    dest: str
    memory_mib: int
    score_after: float
    why: str = ""

    def row(self) -> dict[str, Any]:
        return {"vm": self.vm, "name": self.name, "from": self.source, "to": self.dest,
                "gib": round(self.memory_mib / 1024, 3), "score_after": round(self.score_after, 6), "why": self.why}


@dataclass(frozen=True)
class RoundPlan:
    moves: tuple[RoundMove, ...]
    score_before: float
    score_after: float
    stopped: str = ""

    @property
    def gib(self) -> float:
        return sum(m.memory_mib for m in self.moves) / 1024

    def cut(self, n: int) -> "RoundPlan":
        """The plan's first ``n`` moves (every prefix of a plan is a valid, improving plan)."""
        moves = self.moves[:n]
        return RoundPlan(moves, self.score_before, moves[-1].score_after if moves else self.score_before,
                         self.stopped if n >= len(self.moves) else "cut")


# rebalancer(view, VMs that must stay, limits) -> the plan (the live cluster through policies.rebalance)
Rebalancer = Callable[[ClusterView, frozenset[str], RoundLimits], RoundPlan]


@dataclass(frozen=True)
class RoundRecord:
    """What the last round did, for the shell's metrics: result is planned, quiet or skipped."""

    seq: int
    result: str
    mode: str
    score: float | None = None
    moves: int = 0
    reason: str = ""


@dataclass(frozen=True)
class RebalanceMemory:
    """The leader's rebalance memory between steps (timers on its clock; not persisted)."""

    due: float | None = None  # when the next scheduled round is due (None: not yet set)
    advised: tuple[tuple[str, str, str], ...] = ()  # the last plan advised, as (vm, from, to)
    proposed: tuple[tuple[str, str, str], ...] = ()  # the last round's plan (before confirmation)
    last: RoundRecord | None = None
    seq: int = 0


def _local_minute(wall: float, tz: str) -> datetime:
    from zoneinfo import ZoneInfo

    when = datetime.fromtimestamp(wall, timezone.utc).astimezone(ZoneInfo(tz))
    return when.replace(second=0, microsecond=0, tzinfo=None)


def in_window(window: str, tz: str, wall: float) -> bool:
    """Whether the wall-clock second ``wall`` falls in a minute the cron expression ``window`` matches.

    The one rule for "open": a cron expression matches minutes, so the window is open for the whole
    of each matching minute (read in ``tz``) and closed from the first second of a minute it does
    not match; "always" is never closed.
    """
    if window == "always":
        return True
    from croniter import croniter

    return bool(croniter.match(window, _local_minute(wall, tz)))


def window_closed(op: Op, wall: float) -> str:
    """Why the rebalance ``op`` may start no more moves at ``wall`` ("" while it may): the window its
    scheduled round ran in (kept in its intent) has closed. Rounds run on request carry no window."""
    intent = op.last("intent")
    detail = intent.detail if intent else {}
    window, tz = str(detail.get("window") or "always"), str(detail.get("timezone") or "UTC")
    if window == "always":
        return ""
    problem = window_problem(window, tz)
    if problem:
        return f"its round's window cannot be read ({problem})"
    if in_window(window, tz, wall):
        return ""
    return f"the window {window!r} ({tz}) closed at {_local_minute(wall, tz):%H:%M}"


# -- what the command line and the leader both ask -----------------------------------------------


def executor_busy(view: ClusterView, pending: tuple[str, ...] = ()) -> str:
    """Why no rebalance may start now ("" when it may): an open op of the migration executor, a
    draining host, or ``pending`` request kinds waiting for the leader."""
    for op in sorted(view.ops.values(), key=lambda o: (o.rev, o.id)):
        if op.kind in EXECUTOR_KINDS and not op.finished:
            what = f"host {op.host}" if op.kind != KIND else "the cluster"
            return f"a {op.kind} of {what} is in flight (op {op.id})"
    draining = sorted(h for h, hv in view.hosts.items() if hv.state is S.DRAINING)
    if draining:
        return f"{', '.join(draining)} is draining"
    waiting = sorted({r.kind for r in view.requests if r.kind in pending})
    if waiting:
        return f"a {waiting[0]} request waits for the leader"
    return ""


def frozen_vms(view: ClusterView, wall: float, cooldown: float) -> dict[str, str]:
    """VMs a round must leave where they are, each with why: moved by a rebalance within
    ``cooldown`` (by the journals), migrating, or not running only where placed."""
    out: dict[str, str] = {}
    for op in view.ops.values():
        if op.kind != KIND:
            continue
        for s in op.steps:
            vm = s.detail.get("vm")
            if not isinstance(vm, str):
                continue
            if s.step == "migrated" and wall - s.at < cooldown:
                out[vm] = f"moved by a rebalance {max(wall - s.at, 0):.0f}s ago (vm_cooldown {cooldown:g}s)"
            elif s.step == "migrate_failed" and wall - s.at < cooldown:
                out.setdefault(vm, f"its rebalance move failed {max(wall - s.at, 0):.0f}s ago")
            elif s.step == "migrate_start" and not op.finished:
                out.setdefault(vm, "its rebalance move is under way")
    for u in view.migrations:
        out.setdefault(u, "migrating")
    running: dict[str, list[str]] = {}
    for h, hv in view.hosts.items():
        for u in hv.running:
            running.setdefault(u, []).append(h)
    for u, h in view.placements.items():
        if running.get(u) != [h]:
            out.setdefault(u, "not running (only) where it is placed")
    return out


def taken_from(view: ClusterView) -> dict[str, set[str]]:
    """vm -> the hosts a rebalance moved it off, as long as the journals remember it."""
    out: dict[str, set[str]] = {}
    for op in view.ops.values():
        if op.kind != KIND:
            continue
        intent = op.last("intent")
        moves = intent.detail.get("moves", {}) if intent else {}
        for s in op.steps:
            vm = s.detail.get("vm")
            planned = moves.get(vm) if isinstance(vm, str) else None
            if s.step == "migrated" and isinstance(planned, dict) and planned.get("from"):
                out.setdefault(vm, set()).add(str(planned["from"]))
    return out


def plan_round(view: ClusterView, rebalancer: Rebalancer, cfg: RebalanceSection, wall: float,
               max_moves: int | None = None) -> tuple[RoundPlan, dict[str, str]]:
    """A round's plan now (no threshold applied), and the VMs it left alone with why."""
    frozen = frozen_vms(view, wall, cfg.vm_cooldown)
    back = taken_from(view) if cfg.vm_cooldown > 0 else {}
    limits = RoundLimits(cfg.max_moves_per_round if max_moves is None else max_moves, cfg.max_gib_per_round,
                         cfg.min_gain)
    plan = rebalancer(view, frozenset(frozen), limits)
    for _ in range(REPLANS):
        k = next((i for i, m in enumerate(plan.moves) if m.dest in back.get(m.vm, ())), None)
        if k is None:
            break
        if k > 0:
            return plan.cut(k), frozen
        m = plan.moves[0]
        frozen[m.vm] = f"a rebalance took it off {m.dest} recently: not sent back"
        plan = rebalancer(view, frozenset(frozen), limits)
    else:
        plan = plan.cut(0)
    return plan, frozen


# -- the step ----------------------------------------------------------------------------------


def run(st: "_Step", rebalancer: Rebalancer, wall: float) -> None:
    """Operator requests first, then the scheduled round if one is due."""
    cfg: RebalanceSection = st.cfg.rebalance
    mem: RebalanceMemory = st.rebalance
    for r in st.view.requests:
        if r.kind == KIND:
            st.consume(r)
            _round(st, rebalancer, wall, cfg, requested=r)
    if cfg.mode == "off":
        return
    if mem.due is None:
        st.rebalance = mem = _with(mem, due=st.status.leader_since + cfg.interval)
    if st.now < mem.due:
        return
    st.rebalance = _with(st.rebalance, due=st.now + cfg.interval)
    if not in_window(cfg.window, cfg.timezone, wall):
        return  # not a round: the window is closed
    _round(st, rebalancer, wall, cfg)


def _with(mem: RebalanceMemory, **changes: Any) -> RebalanceMemory:
    return replace(mem, **changes)


def _blocked(st: "_Step") -> str:
    if st.in_grace:
        return "a new leader lets agents reconnect first"
    if st.storm_hold:
        return "the storm guard holds"
    busy = sorted(h for h, s in st.states.items() if s in BUSY_STATES)
    if busy:
        return f"{', '.join(busy)} is {st.states[busy[0]].value}"  # type: ignore[union-attr]
    opened = [a for a in st.actions if isinstance(a, JournalStep) and a.step.step == "intent"
              and a.kind in EXECUTOR_KINDS]
    if opened:
        return f"a {opened[0].kind} opened this round (op {opened[0].op})"
    return executor_busy(st.view)


def _record(st: "_Step", result: str, mode: str, score: float | None = None, moves: int = 0,
            reason: str = "") -> None:
    mem = st.rebalance
    st.rebalance = _with(mem, seq=mem.seq + 1, last=RoundRecord(mem.seq + 1, result, mode, score, moves, reason))


def _round(st: "_Step", rebalancer: Rebalancer, wall: float, cfg: RebalanceSection, requested=None) -> None:
    mode = "auto" if requested is not None else cfg.mode
    why = _blocked(st)
    if why:
        if requested is not None:
            st.actions.append(Event("rebalance_refused", detail={"request": requested.id, "reason": why}))
        _record(st, "skipped", mode, reason=why)
        return
    opts = dict(requested.options) if requested is not None else {}
    max_moves = opts.get("max_moves") if isinstance(opts.get("max_moves"), int) else None
    from haagent.manager.core import _view_with

    view = _view_with(st)
    plan, _frozen = plan_round(view, rebalancer, cfg, wall, max_moves)
    score = plan.score_before
    if requested is None:
        proposed = tuple((m.vm, m.source, m.dest) for m in plan.moves) if score > cfg.threshold else ()
        previous = set(st.rebalance.proposed)
        st.rebalance = _with(st.rebalance, proposed=proposed)
        if not proposed:
            st.rebalance = _with(st.rebalance, advised=())
            _record(st, "quiet", mode, score)
            return
        # A move is made only once two rounds in a row plan it: a plan born of a passing
        # burst of load is not the same plan one interval later.
        k = next((i for i, m in enumerate(proposed) if m not in previous), len(proposed))
        if k == 0:
            _record(st, "quiet", mode, score, reason="the next round must plan the same moves first")
            return
        plan = plan.cut(k)
    rows = [m.row() for m in plan.moves]
    summary = {"score_before": round(plan.score_before, 6), "score_after": round(plan.score_after, 6),
               "gib": round(plan.gib, 3), "moves": rows, "threshold": cfg.threshold}
    if mode == "advise":
        signature = tuple((m.vm, m.source, m.dest) for m in plan.moves)
        if signature == st.rebalance.advised:
            _record(st, "quiet", mode, score, reason="the same plan was advised already")
            return
        st.actions.append(Event("rebalance_advised", detail=summary))
        st.rebalance = _with(st.rebalance, advised=signature)
        _record(st, "planned", mode, score, len(plan.moves))
        return
    op_id = f"rebalance-{st.view.epoch}-{int(st.now * 1000)}"
    detail = {"vms": [m.vm for m in plan.moves],
              "moves": {m.vm: {"from": m.source, "to": m.dest} for m in plan.moves},
              "score_before": summary["score_before"], "score_after": summary["score_after"],
              "gib": summary["gib"], "request": requested.id if requested is not None else ""}
    if requested is None and cfg.window != "always":
        # The window binds the moves, not only the round's start (window_closed): kept with the
        # op so that the executor, and a new leader, know it.
        detail.update(window=cfg.window, timezone=cfg.timezone)
    st.actions.append(JournalStep(op_id, OP_HOST, OpStep("intent", st.now, detail), KIND))
    st.actions.append(Event("rebalance_started", op=op_id, detail=summary))
    if not plan.moves:
        st.journal(op_id, OP_HOST, "done", moved=0)
        st.actions.append(Event("rebalance_finished", op=op_id, detail={"moved": 0}))
        _record(st, "quiet", mode, score)
        return
    _record(st, "planned", mode, score, len(plan.moves))


def move_target(op: Op, vm: str) -> str:
    """The host a rebalance op planned ``vm`` for ("" if none)."""
    intent = op.last("intent")
    moves = intent.detail.get("moves", {}) if intent else {}
    m = moves.get(vm)
    return str(m.get("to", "")) if isinstance(m, dict) else ""


def move_source(op: Op, vm: str) -> str:
    intent = op.last("intent")
    moves = intent.detail.get("moves", {}) if intent else {}
    m = moves.get(vm)
    return str(m.get("from", "")) if isinstance(m, dict) else ""


__all__ = ["KIND", "RebalanceMemory", "Rebalancer", "RoundLimits", "RoundMove", "RoundPlan", "RoundRecord",
           "executor_busy", "frozen_vms", "in_window", "move_source", "move_target", "plan_round", "run",
           "window_closed"]
