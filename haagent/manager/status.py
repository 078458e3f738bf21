"""``haagent status``: the leader, its epoch, and every host as the leader sees it."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from haagent.clikit import config_option, fail_store
from haagent.config import Config
from haagent.errors import StoreError


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@click.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
def status(config: Config, as_json: bool) -> None:
    """Show the leader and each host: alive, state, CPU and memory use, NUMA cells, report age."""
    from rich.console import Console
    from rich.table import Table

    from haagent.model import HOST_STATE_GLOSS, HostState
    from haagent.store.client import EtcdStore
    from haagent.store.keys import Keys

    store = EtcdStore.from_config(config.etcd)
    try:
        data = cluster_status(store, Keys(config.cluster))
    except StoreError as exc:
        fail_store(exc, ", ".join(str(e) for e in config.etcd.endpoints))
    finally:
        store.close()
    if as_json:
        for h in data["hosts"]:
            h.pop("report", None)
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    lead = data["leader"]
    console.print(f"cluster [bold]{data['cluster']}[/]  leader: "
                  + (f"[bold green]{lead['host']}[/] (epoch {lead['epoch']})" if lead else "[bold red]none[/]"))
    table = Table("host", "alive", "state", "cpu used", "memory used", "NUMA free (MiB)", "report age", "notes")
    for h in data["hosts"]:
        r = h["report"] or {}
        notes = []
        if h["state"] not in (None, "active"):
            notes.append(HOST_STATE_GLOSS[HostState(h["state"])])
        if h["failover"]:
            notes.append(f"failover {h['failover']}")
        if h["agent_stopped"] and not h["alive"]:
            notes.append("[yellow]agent stopped cleanly: VMs frozen[/]")
        if h["self_fence_s"] is not None:
            notes.append(f"watchdog {h['self_fence_s']:g}s")
        if h["inventory_error"]:
            notes.append(f"[yellow]inventory: {h['inventory_error']}[/]")
        if h["tags"]:
            notes.append("tags " + ",".join(h["tags"]))
        table.add_row(
            h["name"] + (" *" if lead and lead["host"] == h["name"] else ""),
            "[green]yes[/]" if h["alive"] else "[red]no[/]",
            h["state"] or "-",
            _used(h["cpu_used"], h["cpus"], "", 1) if r else "-",
            _used(h["memory_used_mib"] and h["memory_used_mib"] / 1024, h["memory_mib"] / 1024, " GiB", 1) if r else "-",
            " ".join(f"{c['id']}:{c['free_mib'] if c['free_mib'] is not None else '?'}" for c in h["numa"]) or "-",
            _age(h["report_age_s"]),
            "; ".join(notes),
        )
    console.print(table)
    _print_storm_hold(console, data["storm_hold"])
    for bad in data["bad_records"]:
        console.print(f"[red]bad record[/] {bad['key']}: {bad['problem']} (runbooks/bad_record.md)")


def _used(used: float | None, total: float, unit: str, digits: int) -> str:
    """``1.5/8`` with a share, coloured when the host is busy."""
    if used is None:
        return f"?/{total:.{digits}f}{unit}"
    share = used / total if total else 0.0
    colour = "red" if share >= 0.9 else "yellow" if share >= 0.75 else "green"
    return f"{used:.{digits}f}/{total:.{digits}f}{unit} [{colour}]{share:.0%}[/]"


def cluster_status(store: Any, keys: Any, now: float | None = None) -> dict[str, Any]:
    """``{"leader": {"host", "epoch"} | None, "hosts": [{"name", "alive", "state", ...}], "bad_records"}``.

    Records are decoded by the same codec the leader uses, so status shows what the leader sees:
    a record it cannot read is listed under ``bad_records`` rather than guessed at.
    """
    from haagent.state.codec import build_view
    from haagent.store.election import read_leader

    now = time.time() if now is None else now
    lead = read_leader(store, keys)
    kvs, revision = store.get_prefix(keys.hosts)
    view = build_view({kv.key: kv for kv in kvs}, keys, 0)
    hosts = []
    for name, hv in sorted(view.hosts.items()):
        report_kv = next((kv for kv in kvs if kv.key == keys.host_report(name)), None)
        report: dict[str, Any] | None = None
        age = None
        if report_kv is not None and not any(k == report_kv.key for k, _ in view.bad_records):
            report = json.loads(report_kv.value)
            at = report.get("reported_at")
            if isinstance(at, (int, float)) and not isinstance(at, bool):
                age = round(max(0.0, now - float(at)), 1)
        hosts.append({"name": name, "alive": hv.alive, "state": hv.state.value if hv.state else None,
                      "failover": hv.failover or None, "agent_stopped": bool(hv.stopped),
                      "self_fence_s": hv.self_fence, "report_age_s": age, "report": report,
                      "cpus": hv.cpus, "memory_mib": hv.memory_mib, "cpu_used": hv.cpu_used,
                      "memory_used_mib": hv.memory_used_mib, "cpu_model": hv.cpu_model or None,
                      "tags": sorted(hv.tags), "inventory_error": hv.inventory_error or None,
                      "numa": [{"id": c.id, "cpus": len(c.cpus), "memory_mib": c.memory_mib,
                                "free_mib": c.free_mib,
                                "hugepages": {str(s): {"total": t, "free": f} for s, (t, f) in sorted(c.hugepages.items())}}
                               for c in hv.numa]})
    return {
        "cluster": keys.cluster,
        "revision": revision,
        "leader": {"host": lead.host, "epoch": lead.epoch} if lead else None,
        "hosts": hosts,
        "bad_records": [{"key": k, "problem": why} for k, why in view.bad_records],
        "storm_hold": storm_hold(store, keys),
    }


RELEASE = "haagent fence ack {h} --yes"


def storm_hold(store: Any, keys: Any) -> dict[str, Any] | None:
    """The leader's storm record: ``{"hosts", "since", "release": {host: command}}``, or None when
    the storm guard holds nothing (``problem`` says why a record that exists cannot be read)."""
    from haagent.state.codec import BadRecord, storm_hold_record

    kv = store.get(keys.storm_hold)
    if kv is None:
        return None
    try:
        rec = storm_hold_record(kv)
    except BadRecord as exc:
        return {"hosts": [], "since": None, "release": {}, "problem": f"{keys.storm_hold}: {exc}"}
    return {"hosts": rec["hosts"], "since": rec["since"],
            "release": {h: RELEASE.format(h=h) for h in rec["hosts"]}}


def _print_storm_hold(console: Any, hold: dict[str, Any] | None) -> None:
    if hold is None:
        return
    if hold.get("problem"):
        console.print(f"[red]storm record unreadable[/] {hold['problem']} (runbooks/bad_record.md)")
        return
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(hold["since"]))
    console.print(f"[bold red]storm guard[/]: holding the fencing of {', '.join(hold['hosts'])} since {since}: "
                  "they lost their leases together and no fence device said their power is off "
                  "(runbooks/fencing_storm_hold.md). Each is released when it comes back, or:")
    for h in hold["hosts"]:
        console.print(f"  {h}: once you know it is off, [bold]{hold['release'][h]}[/]")
