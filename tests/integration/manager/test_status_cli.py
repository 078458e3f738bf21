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
