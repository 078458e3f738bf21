"""Read the cluster's state from etcd into plain data for ``haagent status``."""

from __future__ import annotations

import json
import time
from typing import Any

from haagent.store.client import EtcdStore
from haagent.store.election import read_leader
from haagent.store.keys import Keys


def cluster_status(store: EtcdStore, keys: Keys, now: float | None = None) -> dict[str, Any]:
    """``{"leader": {"host", "epoch"} | None, "hosts": [{"name", "alive", "state", ...}], "bad_records"}``.

    Records are decoded by the same codec the leader uses, so status shows what the leader sees:
    a record it cannot read is listed under ``bad_records`` rather than guessed at.
    """
    from haagent.manager.codec import build_view

    now = time.time() if now is None else now
    lead = read_leader(store, keys)
    kvs, revision = store.get_prefix(keys.hosts)
    view = build_view({kv.key: kv for kv in kvs}, keys, 0)
    hosts = []
    for name, hv in sorted(view.hosts.items()):
        report_kv = next((kv for kv in kvs if kv.key == keys.host_report(name)), None)
        report: dict[str, Any] | None = None
        age = None
        if report_kv is not None and not any(k == report_kv.key for k, _ in view.bad_records):
            report = json.loads(report_kv.value)
            at = report.get("reported_at")
            if isinstance(at, (int, float)) and not isinstance(at, bool):
                age = round(max(0.0, now - float(at)), 1)
        hosts.append({"name": name, "alive": hv.alive, "state": hv.state.value if hv.state else None,
                      "failover": hv.failover or None, "agent_stopped": bool(hv.stopped),
                      "self_fence_s": hv.self_fence, "report_age_s": age, "report": report})
    return {
        "cluster": keys.cluster,
        "revision": revision,
        "leader": {"host": lead.host, "epoch": lead.epoch} if lead else None,
        "hosts": hosts,
        "bad_records": [{"key": k, "problem": why} for k, why in view.bad_records],
    }
