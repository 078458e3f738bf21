"""``haagent cluster dump`` and the live source of ``haagent plan --live``.

Both read every key of the cluster once, decode it with the leader's codec and convert it with
the leader's ``live_cluster``: what they print is what the leader would decide from.
"""

from __future__ import annotations

import json
from typing import Any

import click

import policies.cli as plan_cli
from haagent.clikit import LazyGroup, config_option, report_config_error
from haagent.config import Config, load_config
from haagent.errors import ConfigError
from haagent.manager.live import LiveCluster, live_cluster
from policies.config import PolicyConfig


def read_live(config: Config) -> LiveCluster:
    """The live cluster, read from etcd with ``config``; one line and exit 1 when etcd refuses or
    cannot be reached."""
    from haagent.state.requests import read_view

    view = read_view(config, where=", ".join(str(e) for e in config.etcd.endpoints))
    return live_cluster(view, config.policy)


def _live_source(config_path: str) -> tuple[Any, PolicyConfig, dict[str, str]]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        report_config_error(exc)
        raise SystemExit(2) from None
    live = read_live(config)
    for line in live.warnings:
        click.echo(f"haagent: warning: {line}", err=True)
    return live.cluster, config.policy or PolicyConfig(), dict(live.label)


plan_cli.live_source = _live_source
plan = plan_cli.plan  # ``haagent plan``, with --live available


@click.group(cls=LazyGroup)
def cluster() -> None:
    """The live cluster as the leader sees it."""


@cluster.command("dump")
@config_option
@click.option("--json", "as_json", is_flag=True,
              help="print the cluster file (the --cluster format of haagent plan)")
def dump(config: Config, as_json: bool) -> None:
    """Print the live cluster: hosts with NUMA cells, tags, CPU and load; VMs with their needs."""
    from policies.io import dump_cluster

    live = read_live(config)
    data = dump_cluster(live.cluster)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    hosts = Table("host", "state", "cpus", "memory", "cpu used", "memory used", "NUMA cells (free MiB)", "tags",
                  title=f"cluster {config.cluster}: {len(data['hosts'])} host(s)", title_justify="left")
    for h in data["hosts"]:
        cells = " ".join(f"{c['id']}:{c['memory_mib'] - c.get('memory_used_mib', 0)}/{c['memory_mib']}"
                         for c in h.get("numa", ())) or "-"
        hosts.add_row(h["name"], h["state"], str(h["cpus"]), f"{h['memory_mib']} MiB",
                      _fmt(h.get("cpu_used"), " cores"), _fmt(h.get("memory_used_mib"), " MiB", 0),
                      cells, ",".join(h["tags"]) or "-")
    console.print(hosts)
    vms = Table("vm", "host", "vcpus", "memory", "needs", title=f"{len(data['vms'])} VM(s)", title_justify="left")
    for v in data["vms"]:
        needs = [f"numa {v['numa']}"] if "numa" in v else []
        needs += [f"cells {','.join(map(str, v['nodeset']))}"] if "nodeset" in v else []
        needs += [f"{v['dedicated_cpus']} pinned"] if "dedicated_cpus" in v else []
        needs += [f"hugepages {v['hugepages']['count']}x{v['hugepages']['size_kib']}KiB"] if "hugepages" in v else []
        needs += [f"cpu {v['cpu_model']}"] if "cpu_model" in v else []
        needs += [f"[red]unplaceable: {v['unplaceable']}[/]"] if "unplaceable" in v else []
        vms.add_row(v["name"], v["host"] or "-", str(v["vcpus"]), f"{v['memory_mib']} MiB", "; ".join(needs) or "-")
    console.print(vms)
    for line in live.warnings:
        console.print(f"[yellow]{line}[/]")


def _fmt(value: Any, unit: str, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"
