"""Read the cluster's state from etcd into plain data for ``haagent status``."""

from __future__ import annotations

import json
import time
from typing import Any

from haagent.store.client import EtcdStore
from haagent.store.election import read_leader
from haagent.store.keys import Keys


def cluster_status(store: EtcdStore, keys: Keys, now: float | None = None) -> dict[str, Any]:
    """``{"leader": {"host", "epoch"} | None, "hosts": [{"name", "alive", "state", ...}]}``."""
    now = time.time() if now is None else now
    lead = read_leader(store, keys)
    kvs, revision = store.get_prefix(keys.hosts)
    hosts: dict[str, dict[str, Any]] = {}
    for kv in kvs:
        parsed = keys.parse_host_key(kv.key)
        if parsed is None:
            continue
        name, leaf = parsed
        h = hosts.setdefault(name, {"name": name, "alive": False, "state": None,
                                    "report_age_s": None, "report": None})
        if leaf == "alive":
            h["alive"] = True
        elif leaf == "state":
            try:
                h["state"] = json.loads(kv.value).get("state")
            except (ValueError, AttributeError):
                h["state"] = kv.value.decode(errors="replace")
        elif leaf == "report":
            try:
                report = json.loads(kv.value)
            except ValueError:
                continue
            h["report"] = report
            if "reported_at" in report:
                h["report_age_s"] = round(max(0.0, now - float(report["reported_at"])), 1)
    return {
        "cluster": keys.cluster,
        "revision": revision,
        "leader": {"host": lead.host, "epoch": lead.epoch} if lead else None,
        "hosts": [hosts[n] for n in sorted(hosts)],
    }
