"""``haagent agent``: run the agent daemon."""

from __future__ import annotations

import sys

import click

from haagent.clikit import config_option
from haagent.config import Config
from haagent.log import configure


@click.command("agent")
@config_option
def agent(config: Config) -> None:
    """Run the agent: heartbeat, campaign for leadership, run VMs, lead when elected."""
    from haagent.agent.daemon import AgentDaemon

    configure(config.log.format, config.log.level)
    hypervisor = None
    if config.libvirt_enabled:
        from haagent.hypervisor.libvirt_impl import LibvirtHypervisor

        hypervisor = LibvirtHypervisor(config.libvirt_uri)
    fencer = None
    if config.fencing is not None:
        from fencing.runner import FenceRunner

        # No ack source: in the cluster an operator's ack is a request the leader's core binds
        # to one failover (docs/design.md, "Operator acks"); a manual device only says so.
        fencer = FenceRunner(config.fencing)
    daemon = AgentDaemon(config, hypervisor=hypervisor, fencer=fencer)
    daemon.install_signals()
    code = daemon.run()
    if hypervisor is not None:
        hypervisor.close()
    sys.exit(code)
