"""The ``haagent`` command line: click + rich, no logic beyond parsing and rendering.

Feature areas own their commands in their own modules; this file wires them in lazily so that
``haagent plan`` never imports libvirt and ``haagent status`` never imports pysnmp.
"""

from __future__ import annotations

import sys

import click

from haagent.clikit import LazyGroup, config_option  # noqa: F401  (commands import them from here too)
from haagent.config import Config


@click.group(cls=LazyGroup, lazy={
    "agent": "haagent.daemon:agent",
    "status": "haagent.manager.status:status",
    "plan": "haagent.manager.cluster_cli:plan",
    "cluster": "haagent.manager.cluster_cli:cluster",
    "fence": "fencing.cli:fence",
    "lab": "haagent.lab.cli:lab",
    "sim": "haagent.sim.cli:sim",
    "vm": "haagent.agent.vm_cli:vm",
    "host": "haagent.manager.cli:host",
    "events": "haagent.manager.cli:events",
    "migrations": "haagent.manager.migrate_cli:migrations",
    "drill": "haagent.lab.drill:drill",
    "etcd": "haagent.store.cli:etcd",
    "rebalance": "haagent.manager.rebalance_cli:rebalance",
})
@click.version_option(package_name="haagent")
def main() -> None:
    """haagent: HA orchestration and failover for KVM clusters."""
    from haagent.log import configure

    # Commands print their own output; library logs only when something is wrong. The agent
    # reconfigures logging from its config file.
    configure("auto", "warning", stream=sys.stderr)


@main.command("check-config")
@config_option
def check_config(config: Config) -> None:
    """Validate a config file: exit 0 if valid, 2 with one line per problem if not."""
    click.echo(f"{config.source}: ok (cluster {config.cluster}, host {config.host}, "
               f"{len(config.etcd.endpoints)} etcd endpoint(s))")


if __name__ == "__main__":  # pragma: no cover
    main()
