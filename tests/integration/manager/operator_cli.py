"""What the operator-command tests share: the cluster the ``cli_config`` fixture names, a command
run through the real CLI, and the requests the commands left in etcd."""

from __future__ import annotations

import json

from click.testing import CliRunner

from haagent.cli import main
from haagent.store.keys import Keys

K = Keys("it")  # cluster "it", as conftest.cli_config writes it


def invoke(cfg: str, *args: str):
    """``haagent ARGS --config CFG`` through the real CLI."""
    return CliRunner().invoke(main, [*args, "--config", cfg])


def stored_requests(store) -> list[dict]:
    """The requests waiting for the leader, as stored."""
    kvs, _ = store.get_prefix(K.requests)
    return [json.loads(kv.value) for kv in kvs]
