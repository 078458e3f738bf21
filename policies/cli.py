"""``haagent plan``: run the placement engine on a cluster file, or on the live cluster, and print
the plan.

``--cluster FILE`` reads a cluster file (docs/placement.md); ``--live`` reads the running cluster
from etcd with the agent's config, converted exactly as the leader sees it (``haagent cluster dump
--json`` prints that conversion as a cluster file). The live source is registered by the layer
that can reach etcd (``haagent.manager.cluster_cli``), so this module stays free of the store.

Exit status: 0 when everything asked for is possible, 1 when some VM is unplaceable (place,
evacuate) or some failure set leaves HA VMs out (capacity), 2 on bad input.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table

from haagent.clikit import fail
from haagent.config import DEFAULT_PATH
from haagent.errors import PlacementInputError
from policies.capacity import capacity as run_capacity
from policies.config import PolicyConfig, parse_policy_section
from policies.filters import MIGRATE, RESTART
from policies.io import load_cluster, to_jsonable
from policies.model import ACTIVE, Cluster
from policies.place import Unplaceable, evacuate as run_evacuate, explain as run_explain
from policies.place import place as run_place
from policies.rebalance import COST, DEFAULT_MIN_GAIN, GREEDY, rebalance as run_rebalance


# config path -> (cluster, policy, {uuid: the name the engine knows the VM by}); set by the CLI
# layer that reads etcd.
LiveSource = Callable[[str], tuple[Cluster, PolicyConfig, dict[str, str]]]
live_source: LiveSource | None = None


def _load(path: str | None, policy_path: str | None) -> tuple[Cluster, PolicyConfig]:
    meta = click.get_current_context().meta
    live = meta.get("haagent.plan.live", False)
    if live == bool(path):
        fail("give either --cluster FILE or --live", 2)
    if live:
        if live_source is None:
            fail("--live needs the haagent command (the live cluster is read from etcd)", 2)
        cluster, config, aliases = live_source(meta.get("haagent.plan.config", DEFAULT_PATH))
        meta["haagent.plan.aliases"] = aliases
    else:
        try:
            cluster, config = load_cluster(path)
        except PlacementInputError as exc:
            fail(f"bad cluster file: {exc}", 2)
    if policy_path:
        try:
            with open(policy_path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            fail(f"cannot read policy file {policy_path}: {exc}", 2)
        problems: list[str] = []
        config = parse_policy_section(data.get("policy"), "policy", problems)
        if problems:
            fail(f"bad policy in {policy_path}: " + "; ".join(problems), 2)
    return cluster, config


def _meta(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        ctx.meta[key] = value
    return store


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")(f)
    f = click.option("--policy", "policy_path", metavar="FILE.toml",
                     help="a TOML file whose [policy] table overrides the cluster's")(f)
    f = click.option("--config", metavar="FILE", default=DEFAULT_PATH, show_default=True, expose_value=False,
                     callback=_meta("haagent.plan.config"), help="with --live: the haagent config to reach etcd")(f)
    f = click.option("--live", is_flag=True, expose_value=False, callback=_meta("haagent.plan.live"),
                     help="plan on the running cluster, read from etcd (instead of --cluster)")(f)
    return click.option("--cluster", "cluster_path", metavar="FILE.json",
                        help="cluster description (format: README, docs/placement.md)")(f)


def _vm_name(name: str) -> str:
    """A VM named by uuid on the live cluster -> the name the engine knows it by."""
    return click.get_current_context().meta.get("haagent.plan.aliases", {}).get(name, name)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _unplaceable_table(console: Console, missed: tuple[Unplaceable, ...]) -> None:
    if not missed:
        return
    t = Table(title="Unplaceable", title_justify="left")
    t.add_column("vm")
    t.add_column("priority", justify="right")
    t.add_column("reasons")
    for u in missed:
        t.add_row(u.vm, str(u.priority), "\n".join(u.reasons))
    console.print(t)


@click.group()
def plan() -> None:
    """Plan placements on a cluster file, or on the live cluster (--live)."""


@plan.command()
@_common
@click.option("--vm", "vm_names", multiple=True, metavar="NAME",
              help="VM to place (repeatable); default: every VM with no active host")
def place(cluster_path: str, policy_path: str | None, as_json: bool, vm_names: tuple[str, ...]) -> None:
    """Place VMs as after a failover: by priority, then size."""
    cluster, config = _load(cluster_path, policy_path)
    active = {h.name for h in cluster.hosts if h.state == ACTIVE}
    if vm_names:
        known = {v.name: v for v in cluster.vms}
        vm_names = tuple(_vm_name(n) for n in vm_names)
        unknown = sorted(set(vm_names) - set(known))
        if unknown:
            fail(f"unknown VM {unknown[0]!r}", 2)
        vms = [known[n] for n in sorted(set(vm_names))]
    else:
        vms = [v for v in cluster.vms if v.host not in active]
    result = run_place(vms, cluster, config)
    if as_json:
        _print_json(to_jsonable(result))
    else:
        console = Console()
        t = Table(title=f"Placements ({len(result.placements)})", title_justify="left")
        for col in ("vm", "host", "cells", "priority"):
            t.add_column(col)
        for p in result.placements:
            t.add_row(p.vm, p.host, ",".join(map(str, p.cells)) or "-", str(p.priority))
        console.print(t)
        _unplaceable_table(console, result.unplaceable)
        for line in result.errors + result.warnings:
            console.print(f"[yellow]{line}[/yellow]")
    raise SystemExit(1 if result.unplaceable else 0)


@plan.command()
@_common
@click.argument("host")
def evacuate(cluster_path: str, policy_path: str | None, as_json: bool, host: str) -> None:
    """Plan the live migrations that drain HOST."""
    cluster, config = _load(cluster_path, policy_path)
    try:
        result = run_evacuate(host, cluster, config)
    except PlacementInputError as exc:
        fail(str(exc), 2)
    if as_json:
        _print_json(to_jsonable(result))
    else:
        console = Console()
        t = Table(title=f"Drain {host}: {len(result.moves)} migration(s)", title_justify="left")
        for col in ("vm", "from", "to"):
            t.add_column(col)
        for m in result.moves:
            t.add_row(m.vm, m.source, m.target)
        console.print(t)
        _unplaceable_table(console, result.unplaceable)
    raise SystemExit(1 if result.unplaceable else 0)


@plan.command()
@_common
@click.option("--failures", "-k", default=1, show_default=True, type=click.IntRange(1, 10),
              help="how many hosts fail at once")
def capacity(cluster_path: str, policy_path: str | None, as_json: bool, failures: int) -> None:
    """For every set of K failed hosts: which HA VMs would not fit?"""
    cluster, config = _load(cluster_path, policy_path)
    report = run_capacity(cluster, failures, config)
    if as_json:
        _print_json({**to_jsonable(report), "ok": report.ok})
    else:
        console = Console()
        verdict = "[green]OK[/green]" if report.ok else f"[red]{len(report.at_risk)} set(s) at risk[/red]"
        console.print(f"N+{failures}: {verdict} - {report.bound}")
        for fs in report.at_risk:
            console.print(f"if {', '.join(fs.hosts)} fail: "
                          f"{', '.join(u.vm for u in fs.unplaceable)} would not fit")
    raise SystemExit(0 if report.ok else 1)


@plan.command()
@_common
@click.option("--max-moves", type=int, metavar="N", help="at most N moves (default: no limit)")
@click.option("--max-gib", type=float, metavar="GIB",
              help="at most GIB of memory migrated in all (default: no limit)")
@click.option("--min-gain", default=DEFAULT_MIN_GAIN, show_default=True, type=float,
              help="stop when no move lowers the score by this much")
@click.option("--greedy", is_flag=True,
              help="plain steepest descent (as Ganeti hbal), ignoring the memory each move migrates")
def rebalance(cluster_path: str, policy_path: str | None, as_json: bool, max_moves: int | None,
              max_gib: float | None, min_gain: float, greedy: bool) -> None:
    """Plan the live migrations that even out cpu and memory use, moving little memory.

    Without limits the whole plan is printed: every move that lowers the imbalance score by at
    least --min-gain. Every prefix of the plan is itself a valid plan that lowers the score.
    """
    cluster, config = _load(cluster_path, policy_path)
    try:
        result = run_rebalance(cluster, max_moves, min_gain, config, max_gib=max_gib,
                               method=GREEDY if greedy else COST)
    except PlacementInputError as exc:
        fail(str(exc), 2)
    moves = [{"vm": m.vm, "from": m.source, "to": m.target, "gib": mib / 1024, "score_after": after}
             for m, mib, after in zip(result.moves, result.mib, result.scores)]
    if as_json:
        _print_json({"moves": moves, "score_before": result.score_before,
                     "score_after": result.score_after, "gib": result.gib,
                     "stopped": result.stopped})
        return
    console = Console()
    t = Table(title=f"Rebalance: score {result.score_before:.4f} -> {result.score_after:.4f} "
                    f"with {len(result.moves)} move(s), {result.gib:.1f} GiB migrated "
                    f"(stopped: {result.stopped})", title_justify="left")
    for col in ("vm", "from", "to", "GiB", "score after"):
        t.add_column(col)
    for m in moves:
        t.add_row(m["vm"], m["from"], m["to"], f"{m['gib']:.1f}", f"{m['score_after']:.4f}")
    console.print(t)


@plan.command()
@_common
@click.argument("vm")
@click.option("--migrate", is_flag=True, help="explain a live migration instead of a restart")
def explain(cluster_path: str, policy_path: str | None, as_json: bool, vm: str, migrate: bool) -> None:
    """For every host: the filter that rejected VM and why, or what each weigher scored."""
    cluster, config = _load(cluster_path, policy_path)
    vm = _vm_name(vm)
    try:
        result = run_explain(vm, cluster, config, mode=MIGRATE if migrate else RESTART)
    except PlacementInputError as exc:
        fail(str(exc), 2)
    if as_json:
        _print_json(to_jsonable(result))
        return
    console = Console()
    t = Table(title=f"{vm}: {'goes to ' + result.chosen if result.chosen else 'fits nowhere'}",
              title_justify="left")
    for col in ("host", "verdict", "detail"):
        t.add_column(col)
    for v in result.hosts:
        if v.rejected_by:
            kind = "filter failed" if v.failed else "rejected"
            t.add_row(v.host, f"{kind} by {v.rejected_by}", v.reason or "")
        else:
            detail = ", ".join(f"{name} {raw:.3g} -> {weighted:.3f}" for name, raw, _n, weighted in v.scores)
            t.add_row(v.host, ("[bold]chosen[/bold] " if v.chosen else "") + f"score {v.total:.3f}",
                      detail or "no weigher applies")
    console.print(t)
