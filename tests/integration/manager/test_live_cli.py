"""The live cluster through a real etcd: agents publish their inventory, and `cluster dump`,
`plan --live` and `status` read it back exactly as the leader's placement sees it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from haagent.agent.managed import HaMark
from haagent.agent.vms import spec_record
from haagent.cli import main
from haagent.config import load_config
from haagent.daemon import AgentDaemon
from haagent.hypervisor.fake import FakeCluster, FakeHypervisor, default_cells
from haagent.store.client import EtcdStore
from haagent.store.keys import Keys
from policies.io import parse_cluster

K = Keys("it")
STRICT = "<numatune><memory mode='strict' nodeset='0'/></numatune>"


def xml(name: str, uuid: str, mib: int, inner: str = "") -> str:
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>{mib}</memory>"
            f"<vcpu>1</vcpu>{inner}<os><type>hvm</type></os></domain>")


@pytest.fixture
def live(etcd1, cli_config, tmp_path):
    """h1 (two 8 GiB cells, tagged ssd) runs db (strict on cell 0) and web; h2 has two 3 GiB cells."""
    fakes = FakeCluster()
    store = EtcdStore(etcd1.endpoints, timeout=1)
    daemons = []
    for host, cells, tags in (("h1", default_cells(2, 2, 8192), '["ssd"]'), ("h2", default_cells(2, 2, 3072), "[]")):
        cfg = tmp_path / f"{host}.toml"
        cfg.write_text(open(cli_config).read().replace('host = "h1"', f'host = "{host}"\ntags = {tags}'))
        hv = FakeHypervisor(f"fake://{host}", cluster=fakes, numa=cells)
        d = AgentDaemon(load_config(cfg), store=store, hypervisor=hv)
        daemons.append(d)
        store.put(K.host_state(host), json.dumps({"state": "active", "reason": "test", "epoch": 1, "since": 0}))
        store.put(K.host_alive(host), json.dumps({"host": host}))  # the agent's lease key, here lease-less
    h1 = daemons[0].hypervisor
    for name, uuid, mib, inner in (("db", "00000000-0000-0000-0000-0000000000d1", 4096, STRICT),
                                   ("web", "00000000-0000-0000-0000-0000000000e1", 512, "")):
        info = h1.define_and_start(xml(name, uuid, mib, inner))
        store.put(K.vm_spec(uuid), spec_record("h1", h1, info, HaMark(10, "restart", ("db",) if name == "db" else ())))
        store.put(K.vm_placement(uuid), json.dumps({"host": "h1", "epoch": 1}))
    for d in daemons:
        d.collector.read_once()
        d.publish_report()
    try:
        yield store, cli_config
    finally:
        store.close()


def run(*args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args))


def test_cluster_dump_json_is_a_cluster_file_with_the_live_inventory(live):
    store, cfg = live
    res = run("cluster", "dump", "--json", "--config", cfg)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    cluster, _ = parse_cluster(data)  # the documented --cluster format, as plan reads it
    h1, h2 = cluster.host("h1"), cluster.host("h2")
    assert h1.tags == frozenset({"ssd"}) and not h2.tags
    assert [c.memory_mib for c in h1.numa] == [8192, 8192] and [c.memory_mib for c in h2.numa] == [3072, 3072]
    assert [c.memory_used_mib for c in h1.numa] == [4096, 512]  # db bound to cell 0, web where most is free
    assert h1.cpu_family and h1.cpu_family == h2.cpu_family
    db = cluster.vm("db")
    assert (db.host, db.numa, db.nodeset, db.priority, db.groups) == ("h1", "strict", (0,), 10, ("db",))
    table = run("cluster", "dump", "--config", cfg)
    assert table.exit_code == 0 and "0:4096/8192" in table.output and "numa strict" in table.output


def test_plan_explain_live_shows_every_hosts_verdict_for_a_running_vm(live):
    _store, cfg = live
    res = run("plan", "explain", "db", "--live", "--config", cfg, "--json")
    assert res.exit_code == 0, res.output
    verdicts = {v["host"]: v for v in json.loads(res.output)["hosts"]}
    assert set(verdicts) == {"h1", "h2"}
    assert verdicts["h2"]["rejected_by"] == "numa"  # its cell 0 (3 GiB) cannot hold a 4 GiB VM bound there
    by_uuid = run("plan", "explain", "00000000-0000-0000-0000-0000000000d1", "--live", "--config", cfg, "--json")
    assert json.loads(by_uuid.output)["hosts"] == json.loads(res.output)["hosts"]
    both = run("plan", "explain", "db", "--live", "--cluster", "x.json", "--config", cfg)
    assert both.exit_code == 2 and "either --cluster FILE or --live" in both.output


def test_plan_evacuate_live_refuses_what_the_cells_cannot_take(live):
    _store, cfg = live
    res = run("plan", "evacuate", "h1", "--live", "--config", cfg, "--json")
    assert res.exit_code == 1, res.output
    plan = json.loads(res.output)
    assert [m["vm"] for m in plan["moves"]] == ["web"] and [u["vm"] for u in plan["unplaceable"]] == ["db"]


def test_status_shows_cpu_memory_and_numa(live):
    _store, cfg = live
    res = run("status", "--json", "--config", cfg)
    assert res.exit_code == 0, res.output
    hosts = {h["name"]: h for h in json.loads(res.output)["hosts"]}
    assert [c["free_mib"] for c in hosts["h1"]["numa"]] == [4096, 7680]
    assert hosts["h1"]["memory_used_mib"] is not None and hosts["h1"]["tags"] == ["ssd"]
    table = run("status", "--config", cfg)
    assert table.exit_code == 0 and "0:4096 1:7680" in table.output
