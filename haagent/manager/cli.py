"""The leader's operator commands: ``host return``, ``fence ack``, ``events`` (requests the leader acts on)."""

from __future__ import annotations

import json
import time
import uuid as uuidlib

import click

from haagent.clikit import LazyGroup, config_option, fail, fail_store
from haagent.state.requests import open_store, send_request
from haagent.config import Config
from haagent.errors import HaagentError, StoreError


# -- host / fence ack ----------------------------------------------------------------------------


@click.group(cls=LazyGroup, lazy={"drain": "haagent.manager.migrate_cli:drain",
                                  "undrain": "haagent.manager.migrate_cli:undrain"})
def host() -> None:
    """Host lifecycle commands for the leader."""


@host.command("return")
@click.argument("name")
@config_option
def host_return(name: str, config: Config) -> None:
    """Return a fenced (failed) host to service once it is repaired."""
    req = send_request(config, "host_return", name)
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
    from haagent.state.codec import AckRefused, build_view, fence_ack_record
    from haagent.store.port import Compare, Put

    store, keys = open_store(config)
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
        fail_store(exc)
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


def _op_heading(op) -> str:
    """An operation's heading in ``haagent events``: its own kind (failover, drain, migrate, return,
    rebalance, ...) and what it is about."""
    about = "the cluster" if op.kind == "rebalance" else f"host {op.host}"
    return f"{op.kind or 'operation'} {op.id} ({about}):"


@click.command("events")
@config_option
@click.option("--follow", "-f", is_flag=True, help="keep printing new events")
@click.option("--json", "as_json", is_flag=True)
def events(config: Config, follow: bool, as_json: bool) -> None:
    """Recent cluster events, and the timeline of each journaled operation (failover, drain, rebalance, ...)."""
    from haagent.state.codec import build_view, timeline

    store, keys = open_store(config)
    try:
        kvs, revision = store.get_prefix(keys.events)
        opkvs, _ = store.get_prefix(keys.ops)
    except StoreError as exc:
        store.close()
        fail_store(exc)
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
                click.echo(json.dumps({"op": op.id, "kind": op.kind, "host": op.host, "timeline": timeline(op)},
                                      default=str))
            else:
                click.echo(f"\n{_op_heading(op)}")
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
