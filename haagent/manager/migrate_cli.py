"""Maintenance commands: ``host drain``, ``host undrain``, ``vm migrate``, ``migrations``.

Each checks what it can up front with the leader's own rules (``manager.drain``: one line and
exit 2 on bad input, nothing half-started), then puts a request the leader acts on. ``--wait``
follows the operation's journal; Ctrl-C stops only the watching.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import click

from haagent.clikit import config_option, fail
from haagent.config import Config
from haagent.state.requests import read_view, send_request


def _view(config: Config):
    return read_view(config)


def _mover(config: Config):
    from haagent.manager.placer import policy_mover

    return policy_mover(config.policy)


def _placer(config: Config):
    from haagent.manager.placer import policy_placer

    return policy_placer(config.policy)


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, sort_keys=True) if as_json else text)


def _move_row(m) -> dict[str, Any]:
    return {"vm": m.vm, "name": m.name, "memory_mib": m.memory_mib, "from": m.source, "to": m.dest,
            "verdict": m.verdict, "reasons": list(m.reasons)}


def _verdict_line(m) -> str:
    why = ", ".join(m.reasons) or "no host fits"
    if m.verdict == "live":
        return f"  {m.name:<32} {m.memory_mib:>7} MiB  live -> {m.dest}"
    if m.verdict == "cold":
        return f"  {m.name:<32} {m.memory_mib:>7} MiB  cold -> {m.dest} (shut down, started there: {why})"
    return f"  {m.name:<32} {m.memory_mib:>7} MiB  REFUSED: {why}"


@click.command("drain")
@click.argument("name")
@click.option("--wait", is_flag=True, help="follow the drain until the host is in maintenance")
@click.option("--dry-run", is_flag=True, help="print the plan and every VM's verdict; move nothing")
@click.option("--max-parallel", type=click.IntRange(1, 64), default=None,
              help="migrations of this drain at once (default [migration] max_outgoing)")
@click.option("--partial", is_flag=True, help="drain what can be placed, leave the rest")
@click.option("--cold-ok", is_flag=True,
              help="VMs that cannot live-migrate (HA policy none, no compatible target) are shut down "
                   "(ACPI, then forced after [migration] cold_shutdown_timeout) and started on the target")
@click.option("--all", "all_vms", is_flag=True,
              help="also the running VMs haagent does not manage (live migration only: their definition "
                   "goes with them; one that cannot go live is refused)")
@click.option("--json", "as_json", is_flag=True)
@config_option
def drain(name: str, wait: bool, dry_run: bool, max_parallel: int | None, partial: bool, cold_ok: bool,
          all_vms: bool, as_json: bool, config: Config) -> None:
    """Live-migrate every HA VM off NAME (with --all, the others too), then put it in maintenance
    (never fenced for being down)."""
    from haagent.manager.drain import Refused, check_drain

    view = _view(config)
    if any(r.kind == "drain" and r.host == name for r in view.requests):
        fail(f"refused: {name} is already draining (its request waits for the leader); watch it: haagent migrations", 2)
    try:
        plan = check_drain(view, name, _mover(config), config.migration, partial=partial or dry_run,
                           cold_ok=cold_ok, placer=_placer(config), all_vms=all_vms)
    except Refused as exc:
        fail(f"refused: {exc}", 2)
        return
    rows = [_move_row(m) for m in plan]
    if dry_run:
        counts = {v: sum(1 for m in plan if m.verdict == v) for v in ("live", "cold", "refused")}
        lines = [f"drain {name}: {len(plan)} VM(s) in this order: {counts['live']} live, {counts['cold']} cold, "
                 f"{counts['refused']} refused"]
        lines += [_verdict_line(m) for m in plan]
        if counts["refused"] and not partial:
            lines.append("the drain would be refused as it stands (--partial drains the rest"
                         + ("" if cold_ok else "; --cold-ok moves those that cannot go live") + ")")
        _emit(as_json, {"host": name, "dry_run": True, "plan": rows, "verdicts": counts}, "\n".join(lines))
        return
    opts: dict[str, Any] = {"partial": partial}
    if max_parallel:
        opts["max_parallel"] = max_parallel
    if cold_ok:
        opts["cold_ok"] = True
    if all_vms:
        opts["all"] = True
    req = send_request(config, "drain", name, options=opts)
    _emit(as_json, {"host": name, "request": req, "plan": rows},
          f"asked the leader to drain {name} ({len(plan)} VM(s); request {req}); watch it: haagent migrations")
    if wait:
        _wait(config, req, as_json, f"haagent migrations  (or: haagent status; the drain of {name} goes on)")


@click.command("undrain")
@click.argument("name")
@click.option("--return-vms", is_flag=True, help="migrate back the VMs the last drain moved away")
@click.option("--json", "as_json", is_flag=True)
@config_option
def undrain(name: str, return_vms: bool, as_json: bool, config: Config) -> None:
    """Put NAME back in service (active); stops a drain that is still running."""
    from haagent.model import HostState

    hv = _view(config).hosts.get(name)
    if hv is None:
        fail(f"refused: unknown host {name!r}", 2)
        return
    if hv.state not in (HostState.DRAINING, HostState.MAINTENANCE):
        fail(f"refused: {name} is {hv.state.value if hv.state else 'unknown'}, not draining or in maintenance", 2)
    req = send_request(config, "undrain", name, options={"return_vms": return_vms})
    _emit(as_json, {"host": name, "request": req, "return_vms": return_vms},
          f"asked the leader to return {name} to service (request {req})"
          + ("; the VMs its drain moved go back" if return_vms else ""))


@click.command("migrate")
@click.argument("vm")
@click.option("--to", "to", default="", metavar="HOST", help="the target (default: the leader picks)")
@click.option("--wait", is_flag=True, help="follow the migration until it is done")
@click.option("--json", "as_json", is_flag=True)
@config_option
def vm_migrate(vm: str, to: str, wait: bool, as_json: bool, config: Config) -> None:
    """Live-migrate one HA VM (by name or uuid) through the leader's migration executor."""
    from haagent.manager.drain import Refused, check_migrate

    try:
        m = check_migrate(_view(config), vm, to, _mover(config))
    except Refused as exc:
        fail(f"refused: {exc}", 2)
        return
    req = send_request(config, "migrate", vm=m.vm, options={"to": to} if to else {})
    _emit(as_json, {"request": req, **_move_row(m)},
          f"asked the leader to migrate {m.name} from {m.source} to {to or m.dest + ' (its choice now)'} (request {req})")
    if wait:
        _wait(config, req, as_json, "haagent migrations")


@click.command("migrations")
@click.option("--follow", "follow", default="", metavar="OP",
              help="follow one operation (drain-..., migrate-..., return-...) as --wait does")
@click.option("--json", "as_json", is_flag=True)
@config_option
def migrations(follow: str, as_json: bool, config: Config) -> None:
    """Migrations in flight, and the last one each VM made (bytes, speed, downtime)."""
    if follow:
        _wait(config, "", as_json, f"haagent migrations --follow {follow}", op_id=follow)
        return
    rows = migration_rows(_view(config))
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Column, Table

    t = Table("from", "to", "try", "took", "MiB", "MiB/s", "downtime", "error")
    t.columns.insert(0, Column("vm", no_wrap=True))
    t.columns.insert(3, Column("state", no_wrap=True))
    for r in rows:
        mib = r["data_total"] / 2**20 if r.get("data_total") else None
        speed = mib / r["duration_s"] if mib and r.get("duration_s") else None
        t.add_row(r["name"], r["from"], r["to"], r["state"], str(r["attempt"]),
                  f"{r['duration_s']:.1f}s" if r.get("duration_s") else "-",
                  f"{mib:.0f}" if mib else "-", f"{speed:.0f}" if speed else "-",
                  f"{r['downtime_ms']} ms" if r.get("downtime_ms") is not None else "-", r.get("error", "")[:60])
    Console().print(t)


def migration_rows(view) -> list[dict[str, Any]]:
    """In-flight migrations first, then each VM's last reported outcome, newest first."""
    name = {u: s.name for u, s in view.specs.items()}
    rows = []
    for u, m in sorted(view.migrations.items()):
        row = {"vm": u, "name": name.get(u, u), "from": m.source, "to": m.dest, "state": "migrating", "op": m.op,
               "attempt": m.attempt, "deadline_s": m.deadline}
        p = _job(view, m)
        if p is not None:
            row.update(duration_s=p.duration_s, data_total=p.data_total, data_processed=p.data_processed,
                       data_remaining=p.data_remaining, dirty_rate=p.dirty_rate)
        if m.mode != "live":
            row.update(state="shutting down (cold move)" if m.mode == "cold" else "starting (cold move)")
        rows.append(row)
    done = [r for h in view.hosts.values() for r in h.migration_outcomes.values() if r.outcome != "running"]
    for r in sorted(done, key=lambda r: -r.at):
        if r.vm in view.migrations and (view.migrations[r.vm].op, view.migrations[r.vm].attempt) == (r.op, r.attempt):
            continue
        rows.append({"vm": r.vm, "name": name.get(r.vm, r.vm), "from": r.source, "to": r.dest, "state": r.outcome,
                     "op": r.op, "attempt": r.attempt, "duration_s": r.duration_s, "downtime_ms": r.downtime_ms,
                     "data_total": r.data_total, "error": r.error, "at": r.at})
    return rows


def _job(view, m):
    """The source's last job info of an in-flight migration (its "running" record), if any."""
    hv = view.hosts.get(m.source)
    r = hv.migration_outcomes.get(m.vm) if hv is not None else None
    return r if r is not None and r.outcome == "running" and (r.op, r.attempt) == (m.op, m.attempt) else None


def _refusal(config: Config, req: str) -> str:
    """The leader's reason for refusing request ``req`` (its ``<kind>_refused`` event), "" if none."""
    from haagent.errors import StoreError
    from haagent.state.requests import open_store

    store, keys = open_store(config)
    try:
        kvs, _ = store.get_prefix(keys.events)
    except StoreError:
        return ""  # (the generic line then points at haagent events)
    finally:
        store.close()
    for kv in reversed(kvs):
        try:
            e = json.loads(kv.value)
        except ValueError:
            continue
        detail = e.get("detail") if isinstance(e, dict) else None
        if str(e.get("kind", "")).endswith("_refused") and isinstance(detail, dict) and detail.get("request") == req:
            return str(detail.get("reason") or "no reason given")
    return ""


def _op_of(view, req: str):
    for op in view.ops.values():
        intent = op.last("intent")
        if intent is not None and intent.detail.get("request") == req:
            return op
    return None


def op_progress(view, op) -> dict[str, Any]:
    """Per VM of an operation: queued, migrating (to, attempt, libvirt's job info: memory moved and
    left, dirty rate), shutting down or starting (a cold move), moved, failed, dropped (a rebalance
    move not made); and the totals."""
    intent = op.last("intent")
    vms = list(intent.detail.get("vms", [])) if intent else []
    state = {u: "queued" for u in vms}
    for s in op.steps:
        vm = s.detail.get("vm")
        if s.step == "migrate_start" and s.detail.get("mode") == "cold":
            state[vm] = f"shutting down for a cold move to {s.detail.get('to')} (attempt {s.detail.get('attempt')})"
        elif s.step == "migrate_start" and s.detail.get("mode") == "cold-start":  # another target, after one gave up
            state[vm] = f"starting on {s.detail.get('to')} (cold move, attempt {s.detail.get('attempt')})"
        elif s.step == "migrate_start":
            state[vm] = f"migrating to {s.detail.get('to')} (attempt {s.detail.get('attempt')})"
        elif s.step == "cold_stopped":
            state[vm] = f"starting on {s.detail.get('to')} (cold move)"
        elif s.step == "migrated":
            state[vm] = f"on {s.detail.get('to')}" + (" (cold move)" if s.detail.get("mode") == "cold" else "")
        elif s.step == "migrate_failed":
            state[vm] = f"failed to {s.detail.get('to')}: {s.detail.get('outcome')}"
        elif s.step == "dropped":  # a rebalance move the cluster moved past
            state[vm] = f"dropped: {s.detail.get('reason') or 'no longer fits'}"
        elif s.step == "cancelling":  # a rebalance whose window closed names the moves it dropped
            for u in s.detail.get("dropped") or ():
                if u in state:
                    state[u] = f"dropped: {s.detail.get('reason')}"
    fraction = {u: 1.0 for u, st in state.items() if st.startswith("on ")}
    jobs: dict[str, dict[str, Any]] = {}
    for u, m in view.migrations.items():
        job = _job(view, m) if m.op == op.id else None
        if job is not None and job.data_total and u in state:
            fraction[u] = min((job.data_processed or 0) / job.data_total, 0.99)
            state[u] += f" {(job.data_processed or 0) >> 20}/{job.data_total >> 20} MiB, {(job.data_remaining or 0) >> 20} MiB left"
            if job.dirty_rate is not None:
                state[u] += f", dirtied at {job.dirty_rate / 2**20:.1f} MiB/s"
            jobs[_name(view, u)] = {"data_total": job.data_total, "data_processed": job.data_processed,
                                    "data_remaining": job.data_remaining, "dirty_rate": job.dirty_rate}
    moved = sum(1 for s in op.steps if s.step == "migrated")
    overall = sum(fraction.values()) / len(state) if state else 1.0
    return {"op": op.id, "kind": op.kind, "host": op.host, "done": op.finished, "paused": op.has("paused"),
            "moved": moved, "total": len(vms), "progress": round(overall, 3),
            "vms": {_name(view, u): st for u, st in state.items()},
            "fraction": {_name(view, u): round(fraction.get(u, 0.0), 3) for u in state}, "jobs": jobs}


def progress_lines(p: dict[str, Any], last: dict[str, Any] | None) -> list[str]:
    """Plain lines (no TTY) for one reading of an operation's progress: the overall line when it
    moved, and a line per VM whose state changed since ``last``."""
    before = last["vms"] if last else {}
    lines = []
    if last is None or (p["moved"], p["progress"], p["done"], p["paused"]) != \
            (last["moved"], last["progress"], last["done"], last["paused"]):
        tail = " - done" if p["done"] else (" - PAUSED" if p["paused"] else "")
        lines.append(f"{p['kind']} {p['host']}: {p['moved']}/{p['total']} moved, {p['progress']:.0%}{tail}")
    lines += [f"  {vm}: {st}" for vm, st in p["vms"].items() if before.get(vm) != st]
    return lines


def _name(view, u: str) -> str:
    return view.specs[u].name if u in view.specs else u


def _wait(config: Config, req: str, as_json: bool, how: str, poll: float = 1.0,
          sleep: Callable[[float], None] = time.sleep, op_id: str = "") -> None:
    """Follow the operation ``req`` opened (or ``op_id``) until it is done; Ctrl-C leaves it to the
    leader and says how to watch it again."""
    tty = sys.stdout.isatty() and not as_json
    last: dict[str, Any] | None = None
    progress = None
    op = None
    try:
        if tty:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
            progress.start()
            overall = progress.add_task("waiting for the leader", total=None)
            bars: dict[str, int] = {}
        while True:
            view = _view(config)
            op = view.ops.get(op_id) if op_id else _op_of(view, req)
            if op is None:
                if op_id or not any(r.id == req for r in view.requests):
                    # The request is gone without an operation: the leader refused it (something
                    # started in between, e.g. a drain before a rebalance run), or it was cancelled.
                    reason = "" if op_id else _refusal(config, req)
                    refused = (f"no operation {op_id} (finished ones are kept: [manager] keep_finished_ops)" if op_id
                               else f"refused by the leader: {reason}" if reason
                               else "the leader refused it or it was cancelled: see haagent events")
                    if progress is not None:
                        progress.stop()
                    fail(refused, 2 if reason else 1)
                sleep(poll)
                continue
            p = op_progress(view, op)
            if progress is not None:
                progress.update(overall, description=f"{p['kind']} {p['host']}: {p['moved']}/{p['total']} moved",
                                total=1, completed=p["progress"])
                for vm, st in p["vms"].items():
                    if vm not in bars:
                        bars[vm] = progress.add_task(vm, total=1)
                    progress.update(bars[vm], description=f"  {vm}: {st}", completed=p["fraction"][vm])
            elif as_json:
                if p != last:
                    click.echo(json.dumps(p, sort_keys=True))
            else:
                for line in progress_lines(p, last):
                    click.echo(line)
            last = p
            if p["done"] or p["paused"]:
                break
            sleep(poll)
    except KeyboardInterrupt:
        if progress is not None:
            progress.stop()
        again = f"haagent migrations --follow {op.id}" if op is not None else how
        click.echo(f"\nstopped watching; the operation goes on with the leader. Watch it again: {again}", err=True)
        return
    if progress is not None:
        progress.stop()
    if last and last["paused"]:
        fail(f"{last['kind']} {last['host']} paused: see haagent status and the drain_paused alert", 1)
