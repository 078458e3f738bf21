"""``haagent rebalance status|plan|run``: the leader's rebalancing on the live cluster.

``plan`` computes what a round would do now with the leader's own rules (``manager.rebalance``
over the live cluster); ``run`` checks up front (one line and exit 2 while the migration executor
is busy), then puts a request the leader acts on; ``--wait`` follows its operation's journal.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from haagent.clikit import config_option, fail
from haagent.config import Config
from haagent.manager.rebalance import KIND, RoundPlan, executor_busy, in_window, plan_round
from haagent.state.requests import read_view, send_request

PENDING = ("drain", "undrain", "migrate", KIND)  # requests that would start the executor


def _plan(config: Config, view, max_moves: int | None) -> tuple[RoundPlan, dict[str, str]]:
    from haagent.manager.placer import policy_rebalancer

    return plan_round(view, policy_rebalancer(config.policy), config.rebalance, time.time(), max_moves)


def _name(view, u: str) -> str:
    return view.specs[u].name if u in view.specs else u


def _plan_data(config: Config, view, plan: RoundPlan, frozen: dict[str, str]) -> dict[str, Any]:
    cfg = config.rebalance
    return {"mode": cfg.mode, "threshold": cfg.threshold, "min_gain": cfg.min_gain,
            "score_before": round(plan.score_before, 6), "score_after": round(plan.score_after, 6),
            "gib": round(plan.gib, 3), "stopped": plan.stopped, "moves": [m.row() for m in plan.moves],
            "above_threshold": plan.score_before > cfg.threshold,
            "left_alone": {_name(view, u): why for u, why in sorted(frozen.items())},
            "busy": executor_busy(view, PENDING) or None}


@click.group("rebalance")
def rebalance() -> None:
    """Scheduled load rebalancing by the leader ([rebalance] in the config; docs/rebalance.md)."""


@rebalance.command("plan")
@click.option("--max-moves", type=click.IntRange(1, 1000), default=None,
              help="moves at most (default [rebalance] max_moves_per_round)")
@click.option("--json", "as_json", is_flag=True)
@config_option
def plan_cmd(max_moves: int | None, as_json: bool, config: Config) -> None:
    """What a round would move now: each move with the score after it, GiB, and why that VM."""
    view = read_view(config)
    plan, frozen = _plan(config, view, max_moves)
    data = _plan_data(config, view, plan, frozen)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    cfg = config.rebalance
    lines = [f"score {plan.score_before:.4f} (threshold {cfg.threshold:g}) -> {plan.score_after:.4f} after "
             f"{len(plan.moves)} move(s), {plan.gib:.2f} GiB to migrate"]
    if plan.score_before <= cfg.threshold:
        lines.append("  the score is at or below the threshold: a scheduled round moves nothing "
                     "('haagent rebalance run' would make these moves)")
    for i, m in enumerate(plan.moves, 1):
        lines.append(f"  {i}. {m.name:<28} {m.source} -> {m.dest}  {m.memory_mib / 1024:6.2f} GiB  "
                     f"score after {m.score_after:.4f}")
        lines.append(f"     why: {m.why}")
    if frozen:
        lines.append("  left where they are: " + "; ".join(f"{_name(view, u)} ({why})" for u, why in sorted(frozen.items())))
    if data["busy"]:
        lines.append(f"  no round runs now: {data['busy']}")
    click.echo("\n".join(lines))


@rebalance.command("run")
@click.option("--max-moves", type=click.IntRange(1, 1000), default=None,
              help="moves at most (default [rebalance] max_moves_per_round)")
@click.option("--wait", is_flag=True, help="follow the round's migrations until they are done")
@click.option("--json", "as_json", is_flag=True)
@config_option
def run_cmd(max_moves: int | None, wait: bool, as_json: bool, config: Config) -> None:
    """Ask the leader for one round now and migrate its plan (whatever the mode, window or threshold)."""
    view = read_view(config)
    busy = executor_busy(view, PENDING)
    if busy:
        fail(f"refused: {busy}; one operation of the migration executor at a time "
             "(watch it: haagent migrations; run this again once it is done)", 2)
    plan, _frozen = _plan(config, view, max_moves)
    opts = {"max_moves": max_moves} if max_moves else {}
    req = send_request(config, KIND, options=opts)
    rows = [m.row() for m in plan.moves]
    text = (f"asked the leader for a rebalance round (request {req}); now it would make {len(rows)} move(s), "
            f"{plan.gib:.2f} GiB, score {plan.score_before:.4f} -> {plan.score_after:.4f}")
    click.echo(json.dumps({"request": req, "plan": rows}, sort_keys=True) if as_json else text)
    if wait:
        from haagent.manager.migrate_cli import _wait

        _wait(config, req, as_json, "haagent rebalance status")


@rebalance.command("status")
@click.option("--json", "as_json", is_flag=True)
@config_option
def status_cmd(as_json: bool, config: Config) -> None:
    """The mode, the score now, the round in flight, the last rounds, and the VMs in cooldown."""
    from haagent.manager.migrate_cli import op_progress

    view = read_view(config)
    cfg = config.rebalance
    now = time.time()
    plan, frozen = _plan(config, view, None)
    ops = sorted((o for o in view.ops.values() if o.kind == KIND), key=lambda o: (o.rev, o.id), reverse=True)
    last = []
    for op in ops[:5]:
        intent, done = op.last("intent"), op.last("done")
        d = intent.detail if intent else {}
        last.append({"op": op.id, "at": intent.at if intent else None, "done": op.finished,
                     "moves": len(d.get("vms", [])), "gib": d.get("gib"), "score_before": d.get("score_before"),
                     "score_after": d.get("score_after"), "request": d.get("request") or None,
                     "moved": done.detail.get("moved") if done else None,
                     "dropped": [_name(view, u) for u in (done.detail.get("dropped") or [])] if done else []})
    running = next((op_progress(view, o) for o in ops if not o.finished), None)
    cooling = {_name(view, u): why for u, why in sorted(frozen.items()) if why.startswith("moved by a rebalance")}
    data = {"mode": cfg.mode, "interval_s": cfg.interval, "window": cfg.window, "timezone": cfg.timezone,
            "in_window": in_window(cfg.window, cfg.timezone, now), "threshold": cfg.threshold,
            "score": round(plan.score_before, 6), "would_move": len(plan.moves), "busy": executor_busy(view) or None,
            "running": running, "last": last, "cooldown": cooling}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    lines = [f"mode {cfg.mode}, every {cfg.interval:g}s, window {cfg.window}"
             + (f" ({cfg.timezone})" if cfg.window != "always" else "")
             + (" - open now" if data["in_window"] else " - closed now"),
             f"score {plan.score_before:.4f} (threshold {cfg.threshold:g}); a round now would plan "
             f"{len(plan.moves)} move(s) ('haagent rebalance plan')"]
    if data["busy"]:
        lines.append(f"no round starts now: {data['busy']}")
    if running:
        lines.append(f"in flight: {running['op']}: {running['moved']}/{running['total']} moved; "
                     + ", ".join(f"{vm} {st}" for vm, st in running["vms"].items()))
    for r in last:
        if r["done"]:
            lines.append(f"{r['op']}: {r['moved']}/{r['moves']} moved, {r['gib']} GiB planned, score "
                         f"{r['score_before']} -> {r['score_after']}"
                         + (f"; dropped {', '.join(r['dropped'])}" if r["dropped"] else ""))
    if cooling:
        lines.append("in cooldown: " + "; ".join(f"{vm} ({why})" for vm, why in cooling.items()))
    click.echo("\n".join(lines))
