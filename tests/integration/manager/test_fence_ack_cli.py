"""`haagent fence ack` against a real etcd: refused unless the host is being failed over, and
bound to that failover (and written only if the host's state did not move meanwhile)."""

from __future__ import annotations

import json

import pytest

from haagent.store.client import EtcdStore
from operator_cli import K, invoke, stored_requests


@pytest.fixture
def cluster(etcd1, cli_config):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    try:
        yield store, cli_config
    finally:
        store.close()


def _state(store, host, state, failover=""):
    record = {"state": state, "reason": "test", "epoch": 1, "since": 0.0}
    if failover:
        record["failover"] = failover
    store.put(K.host_state(host), json.dumps(record))


def _ack(cfg, host):
    return invoke(cfg, "fence", "ack", host, "--yes")


def test_refused_for_a_host_that_is_not_being_failed_over(cluster):
    store, cfg = cluster
    _state(store, "h2", "active")
    _state(store, "h3", "failed")
    for host, state in (("h2", "active"), ("h3", "failed")):
        res = _ack(cfg, host)
        assert res.exit_code == 2, res.output
        assert f"refused: {host} is {state}, not suspect or fencing" in res.output
    res = _ack(cfg, "h9")
    assert res.exit_code == 2 and "unknown host 'h9'" in res.output
    assert stored_requests(store) == []


def test_refused_while_the_host_holds_a_lease(cluster):
    store, cfg = cluster
    _state(store, "h2", "suspect", "failover-h2-1-500")
    lease, _ = store.grant(30)
    store.put(K.host_alive("h2"), "{}", lease)
    res = _ack(cfg, "h2")
    assert res.exit_code == 2 and "holds a live lease" in res.output
    assert stored_requests(store) == []


def test_bound_to_the_open_failover(cluster):
    store, cfg = cluster
    _state(store, "h2", "fencing", "failover-h2-1-500")
    res = _ack(cfg, "h2")
    assert res.exit_code == 0, res.output
    assert "failover failover-h2-1-500" in res.output
    [req] = stored_requests(store)
    assert (req["kind"], req["host"], req["failover"]) == ("fence_ack", "h2", "failover-h2-1-500")


def test_a_host_frozen_by_a_clean_stop_can_be_acked(cluster):
    store, cfg = cluster
    _state(store, "h2", "active")
    store.put(K.host_stopped("h2"), json.dumps({"policy": "freeze", "lease": 1234, "at": 0.0}))
    res = _ack(cfg, "h2")
    assert res.exit_code == 0, res.output
    [req] = stored_requests(store)
    assert req["failover"] == "stopped:1234"
