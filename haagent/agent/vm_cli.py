"""The HA mark on this host's VMs: ``haagent vm manage|unmanage|list``.

The mark lives in the domain's own XML (a libvirt ``<metadata>`` element, docs/design.md); the
agent registers marked VMs in etcd. Changes of placement go through the leader, as requests.
"""

from __future__ import annotations

import json

import click

from haagent.clikit import LazyGroup, config_option, fail
from haagent.state.requests import read_view, send_request
from haagent.config import Config
from haagent.errors import HaagentError


def _hypervisor(config: Config):
    from haagent.hypervisor.libvirt_impl import LibvirtHypervisor

    try:
        return LibvirtHypervisor(config.libvirt_uri)
    except HaagentError as exc:
        fail(f"cannot reach libvirt at {config.libvirt_uri}: {exc}")


# -- vm ------------------------------------------------------------------------------------------


@click.group(cls=LazyGroup, lazy={"migrate": "haagent.manager.migrate_cli:vm_migrate"})
def vm() -> None:
    """Mark which VMs on this host are HA (a libvirt <metadata> element)."""


@vm.command("manage")
@click.argument("name")
@click.option("--priority", type=int, default=None,
              help="higher restarts first; default: by the naming convention (prod before dev), else 0")
@click.option("--policy", type=click.Choice(["restart", "migrate", "none"]), default="restart", show_default=True)
@click.option("--groups", default="", metavar="G1,G2",
              help="placement groups ([policy.groups] in the config; undeclared: soft anti-affinity)")
@click.option("--migration-bandwidth-cap", type=int, default=None, metavar="MIB_S",
              help="this VM's [migration] bandwidth_cap (MiB/s; 0: no cap)")
@click.option("--migration-max-downtime-ms", type=int, default=None, metavar="MS",
              help="this VM's [migration] max_downtime_ms (0: libvirt's default)")
@click.option("--migration-auto-converge/--no-migration-auto-converge", default=None,
              help="this VM's [migration] auto_converge")
@click.option("--migration-postcopy/--no-migration-postcopy", default=None, help="this VM's [migration] postcopy")
@click.option("--migration-postcopy-after-precopy/--no-migration-postcopy-after-precopy", default=None,
              help="this VM's [migration] postcopy_after_precopy")
@config_option
def manage(name: str, priority: int | None, policy: str, groups: str, config: Config,
           **tuning: int | bool | None) -> None:
    """Make VM highly available: restart it elsewhere if its host dies.

    The --migration-* options override the cluster's [migration] tuning for this VM only (kept in
    its HA mark; an option not given follows [migration]).
    """
    from haagent.agent.managed import NS, PREFIX, parse_groups, validate

    own = {k[len("migration_"):]: v for k, v in tuning.items() if v is not None}
    try:
        mark = validate(priority, policy, parse_groups(groups), own)
    except HaagentError as exc:
        fail(str(exc), 2)
    hv = _hypervisor(config)
    try:
        info = hv.vm_info(name)
        if not info.persistent:
            fail(f"{name} is a transient domain: define it (virsh define) before making it HA", 2)
        hv.set_metadata(info.uuid, NS, PREFIX, mark.element())
        hv.set_autostart(info.uuid, False)  # haagent starts it; libvirt must not, on a returning host
    except HaagentError as exc:
        fail(str(exc), 2)
    finally:
        hv.close()
    shown = priority if priority is not None else "by naming convention"
    tuned = f", migration {', '.join(f'{k}={v}' for k, v in mark.migration)}" if mark.migration else ""
    click.echo(f"{name} ({info.uuid}) is now HA: priority {shown}, policy {policy}{tuned}, autostart off. "
               "The agent registers it in etcd within a second.")


@vm.command("unmanage")
@click.argument("name")
@config_option
def unmanage(name: str, config: Config) -> None:
    """Stop treating VM as HA (it keeps running where it is)."""
    from haagent.agent.managed import NS, PREFIX

    hv = _hypervisor(config)
    try:
        info = hv.vm_info(name)
        hv.set_metadata(info.uuid, NS, PREFIX, None)
    except HaagentError as exc:
        fail(str(exc), 2)
    finally:
        hv.close()
    # Placement belongs to the leader (only its epoch-guarded writes change it): ask it to forget
    # the VM rather than deleting its keys here.
    req = send_request(config, "unmanage", "", vm=info.uuid)
    click.echo(f"{name} ({info.uuid}) is no longer HA (request {req}: the leader forgets its placement)")


@vm.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def list_vms(config: Config, as_json: bool) -> None:
    """HA VMs in the cluster: priority, policy, placement, where they run."""
    from rich.console import Console
    from rich.table import Table

    view = read_view(config)
    rows = []
    for u, spec in sorted(view.specs.items(), key=lambda x: (-(x[1].priority or 0), x[1].name)):
        running = sorted(h for h, hv in view.hosts.items() if u in hv.running)
        rows.append({"uuid": u, "name": spec.name, "priority": spec.priority, "policy": spec.policy,
                     "placement": view.placements.get(u), "running_on": running})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "uuid", "priority", "policy", "placement", "running on")
    for r in rows:
        table.add_row(r["name"], r["uuid"], "-" if r["priority"] is None else str(r["priority"]), r["policy"], r["placement"] or "-",
                      ", ".join(r["running_on"]) or "[red]nowhere[/]")
    Console().print(table)
