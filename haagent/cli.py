"""The ``haagent`` command line: click + rich, no logic beyond parsing and rendering.

Feature areas own their commands in their own modules; this file wires them in lazily so that
``haagent plan`` never imports libvirt and ``haagent status`` never imports pysnmp.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

import click

from haagent.config import DEFAULT_PATH, Config, load_config
from haagent.errors import ConfigError


class LazyGroup(click.Group):
    """A click group whose subcommands live in other modules, imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config FILE``; the command receives a validated ``config: Config``.

    Validation happens before the command body runs; on failure the problems are printed one
    per line and the command exits 2, the same for every command.
    """

    def load(ctx: click.Context, _param: click.Parameter, value: str) -> Config:
        try:
            return load_config(value)
        except ConfigError as exc:
            report_config_error(exc)
            ctx.exit(2)
            raise AssertionError("unreachable")  # pragma: no cover

    return click.option("--config", "config", default=DEFAULT_PATH, show_default=True,
                        metavar="FILE", callback=load, help="haagent TOML config file")(f)


def report_config_error(exc: ConfigError) -> None:
    where = f"{exc.source}: " if exc.source else ""
    click.echo(f"haagent: invalid configuration {where.rstrip(': ')}".rstrip(), err=True)
    for problem in exc.problems:
        click.echo(problem, err=True)


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit, with no traceback."""
    click.echo(f"haagent: {message}", err=True)
    sys.exit(code)


def open_store(config: "Config") -> tuple[Any, Any]:
    """The etcd store and key layout a command talks to."""
    from haagent.store.client import EtcdStore
    from haagent.store.keys import Keys

    return EtcdStore.from_config(config.etcd), Keys(config.cluster)


def send_request(config: "Config", kind: str, host: str = "", **extra: object) -> str:
    """Put one operator request for the leader under ``requests/``; its id."""
    import json
    import time
    import uuid

    from haagent.errors import StoreError

    store, keys = open_store(config)
    req_id = f"{kind}-{host or extra.get('vm', '')}-{uuid.uuid4().hex[:8]}"
    try:
        store.put(keys.request(req_id), json.dumps({"kind": kind, "host": host, "at": time.time(), **extra}))
    except StoreError as exc:
        fail(f"cannot reach etcd: {exc}")
    finally:
        store.close()
    return req_id


@click.group(cls=LazyGroup, lazy={
    "agent": "haagent.agent.cli:agent",
    "status": "haagent.store.cli:status",
    "plan": "policies.cli:plan",
    "fence": "fencing.cli:fence",
    "lab": "haagent.lab.cli:lab",
    "sim": "haagent.sim.cli:sim",
    "vm": "haagent.agent.vm_cli:vm",
    "host": "haagent.manager.cli:host",
    "events": "haagent.manager.cli:events",
    "drill": "haagent.lab.drill:drill",
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
