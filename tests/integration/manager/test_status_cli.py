"""`haagent status` on a real etcd shows what the leader sees, bad records included."""

from __future__ import annotations

import json

from click.testing import CliRunner

from haagent.cli import main
from haagent.store.client import EtcdStore
from haagent.store.keys import Keys

K = Keys("it")


def test_status_shows_failovers_frozen_hosts_and_bad_records(etcd1, cli_config):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    try:
        store.put(K.host_state("h1"), json.dumps({"state": "active"}))
        store.put(K.host_report("h1"), json.dumps({"cpus": 8, "reported_at": "yesterday", "running_vms": []}))
        store.put(K.host_state("h2"), json.dumps({"state": "fencing", "failover": "failover-h2-7-100"}))
        store.put(K.host_report("h2"), json.dumps({"cpus": "eight", "running_vms": "abc"}))
        store.put(K.host_state("h3"), json.dumps({"state": "active"}))
        store.put(K.host_stopped("h3"), json.dumps({"policy": "freeze", "lease": 5}))
    finally:
        store.close()
    res = CliRunner().invoke(main, ["status", "--json", "--config", cli_config])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    hosts = {h["name"]: h for h in data["hosts"]}
    assert hosts["h1"]["report_age_s"] is None  # a non-numeric reported_at is not a crash
    assert hosts["h2"]["failover"] == "failover-h2-7-100"
    assert hosts["h3"]["agent_stopped"] is True
    assert [b["key"] for b in data["bad_records"]] == [K.host_report("h2")]
    res = CliRunner().invoke(main, ["status", "--config", cli_config], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "bad record" in res.output and "VMs frozen" in res.output


def test_status_shows_a_storm_hold_with_the_command_that_releases_each_host(etcd1, cli_config):
    from haagent.state.codec import action_ops, build_view
    from haagent.state.view import SetStormHold

    store = EtcdStore(etcd1.endpoints, timeout=1)
    try:
        for h in ("h1", "h2", "h3"):
            store.put(K.host_state(h), json.dumps({"state": "suspect" if h != "h1" else "active"}))
        # the record as the leader writes it, through its own codec
        view = build_view({}, K, 7)
        for op in action_ops([SetStormHold(("h2", "h3"))], view, K, 1_700_000_000.0):
            store.put(op.key, op.value)
    finally:
        store.close()
    res = CliRunner().invoke(main, ["status", "--json", "--config", cli_config])
    assert res.exit_code == 0, res.output
    hold = json.loads(res.output)["storm_hold"]
    assert hold == {"hosts": ["h2", "h3"], "since": 1_700_000_000.0,
                    "release": {"h2": "haagent fence ack h2 --yes", "h3": "haagent fence ack h3 --yes"}}
    res = CliRunner().invoke(main, ["status", "--config", cli_config], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "storm guard" in res.output and "holding the fencing of h2, h3" in res.output
    assert "haagent fence ack h2 --yes" in res.output and "haagent fence ack h3 --yes" in res.output
    # nothing held: no record, nothing said
    store = EtcdStore(etcd1.endpoints, timeout=1)
    try:
        store.delete(K.storm_hold)
    finally:
        store.close()
    res = CliRunner().invoke(main, ["status", "--json", "--config", cli_config])
    assert json.loads(res.output)["storm_hold"] is None
