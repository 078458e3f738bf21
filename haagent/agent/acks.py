"""Operator fence acknowledgements (``haagent fence ack HOST``) as the manual plugin sees them."""

from __future__ import annotations

import json
from typing import Any

from haagent.store.client import EtcdStore
from haagent.store.keys import Keys


class EtcdAckSource:
    """Reads ``requests/`` for a fence_ack of a host made at or after a wall-clock time."""

    def __init__(self, config: Any):
        self.keys = Keys(config.cluster)
        self.store = EtcdStore.from_config(config.etcd)

    def acked(self, host: str, since: float) -> bool:
        kvs, _ = self.store.get_prefix(self.keys.requests)
        for kv in kvs:
            try:
                d = json.loads(kv.value)
            except ValueError:
                continue
            if d.get("kind") == "fence_ack" and d.get("host") == host and float(d.get("at", 0)) >= since:
                return True
        return False
