"""Operator requests to the leader (``requests/<id>``), put by the command line."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from haagent.clikit import fail_store
from haagent.config import Config
from haagent.errors import StoreError


def open_store(config: Config) -> tuple[Any, Any]:
    """The etcd store and key layout a command talks to."""
    from haagent.store.client import EtcdStore
    from haagent.store.keys import Keys

    return EtcdStore.from_config(config.etcd), Keys(config.cluster)


def read_view(config: Config, where: str = "") -> Any:
    """The cluster as the leader's codec decodes it, read once from etcd with ``config``;
    one line and exit when etcd refuses or cannot be reached (``where`` names the endpoints)."""
    from haagent.state.codec import build_view

    store, keys = open_store(config)
    try:
        kvs, _ = store.get_prefix(keys.root)
    except StoreError as exc:
        fail_store(exc, where)
    finally:
        store.close()
    return build_view({kv.key: kv for kv in kvs}, keys, 0)


def send_request(config: Config, kind: str, host: str = "", **extra: object) -> str:
    """Put one operator request for the leader under ``requests/``; its id."""
    store, keys = open_store(config)
    req_id = f"{kind}-{host or extra.get('vm', '')}-{uuid.uuid4().hex[:8]}"
    try:
        store.put(keys.request(req_id), json.dumps({"kind": kind, "host": host, "at": time.time(), **extra}))
    except StoreError as exc:
        fail_store(exc)
    finally:
        store.close()
    return req_id


