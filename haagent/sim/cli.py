"""``haagent sim ...``: standalone simulators (fake BMC, fake PDU) and the scenario runner."""

from __future__ import annotations

from haagent.clikit import LazyGroup

import click


@click.group(cls=LazyGroup, lazy={
    "bmc": "fencing.fakes.cli:bmc",
    "pdu": "fencing.fakes.cli:pdu",
    "scenario": "haagent.sim.commands:scenario",
    "random": "haagent.sim.commands:random_cmd",
})
def sim() -> None:
    """Simulators for trying fence configs and for tests."""
