"""``haagent etcd ...``: set up etcd's roles and users for haagent (docs/security.md)."""

from __future__ import annotations

import click

from haagent.clikit import config_option, fail
from haagent.config import Config
from haagent.errors import StoreError


@click.group()
def etcd() -> None:
    """etcd administration for haagent."""


@etcd.command("setup-rbac")
@config_option
@click.option("--print-commands", is_flag=True,
              help="print the equivalent etcdctl commands instead of running anything")
def setup_rbac(config: Config, print_commands: bool) -> None:
    """Create haagent's roles, the [etcd.users] users (certificate CN = role), etcd's root user,
    and enable auth. Idempotent; run with the root user's certificate (CN root)."""
    from haagent.store.rbac import ROOT_USER, etcdctl_commands, setup_rbac as run

    users = dict(config.etcd.users)
    if print_commands:
        for line in etcdctl_commands(config.cluster, users):
            click.echo(line)
        return
    from haagent.store.client import EtcdStore

    store = EtcdStore.from_config(config.etcd)
    if store.user != ROOT_USER:
        store.close()
        fail(f"etcd.cert: setup-rbac needs the certificate of etcd's root user (CN {ROOT_USER}), "
             f"got CN {store.user!r}: once auth is on, only root may change roles", 2)
    try:
        changed = run(store, config.cluster, users, say=click.echo)
    except StoreError as exc:
        fail(str(exc))
    finally:
        store.close()
    click.echo(f"{'nothing to change' if not changed else f'{len(changed)} change(s)'}; auth is enabled; "
               f"{len(users)} user(s) for cluster {config.cluster}")
