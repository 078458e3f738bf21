"""What the leader tells the outside world (webhooks) about one committed step, as
``(event type, data)`` pairs. Pure: the shell's sink calls it after a step's write commits.

Types (``[notify] events`` globs select among them; docs/automation.md shows each payload):

* ``host.state_changed``: a host moved from one state to another, with the reason and failover;
* ``failover.started``: a failover's intent was journaled (the host's lease is gone);
* ``fence.result``: a fence attempt finished (result, reason, per-device outcomes, duration);
* ``failover.finished``: a failover closed (``aborted`` says why if it did not recover), with its
  whole timeline as ``haagent events`` prints it;
* ``alert.raised`` / ``alert.cleared``: a condition a human must look at (runbooks/);
* ``cluster.<kind>``: every other cluster event the leader journals under ``events/`` (host_joined,
  host_suspect, host_fenced, vm_started, vm_relocated...); drain and rebalance progress is added
  there, so it reaches webhooks with no change here.
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
    for a in actions:
        if isinstance(a, SetHostState):
            out.append(("host.state_changed", {
                "host": a.host, "from": a.old.value if a.old else None, "to": a.new.value, "reason": a.reason,
                "failover": a.failover or None, "epoch": view.epoch}))
        elif isinstance(a, JournalStep):
            old = view.ops.get(a.op)
            if (old.kind if old is not None else a.kind) != "failover":
                continue  # drains and rebalances speak through their cluster.<kind> events
            step = OpStep(a.step.step, wall_now, a.step.detail)
            new_steps.setdefault(a.op, []).append(step)
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


def alert_notice(alert: Alert, raised: bool) -> Notice:
    return ("alert.raised" if raised else "alert.cleared",
            {"alert": alert.name, "host": alert.host or None, "vm": alert.vm or None, "message": alert.message})
