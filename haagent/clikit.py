"""What every command module shares: lazy groups, ``--config``, one-line failures.

It sits low in the layers (it needs only click and the config), so each package's own command
module can use it without importing the root command group.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, NoReturn

import click

from haagent.config import DEFAULT_PATH, Config, load_config
from haagent.errors import ConfigError, StoreAccessDenied, StoreError


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


def fail_store(exc: StoreError, where: str = "") -> NoReturn:
    """One line for a failed etcd call: refused (our certificate or role) or not reachable."""
    at = f" at {where}" if where else ""
    if isinstance(exc, StoreAccessDenied):
        fail(f"etcd{at} refused the request: {exc}")
    fail(f"cannot reach etcd{at}: {exc}")
    raise AssertionError("unreachable")  # pragma: no cover
