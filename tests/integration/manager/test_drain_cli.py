"""`haagent host drain|undrain`, `vm migrate`, `migrations` against a real etcd: bad input is one
line and exit 2 with nothing written; a good one is one request for the leader; JSON on each."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from haagent.cli import main
from haagent.state.view import VmSpec
from haagent.store.client import EtcdStore
from operator_cli import K, invoke, stored_requests


@pytest.fixture
def cluster(etcd1, cli_config):
    store = EtcdStore(etcd1.endpoints, timeout=1)
    lease, _ = store.grant(60)
    running = {"h1": ["vm1", "vm2"], "h2": [], "h3": []}
    for h, vms in running.items():
        store.put(K.host_state(h), json.dumps({"state": "active", "reason": "test", "epoch": 1, "since": 0.0}))
        store.put(K.host_alive(h), "{}", lease)
        store.put(K.host_report(h), json.dumps({"cpus": 8, "memory_mib": 8192, "running_vms": vms}))
    for i, mem in ((1, 512), (2, 2048)):
        store.put(K.vm_spec(f"vm{i}"), json.dumps(VmSpec(f"vm{i}", f"acme-prod-web-{i}", memory_mib=mem).to_dict()))
        store.put(K.vm_placement(f"vm{i}"), json.dumps({"host": "h1", "epoch": 1, "op": "", "reason": "test"}))
    try:
        yield store, cli_config
    finally:
        store.close()


def _state(store, host, state):
    store.put(K.host_state(host), json.dumps({"state": state, "reason": "test", "epoch": 1, "since": 0.0}))


def test_bad_drains_are_one_line_exit_2_and_write_nothing(cluster):
    store, cfg = cluster
    res = invoke(cfg, "host", "drain", "h9")
    assert res.exit_code == 2 and res.output.strip() == "haagent: refused: unknown host 'h9'"
    _state(store, "h2", "draining")
    res = invoke(cfg, "host", "drain", "h2")
    assert res.exit_code == 2 and "h2 is already draining" in res.output
    _state(store, "h3", "maintenance")
    res = invoke(cfg, "host", "drain", "h1")
    assert res.exit_code == 2 and "h1 is the last active host" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = invoke(cfg, "host", "undrain", "h1")
    assert res.exit_code == 2 and "h1 is active, not draining or in maintenance" in res.output
    res = invoke(cfg, "vm", "migrate", "acme-prod-web-1", "--to", "h1")
    assert res.exit_code == 2 and "runs on h1 already" in res.output
    assert stored_requests(store) == []


def test_dry_run_prints_the_plan_largest_first_and_moves_nothing(cluster):
    store, cfg = cluster
    res = invoke(cfg, "host", "drain", "h1", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["dry_run"] and [m["name"] for m in out["plan"]] == ["acme-prod-web-2", "acme-prod-web-1"]
    assert {m["to"] for m in out["plan"]} <= {"h2", "h3"} and all(m["to"] for m in out["plan"])
    assert stored_requests(store) == []


def test_a_vm_on_local_disks_is_refused_by_name_up_front_and_planned_cold_with_cold_ok(cluster):
    store, cfg = cluster
    spec = VmSpec("vm1", "acme-prod-web-1", memory_mib=512, local_disks=("/var/lib/libvirt/images/web-1.qcow2",))
    store.put(K.vm_spec("vm1"), json.dumps(spec.to_dict()))
    res = invoke(cfg, "host", "drain", "h1", "--dry-run", "--json")
    assert res.exit_code == 0, res.output  # a dry run shows the verdicts, refusals included
    plan = {m["name"]: m for m in json.loads(res.output)["plan"]}
    assert plan["acme-prod-web-1"]["verdict"] == "refused" and plan["acme-prod-web-1"]["to"] is None
    assert "local disk(s) /var/lib/libvirt/images/web-1.qcow2" in plan["acme-prod-web-1"]["reasons"][0]
    assert plan["acme-prod-web-2"]["verdict"] == "live"
    res = invoke(cfg, "host", "drain", "h1")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "cannot place acme-prod-web-1: local disk(s) /var/lib/libvirt/images/web-1.qcow2" in res.output
    res = invoke(cfg, "vm", "migrate", "acme-prod-web-1")
    assert res.exit_code == 2 and "acme-prod-web-1 cannot live-migrate: local disk(s)" in res.output
    assert "--cold-ok' moves it cold" in res.output
    assert stored_requests(store) == []
    res = invoke(cfg, "host", "drain", "h1", "--dry-run", "--cold-ok", "--json")
    plan = {m["name"]: m for m in json.loads(res.output)["plan"]}
    assert plan["acme-prod-web-1"]["verdict"] == "cold" and plan["acme-prod-web-1"]["to"] in ("h2", "h3")
    assert plan["acme-prod-web-2"]["verdict"] == "live"


def test_drain_undrain_and_migrate_put_one_request_each(cluster):
    store, cfg = cluster
    res = invoke(cfg, "host", "drain", "h1", "--max-parallel", "1", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["host"] == "h1"
    [req] = stored_requests(store)
    assert (req["kind"], req["host"], req["options"]) == ("drain", "h1", {"partial": False, "max_parallel": 1})
    res = invoke(cfg, "host", "drain", "h1")  # the leader has not acted on the first one yet
    assert res.exit_code == 2 and "h1 is already draining (its request waits for the leader)" in res.output
    assert len(stored_requests(store)) == 1
    _state(store, "h1", "maintenance")
    assert invoke(cfg, "host", "undrain", "h1", "--return-vms").exit_code == 0
    res = invoke(cfg, "vm", "migrate", "acme-prod-web-2", "--to", "h3", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["to"] == "h3"
    kinds = sorted((r["kind"], r.get("vm", ""), json.dumps(r.get("options"), sort_keys=True)) for r in stored_requests(store))
    assert kinds == [("drain", "", '{"max_parallel": 1, "partial": false}'), ("migrate", "vm2", '{"to": "h3"}'),
                     ("undrain", "", '{"return_vms": true}')]


def test_migrations_lists_those_in_flight_and_the_last_outcomes(cluster):
    store, cfg = cluster
    store.put(K.vm_migration("vm2"), json.dumps({"from": "h1", "to": "h2", "epoch": 3, "deadline": 61.4,
                                                 "op": "drain-h1", "attempt": 1}))
    store.put(K.host_migration("h1", "vm1"), json.dumps({"to": "h3", "op": "drain-h1", "attempt": 1,
                                                         "outcome": "completed", "location": "destination",
                                                         "duration_s": 2.0, "downtime_ms": 41,
                                                         "data_total": 536870912, "at": 5.0}))
    # the source's job info while it runs (libvirt's jobStats, a "running" record)
    store.put(K.host_migration("h1", "vm2"), json.dumps({"to": "h2", "op": "drain-h1", "attempt": 1,
                                                         "outcome": "running", "location": "source",
                                                         "duration_s": 1.5, "data_total": 2 << 30,
                                                         "data_processed": 1 << 30, "data_remaining": 1 << 30}))
    res = invoke(cfg, "migrations", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert (rows[0]["data_processed"], rows[0]["data_remaining"]) == (1 << 30, 1 << 30)
    assert [(r["name"], r["state"], r["to"]) for r in rows] == [("acme-prod-web-2", "migrating", "h2"),
                                                                ("acme-prod-web-1", "completed", "h3")]
    assert rows[1]["downtime_ms"] == 41
    res = CliRunner(env={"COLUMNS": "160"}).invoke(main, ["migrations", "--config", cfg])
    assert "acme-prod-web-1" in res.output and res.exit_code == 0 and "completed" in res.output and "41 ms" in res.output and "256" in res.output


def test_wait_follows_the_operation_from_its_journal_and_the_sources_job_info(cluster):
    from haagent.manager.migrate_cli import op_progress
    from haagent.state.codec import build_view

    store, cfg = cluster
    op = "drain-h1-1-5"
    store.put(f"{K.op(op)}/head", json.dumps({"kind": "drain", "host": "h1", "epoch": 1}))
    store.put(f"{K.op(op)}/0000", json.dumps({"step": "intent", "at": 1.0, "detail": {"vms": ["vm2", "vm1"],
                                                                                     "request": "r1"}}))
    store.put(f"{K.op(op)}/0001", json.dumps({"step": "migrated", "at": 2.0, "detail": {"vm": "vm1", "to": "h3"}}))
    store.put(f"{K.op(op)}/0002", json.dumps({"step": "migrate_start", "at": 2.0,
                                             "detail": {"vm": "vm2", "to": "h2", "attempt": 1}}))
    store.put(K.vm_migration("vm2"), json.dumps({"from": "h1", "to": "h2", "epoch": 1, "deadline": 60, "op": op,
                                                 "attempt": 1}))
    store.put(K.host_migration("h1", "vm2"), json.dumps({"to": "h2", "op": op, "attempt": 1, "outcome": "running",
                                                         "location": "source", "data_total": 2 << 30,
                                                         "data_processed": 1 << 29, "data_remaining": 3 << 29}))
    kvs, _ = store.get_prefix(K.root)
    view = build_view({kv.key: kv for kv in kvs}, K, 0)
    p = op_progress(view, view.ops[op])
    assert (p["moved"], p["total"], p["done"]) == (1, 2, False)
    assert p["fraction"] == {"acme-prod-web-2": 0.25, "acme-prod-web-1": 1.0}
    assert p["vms"]["acme-prod-web-2"] == "migrating to h2 (attempt 1) 512/2048 MiB, 1536 MiB left"


def test_every_bad_input_is_one_line_exit_2_and_nothing_half_started(cluster):
    """Unknown host, the last active host, a host already draining, a host that is down: one
    clear line, exit 2, no request written (the leader would refuse it the same way)."""
    store, cfg = cluster

    def refused(*args):
        res = invoke(cfg, *args)
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        return res.output.strip()

    assert refused("host", "drain", "nosuch") == "haagent: refused: unknown host 'nosuch'"
    store.delete(K.host_alive("h3"))  # h3's lease is gone: down
    assert "h3 is down: only an active host with a live lease can be drained" in refused("host", "drain", "h3")
    _state(store, "h2", "draining")
    assert "h2 is already draining" in refused("host", "drain", "h2")
    # h1 is now the only active host with a lease
    assert "h1 is the last active host: there is nowhere to move its VMs" in refused("host", "drain", "h1")
    assert "unknown VM 'nosuch'" in refused("vm", "migrate", "nosuch")
    assert "unknown host 'h9'" in refused("vm", "migrate", "acme-prod-web-1", "--to", "h9")
    assert stored_requests(store) == [] and store.get_prefix(K.ops)[0] == []


def test_dry_run_gives_every_vms_verdict_live_cold_or_refused(cluster):
    store, cfg = cluster
    store.put(K.vm_spec("vm3"), json.dumps(VmSpec("vm3", "acme-prod-legacy-1", memory_mib=256, policy="none").to_dict()))
    store.put(K.vm_placement("vm3"), json.dumps({"host": "h1", "epoch": 1, "op": "", "reason": "test"}))
    res = invoke(cfg, "host", "drain", "h1")  # refused by name without --cold-ok
    assert res.exit_code == 2 and "acme-prod-legacy-1: HA policy none: not live-migrated (--cold-ok" in res.output
    res = invoke(cfg, "host", "drain", "h1", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "3 VM(s) in this order: 2 live, 0 cold, 1 refused" in res.output
    assert "REFUSED: HA policy none" in res.output and "the drain would be refused as it stands" in res.output
    res = invoke(cfg, "host", "drain", "h1", "--dry-run", "--cold-ok", "--json")
    out = json.loads(res.output)
    assert out["verdicts"] == {"live": 2, "cold": 1, "refused": 0}
    assert {m["name"]: m["verdict"] for m in out["plan"]}["acme-prod-legacy-1"] == "cold"
    assert stored_requests(store) == []
    res = invoke(cfg, "host", "drain", "h1", "--cold-ok")
    assert res.exit_code == 0, res.output
    [req] = stored_requests(store)
    assert req["options"] == {"partial": False, "cold_ok": True}


def test_drain_all_plans_the_vms_haagent_does_not_manage_from_the_hosts_report(cluster):
    store, cfg = cluster
    store.put(K.host_report("h1"), json.dumps({"cpus": 8, "memory_mib": 8192, "running_vms": ["vm1", "vm2"],
                                               "unmanaged_vms": [{"uuid": "u9", "name": "scratch-build-1",
                                                                  "vcpus": 1, "memory_mib": 1024}]}))
    res = invoke(cfg, "host", "drain", "h1", "--dry-run", "--json")
    assert "scratch-build-1" not in res.output  # only with --all
    res = invoke(cfg, "host", "drain", "h1", "--dry-run", "--all")
    assert res.exit_code == 0, res.output
    assert "3 VM(s) in this order: 3 live, 0 cold, 0 refused" in res.output and "scratch-build-1" in res.output
    res = invoke(cfg, "host", "drain", "h1", "--all", "--json")
    assert res.exit_code == 0, res.output
    [req] = stored_requests(store)
    assert req["options"] == {"partial": False, "all": True}


def test_wait_prints_plain_lines_per_vm_with_memory_and_dirty_rate_and_ctrl_c_leaves_the_drain(cluster, capsys):
    from haagent.config import load_config
    from haagent.manager import migrate_cli

    store, cfg = cluster
    op = "drain-h1-1-5"
    store.put(f"{K.op(op)}/head", json.dumps({"kind": "drain", "host": "h1", "epoch": 1}))
    store.put(f"{K.op(op)}/0000", json.dumps({"step": "intent", "at": 1.0, "detail": {"vms": ["vm2", "vm1"],
                                                                                     "request": "r1"}}))
    store.put(f"{K.op(op)}/0001", json.dumps({"step": "migrate_start", "at": 2.0,
                                             "detail": {"vm": "vm2", "to": "h2", "attempt": 1}}))
    store.put(K.vm_migration("vm2"), json.dumps({"from": "h1", "to": "h2", "epoch": 1, "deadline": 60, "op": op,
                                                 "attempt": 1}))
    store.put(K.host_migration("h1", "vm2"), json.dumps({"to": "h2", "op": op, "attempt": 1, "outcome": "running",
                                                         "location": "source", "data_total": 2 << 30,
                                                         "data_processed": 1 << 29, "data_remaining": 3 << 29,
                                                         "dirty_rate": 12 << 20}))
    rounds = []

    def tick(_poll):  # the leader's next writes between two readings
        rounds.append(1)
        if len(rounds) == 1:
            store.put(f"{K.op(op)}/0002", json.dumps({"step": "migrated", "at": 3.0, "detail": {"vm": "vm2", "to": "h2"}}))
            store.delete(K.vm_migration("vm2"))
        elif len(rounds) == 2:
            raise KeyboardInterrupt

    migrate_cli._wait(load_config(cfg), "r1", False, "haagent migrations", poll=0, sleep=tick)
    out, err = capsys.readouterr()  # not a TTY: plain lines
    lines = out.splitlines()
    assert lines == [
        "drain h1: 0/2 moved, 12%",
        "  acme-prod-web-2: migrating to h2 (attempt 1) 512/2048 MiB, 1536 MiB left, dirtied at 12.0 MiB/s",
        "  acme-prod-web-1: queued",
        "drain h1: 1/2 moved, 50%",
        "  acme-prod-web-2: on h2",
    ]
    assert err.strip() == (
        f"stopped watching; the operation goes on with the leader. Watch it again: haagent migrations --follow {op}")
    assert store.get(f"{K.op(op)}/0002") is not None  # nothing was cancelled
