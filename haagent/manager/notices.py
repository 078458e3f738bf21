"""What the leader tells the outside world (webhooks) about one committed step, as
``(event type, data)`` pairs. Pure: the shell's sink calls it after a step's write commits.

Types (``[notify] events`` globs select among them; docs/automation.md shows each payload):

* ``host.state_changed``: a host moved from one state to another, with the reason and failover;
* ``failover.started``: a failover's intent was journaled (the host's lease is gone);
* ``fence.result``: a fence attempt finished (result, reason, per-device outcomes, duration);
* ``failover.finished``: a failover closed (``aborted`` says why if it did not recover), with its
  whole timeline as ``haagent events`` prints it;
* ``alert.raised`` / ``alert.cleared``: a condition a human must look at (runbooks/);
* ``<kind>.started`` / ``<kind>.finished``: another journaled operation (``drain``, ``migrate``,
  ``return``...) opened or closed, the finished one with its journal;
* ``cluster.<kind>``: every other cluster event the leader journals under ``events/`` (host_joined,
  host_suspect, host_fenced, vm_started, vm_relocated, drain_started, migration_started,
  migration_completed, migration_failed, host_maintenance...): the progress of drains and
  migrations.
"""

from __future__ import annotations

from typing import Any, Iterable

from haagent.state.codec import timeline
from haagent.state.view import Alert, ClusterView, Event, JournalStep, ManagerAction, Op, OpStep, SetHostState

Notice = tuple[str, dict[str, Any]]


def step_notices(view: ClusterView, actions: Iterable[ManagerAction], wall_now: float) -> list[Notice]:
    """The notices of one committed step. ``view`` is the view the step decided from (its
    journal holds the steps written before this one); journal steps written by this step are
    stamped ``wall_now``, as the codec stamps them in etcd."""
    out: list[Notice] = []
    new_steps: dict[str, list[OpStep]] = {}
    kinds: dict[str, str] = {}  # ops opened by this step -> their kind
    for a in actions:
        if isinstance(a, SetHostState):
            out.append(("host.state_changed", {
                "host": a.host, "from": a.old.value if a.old else None, "to": a.new.value, "reason": a.reason,
                "failover": a.failover or None, "epoch": view.epoch}))
        elif isinstance(a, JournalStep):
            step = OpStep(a.step.step, wall_now, a.step.detail)
            new_steps.setdefault(a.op, []).append(step)
            old = view.ops.get(a.op)
            kind = old.kind if old else kinds.setdefault(a.op, a.kind if step.step == "intent" else "failover")
            if kind != "failover":  # a drain's or migration's journal: only its start and end go out
                if step.step in ("intent", "done"):
                    out.append(_operation_notice(view, a, kind, new_steps[a.op]))
                continue
            if step.step == "intent":
                out.append(("failover.started", {"failover": a.op, "host": a.host, **dict(step.detail)}))
            elif step.step == "fence":
                out.append(("fence.result", {"failover": a.op, "host": a.host, **dict(step.detail)}))
            elif step.step == "done":
                old = view.ops.get(a.op)
                op = Op(a.op, old.kind if old else "failover", a.host, old.epoch if old else view.epoch,
                        (old.steps if old else ()) + tuple(new_steps[a.op]))
                finished = {"failover": a.op, "host": a.host, "timeline": timeline(op)}
                if "aborted" in step.detail:
                    finished["aborted"] = step.detail["aborted"]
                out.append(("failover.finished", finished))
        elif isinstance(a, Event):
            out.append((f"cluster.{a.kind}", {"host": a.host or None, "vm": a.vm or None,
                                              "failover": a.op or None, **dict(a.detail)}))
    return out


def _operation_notice(view: ClusterView, a: JournalStep, kind: str, new_steps: list[OpStep]) -> Notice:
    """``<kind>.started`` with the intent's details, or ``<kind>.finished`` with the whole journal."""
    step = new_steps[-1]
    if step.step == "intent":
        return (f"{kind}.started", {"op": a.op, "host": a.host, **dict(step.detail)})
    old = view.ops.get(a.op)
    steps = (old.steps if old else ()) + tuple(new_steps)
    journal = [{"step": s.step, "at": s.at, "t": round(s.at - steps[0].at, 3), **dict(s.detail)} for s in steps]
    return (f"{kind}.finished", {"op": a.op, "host": a.host, **dict(step.detail), "journal": journal})


def alert_notice(alert: Alert, raised: bool) -> Notice:
    return ("alert.raised" if raised else "alert.cleared",
            {"alert": alert.name, "host": alert.host or None, "vm": alert.vm or None, "message": alert.message})
