"""``haagent agent``: run the agent daemon."""

from __future__ import annotations

import sys

import click

from haagent.cli import config_option
from haagent.config import Config
from haagent.log import configure


@click.command("agent")
@config_option
def agent(config: Config) -> None:
    """Run the agent: heartbeat, campaign for leadership, serve metrics, lead when elected."""
    from haagent.agent.daemon import AgentDaemon

    configure(config.log.format, config.log.level)
    daemon = AgentDaemon(config)
    daemon.install_signals()
    sys.exit(daemon.run())
