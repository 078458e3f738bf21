"""``haagent fence ...``: read a host's fence devices, fence a host by hand, test every fence path.

``haagent fence ack HOST`` belongs here too; it records the ack in the cluster store, so it is
added next to the store code.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from haagent.clikit import LazyGroup, config_option, fail
from haagent.config import Config


def _runner(config: Config):
    from fencing.config import FencingConfig
    from fencing.runner import FenceRunner

    fencing = config.fencing if isinstance(config.fencing, FencingConfig) else FencingConfig()
    return FenceRunner(fencing)


def _status_table(rows, title: str) -> Table:
    table = Table(title=title)
    for col in ("host", "level", "device", "plugin", "power", "seconds", "problem"):
        table.add_column(col)
    for s in rows:
        table.add_row(s.host, str(s.level), s.device, s.plugin,
                      s.state.value if s.state else "[red]unknown[/red]", f"{s.duration:.2f}",
                      "" if s.ok else f"{s.error}: {s.reason}")
    return table


@click.group(cls=LazyGroup, lazy={"ack": "haagent.manager.cli:fence_ack"})
def fence() -> None:
    """Fence devices: status, manual fencing, path tests."""


@fence.command("status")
@click.argument("host")
@config_option
def status(host: str, config: Config) -> None:
    """Read HOST's power state from each of its fence devices (no action taken)."""
    runner = _runner(config)
    if not runner.config.levels_for(host):
        fail(f"no fencing configured for host {host}", 2)
    rows = runner.status(host)
    Console().print(_status_table(rows, f"fence devices of {host}"))
    sys.exit(0 if all(r.ok for r in rows) else 1)


@fence.command("off")
@click.argument("host")
@click.option("--yes", is_flag=True, help="really power HOST off")
@config_option
def off(host: str, yes: bool, config: Config) -> None:
    """Power HOST off through its fencing levels and confirm it. Exit 0 only when confirmed off."""
    runner = _runner(config)
    if not runner.config.levels_for(host):
        fail(f"no fencing configured for host {host}", 2)
    if not yes:
        fail(f"this powers {host} off without warning; add --yes to proceed", 2)
    result = runner.fence_host(host)
    console = Console()
    for lr in result.levels:
        for d in lr.devices:
            console.print(f"level {lr.number} {d.device} ({d.plugin}): {d.outcome.value}"
                          + (f" - {d.reason}" if d.reason else "") + f" [{d.duration:.2f}s]")
    console.print(f"{host}: {result.outcome.value} - {result.reason} [{result.duration:.2f}s]")
    sys.exit(0 if result.confirmed_off else 1)


@fence.command("test")
@click.option("--host", "hosts", multiple=True, help="only these hosts (default: all)")
@config_option
def test(hosts: tuple[str, ...], config: Config) -> None:
    """Check that every host's fence devices answer a status call. Exit 1 if any path is broken."""
    from fencing.health import FenceHealthCheck

    runner = _runner(config)
    if not runner.config.hosts:
        fail("no hosts have fencing configured ([fencing.hosts.*])", 2)
    rows = FenceHealthCheck(runner).run_once(hosts or None)
    Console().print(_status_table(rows, "fence path test"))
    broken = [r for r in rows if not r.ok]
    click.echo(f"{len(rows) - len(broken)}/{len(rows)} fence paths answer")
    sys.exit(1 if broken else 0)
