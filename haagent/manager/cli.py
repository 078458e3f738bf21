"""Operator commands: ``vm manage|unmanage|list``, ``host return``, ``fence ack``, ``events``."""

from __future__ import annotations

import json
import time
import uuid as uuidlib

import click

from haagent.cli import LazyGroup, config_option, fail
from haagent.config import Config
from haagent.errors import HaagentError, StoreError


def _store(config: Config):
    from haagent.store.client import EtcdStore
    from haagent.store.keys import Keys

    return EtcdStore.from_config(config.etcd), Keys(config.cluster)


def _request(config: Config, kind: str, host: str, **extra: object) -> str:
    store, keys = _store(config)
    req_id = f"{kind}-{host}-{uuidlib.uuid4().hex[:8]}"
    try:
        store.put(keys.request(req_id), json.dumps({"kind": kind, "host": host, "at": time.time(), **extra}))
    except StoreError as exc:
        fail(f"cannot reach etcd: {exc}")
    finally:
        store.close()
    return req_id


def _hypervisor(config: Config):
    from haagent.hypervisor.libvirt_impl import LibvirtHypervisor

    try:
        return LibvirtHypervisor(config.libvirt_uri)
    except HaagentError as exc:
        fail(f"cannot reach libvirt at {config.libvirt_uri}: {exc}")


# -- vm ------------------------------------------------------------------------------------------


@click.group(cls=LazyGroup)
def vm() -> None:
    """Mark which VMs on this host are HA (a libvirt <metadata> element)."""


@vm.command("manage")
@click.argument("name")
@click.option("--priority", type=int, default=None,
              help="higher restarts first; default: by the naming convention (prod before dev), else 0")
@click.option("--policy", type=click.Choice(["restart", "migrate", "none"]), default="restart", show_default=True)
@config_option
def manage(name: str, priority: int | None, policy: str, config: Config) -> None:
    """Make VM highly available: restart it elsewhere if its host dies."""
    from haagent.agent.managed import NS, PREFIX, validate

    try:
        mark = validate(priority, policy)
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
    click.echo(f"{name} ({info.uuid}) is now HA: priority {shown}, policy {policy}, autostart off. "
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
    store, keys = _store(config)
    try:
        store.delete(keys.vm_spec(info.uuid))
        store.delete(keys.vm_placement(info.uuid))
    except StoreError as exc:
        fail(f"unmarked in libvirt, but cannot reach etcd to forget it: {exc}")
    finally:
        store.close()
    click.echo(f"{name} ({info.uuid}) is no longer HA")


@vm.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def list_vms(config: Config, as_json: bool) -> None:
    """HA VMs in the cluster: priority, policy, placement, where they run."""
    from rich.console import Console
    from rich.table import Table

    from haagent.manager.codec import build_view

    store, keys = _store(config)
    try:
        kvs, _ = store.get_prefix(keys.root)
    except StoreError as exc:
        fail(f"cannot reach etcd: {exc}")
    finally:
        store.close()
    view = build_view({kv.key: kv for kv in kvs}, keys, 0)
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


# -- host / fence ack ----------------------------------------------------------------------------


@click.group(cls=LazyGroup)
def host() -> None:
    """Host lifecycle commands for the leader."""


@host.command("return")
@click.argument("name")
@config_option
def host_return(name: str, config: Config) -> None:
    """Return a fenced (failed) host to service once it is repaired."""
    req = _request(config, "host_return", name)
    click.echo(f"asked the leader to return {name} to service (request {req}); "
               "it becomes active when the leader sees the request")


@click.command("ack")
@click.argument("name")
@click.option("--yes", is_flag=True, help="confirm that HOST is powered off")
@config_option
def fence_ack(name: str, yes: bool, config: Config) -> None:
    """Acknowledge that HOST is off (you checked): lets the leader recover its VMs."""
    if not yes:
        fail(f"refusing without --yes: acknowledging {name} as off while it still runs would let its "
             "VMs run twice. Check its power first.", 2)
    from haagent.manager.codec import AckRefused, build_view, fence_ack_record
    from haagent.store.port import Compare, Put

    store, keys = _store(config)
    try:
        kvs, _ = store.get_prefix(keys.root)
        snapshot = {kv.key: kv for kv in kvs}
        try:
            record = fence_ack_record(build_view(snapshot, keys, 0), name)
        except AckRefused as exc:
            fail(f"refused: {exc}", 2)
        req = f"fence_ack-{name}-{uuidlib.uuid4().hex[:8]}"
        # Bound to the failover read above: written only if the host's state has not moved since.
        state = snapshot[keys.host_state(name)]
        result = store.txn([Compare(keys.host_state(name), "mod", "==", state.mod_revision)],
                           [Put(keys.request(req), json.dumps({**record, "at": time.time()}))])
    except StoreError as exc:
        fail(f"cannot reach etcd: {exc}")
    finally:
        store.close()
    if not result.succeeded:
        fail(f"refused: {name}'s state changed while the ack was being recorded; check `haagent status` and retry", 2)
    click.echo(f"recorded: {name} acknowledged as off for failover {record['failover']} (request {req}); "
               "the ack expires when that failover ends")


# -- events --------------------------------------------------------------------------------------


def _event_line(d: dict) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(float(d.get("at", 0))))
    parts = [at, d.get("kind", "?")]
    for k in ("host", "vm", "op"):
        if d.get(k):
            parts.append(f"{k}={d[k]}")
    for k, v in sorted((d.get("detail") or {}).items()):
        parts.append(f"{k}={v}")
    return " ".join(str(p) for p in parts)


@click.command("events")
@config_option
@click.option("--follow", "-f", is_flag=True, help="keep printing new events")
@click.option("--json", "as_json", is_flag=True)
def events(config: Config, follow: bool, as_json: bool) -> None:
    """Recent cluster events and failover timelines (kept for an hour)."""
    from haagent.manager.codec import build_view, timeline

    store, keys = _store(config)
    try:
        kvs, revision = store.get_prefix(keys.events)
        opkvs, _ = store.get_prefix(keys.ops)
    except StoreError as exc:
        store.close()
        fail(f"cannot reach etcd: {exc}")
    show = (lambda d: click.echo(json.dumps(d, sort_keys=True))) if as_json else (lambda d: click.echo(_event_line(d)))
    for kv in kvs:
        try:
            show(json.loads(kv.value))
        except ValueError:
            continue
    if not follow:
        view = build_view({kv.key: kv for kv in opkvs}, keys, 0)
        for op in sorted(view.ops.values(), key=lambda o: o.id):
            if as_json:
                click.echo(json.dumps({"op": op.id, "host": op.host, "timeline": timeline(op)}, default=str))
            else:
                click.echo(f"\nfailover {op.id} (host {op.host}):")
                for row in timeline(op):
                    extra = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("phase", "at", "t"))
                    click.echo(f"  +{row['t']:7.3f}s  {row['phase']:<8} {extra}")
        store.close()
        return
    from haagent.store.watch import ResumingWatch

    class Printer:
        def on_events(self, evs):
            for e in evs:
                if e.kind == "put":
                    try:
                        show(json.loads(e.value))
                    except ValueError:
                        pass

        def on_resync(self, kvs, revision):
            pass

    watch = ResumingWatch(store, keys.events, Printer(), revision + 1).start()
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        watch.stop()
        store.close()
