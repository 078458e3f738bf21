"""`haagent events` against a real etcd: each journaled operation under its own kind (failover,
drain, migrate, rebalance), not every one as a failover."""

from __future__ import annotations

import json

import pytest

from haagent.store.client import EtcdStore
from operator_cli import K, invoke

OPS = {
    "failover-h2-4-1000": ("failover", "h2", [("intent", {"detect_after": 5.0}), ("fenced", {}), ("done", {})]),
    "drain-h3-4-2000": ("drain", "h3", [("intent", {"vms": ["vm1"]}), ("migrated", {"vm": "vm1", "to": "h1"}),
                                        ("done", {"moved": 1})]),
    "migrate-vm2-4-3000": ("migrate", "h1", [("intent", {"vms": ["vm2"], "to": "h3"})]),
    "rebalance-4-4000": ("rebalance", "cluster", [("intent", {"vms": ["vm3"]}), ("done", {"moved": 0})]),
}


@pytest.fixture
def journaled(etcd1, cli_config):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    for op_id, (kind, host, steps) in OPS.items():
        store.put(f"{K.op(op_id)}/head", json.dumps({"kind": kind, "host": host, "epoch": 4, "created": 100.0}))
        for n, (step, detail) in enumerate(steps):
            store.put(f"{K.op(op_id)}/{n:04d}", json.dumps({"step": step, "at": 100.0 + n, "detail": detail}))
    try:
        yield cli_config
    finally:
        store.close()


def test_each_operation_is_shown_under_its_own_kind(journaled):
    res = invoke(journaled, "events")
    assert res.exit_code == 0, res.output
    headings = [line for line in res.output.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["drain drain-h3-4-2000 (host h3):", "failover failover-h2-4-1000 (host h2):",
                        "migrate migrate-vm2-4-3000 (host h1):", "rebalance rebalance-4-4000 (the cluster):"]
    # Only a failover's intent is the leader confirming a host lost.
    assert "confirm" in res.output.split("failover failover-h2")[1].split("\n\n")[0]
    drain = res.output.split("drain drain-h3-4-2000 (host h3):")[1].split("\n\n")[0]
    assert "intent" in drain and "confirm" not in drain and "migrated" in drain


def test_json_carries_each_operations_kind(journaled):
    res = invoke(journaled, "events", "--json")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines() if line.strip()]
    assert {r["op"]: r["kind"] for r in rows if "timeline" in r} == {op: k for op, (k, _, _) in OPS.items()}
