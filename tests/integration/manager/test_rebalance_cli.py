"""`haagent rebalance plan|run|status` against a real etcd: the plan with the score after each
move, GiB and why; `run` refused in one line with exit 2 while a drain is in flight, else one
request for the leader; JSON on each."""

from __future__ import annotations

import json

import pytest

from haagent.state.view import VmSpec
from haagent.store.client import EtcdStore
from operator_cli import K, invoke, stored_requests


@pytest.fixture
def cluster(etcd1, cli_config):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    lease, _ = store.grant(60)
    running = {"h1": ["vm1", "vm2", "vm3", "vm4"], "h2": [], "h3": []}
    for h, vms in running.items():
        store.put(K.host_state(h), json.dumps({"state": "active", "reason": "test", "epoch": 1, "since": 0.0}))
        store.put(K.host_alive(h), "{}", lease)
        load = {"cpu": 1.5 * len(vms), "memory_used_mib": 1024.0 * len(vms), "vms": {v: 1.5 for v in vms}}
        store.put(K.host_report(h), json.dumps({"cpus": 8, "memory_mib": 16384, "running_vms": vms, "load": load}))
    for i in range(1, 5):
        store.put(K.vm_spec(f"vm{i}"), json.dumps(VmSpec(f"vm{i}", f"acme-prod-web-{i}", vcpus=2,
                                                          memory_mib=1024).to_dict()))
        store.put(K.vm_placement(f"vm{i}"), json.dumps({"host": "h1", "epoch": 1, "op": "", "reason": "test"}))
    try:
        yield store, cli_config
    finally:
        store.close()


def test_plan_lists_each_move_with_score_gib_and_why(cluster):
    store, cfg = cluster
    res = invoke(cfg, "rebalance", "plan", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["moves"] and out["score_before"] > out["score_after"] and out["above_threshold"]
    scores = [m["score_after"] for m in out["moves"]]
    assert scores == sorted(scores, reverse=True) and scores[-1] == out["score_after"]
    assert all(m["from"] == "h1" and m["to"] in ("h2", "h3") and m["gib"] == 1.0 and "h1 runs cpu" in m["why"]
               for m in out["moves"])
    text = invoke(cfg, "rebalance", "plan", "--max-moves", "1")
    assert text.exit_code == 0 and "1. acme-prod-web-" in text.output and "why:" in text.output
    assert "2. " not in text.output
    assert stored_requests(store) == []


def test_run_is_refused_while_a_drain_is_in_flight_and_else_asks_the_leader(cluster):
    store, cfg = cluster
    store.put(K.request("drain-h2-x"), json.dumps({"kind": "drain", "host": "h2"}))
    res = invoke(cfg, "rebalance", "run")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "refused: a drain request waits for the leader" in res.output
    store.delete(K.request("drain-h2-x"))
    store.put(K.host_state("h2"), json.dumps({"state": "draining", "reason": "test", "epoch": 1, "since": 0.0}))
    res = invoke(cfg, "rebalance", "run")
    assert res.exit_code == 2 and "h2 is draining" in res.output
    assert stored_requests(store) == []
    store.put(K.host_state("h2"), json.dumps({"state": "active", "reason": "test", "epoch": 1, "since": 0.0}))
    res = invoke(cfg, "rebalance", "run", "--max-moves", "2", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["plan"]) == 2
    [req] = stored_requests(store)
    assert req["kind"] == "rebalance" and req["options"] == {"max_moves": 2}


def test_wait_says_why_when_the_leader_refused_the_run(cluster, capsys):
    """The command's own check passed, then a drain started before the leader read the request:
    the leader refuses it (one executor at a time) and --wait prints its reason, exit 2."""
    from haagent.config import load_config
    from haagent.manager import migrate_cli

    store, cfg = cluster
    store.put(K.request("rebalance--r7"), json.dumps({"kind": "rebalance", "host": ""}))
    seen = []

    def leader(_poll):  # the leader's step between two readings: consumed, refused with the reason
        seen.append(1)
        store.delete(K.request("rebalance--r7"))
        store.put(K.event("0000000000.000001-000"), json.dumps({
            "kind": "rebalance_refused", "host": "", "vm": "", "op": "", "at": 1.0, "epoch": 1,
            "detail": {"request": "rebalance--r7", "reason": "a drain of host h2 is in flight (op drain-h2-1-5)"}}))

    with pytest.raises(SystemExit) as exc:
        migrate_cli._wait(load_config(cfg), "rebalance--r7", False, "haagent rebalance status", poll=0, sleep=leader)
    assert exc.value.code == 2 and seen == [1]
    err = capsys.readouterr().err.strip()
    assert err == "haagent: refused by the leader: a drain of host h2 is in flight (op drain-h2-1-5)"


def test_bad_max_moves_is_one_line_exit_2(cluster):
    _store, cfg = cluster
    res = invoke(cfg, "rebalance", "run", "--max-moves", "0")
    assert res.exit_code == 2 and "--max-moves" in res.output


def test_status_shows_mode_score_and_last_rounds(cluster):
    store, cfg = cluster
    op = K.op("rebalance-1-5")
    store.put(f"{op}/head", json.dumps({"kind": "rebalance", "host": "cluster", "epoch": 1, "created": 1.0}))
    store.put(f"{op}/0000", json.dumps({"step": "intent", "at": 1.0, "detail": {
        "vms": ["vm1"], "moves": {"vm1": {"from": "h2", "to": "h1"}}, "score_before": 0.5, "score_after": 0.4,
        "gib": 1.0, "request": ""}}))
    store.put(f"{op}/0001", json.dumps({"step": "migrated", "at": 9e12, "detail": {"vm": "vm1", "to": "h1"}}))
    store.put(f"{op}/0002", json.dumps({"step": "done", "at": 9e12, "detail": {"moved": 1, "dropped": []}}))
    res = invoke(cfg, "rebalance", "status", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["mode"] == "advise" and out["window"] == "always" and out["in_window"] and out["score"] > 0
    assert out["last"][0]["op"] == "rebalance-1-5" and out["last"][0]["moved"] == 1
    assert list(out["cooldown"]) == ["acme-prod-web-1"]
    text = invoke(cfg, "rebalance", "status")
    assert text.exit_code == 0 and "mode advise" in text.output and "in cooldown: acme-prod-web-1" in text.output
