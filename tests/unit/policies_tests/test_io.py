"""The cluster JSON loader: the one place input is validated; every problem names its field."""

from __future__ import annotations

import json

import pytest

from haagent.errors import PlacementInputError
from policies.io import dump_cluster, load_cluster, parse_cluster

GOOD = {
    "hosts": [{"name": "h1", "cpus": 16, "memory_mib": 65536, "state": "active", "tags": ["ssd"],
               "numa": [{"cpus": 8, "memory_mib": 32768, "hugepages": {"2048": 512}},
                        {"cpus": 8, "memory_mib": 32768}], "cpu_family": "zen3",
               "cpu_used": 3.5, "memory_used_mib": 9000},
              {"name": "h2", "cpus": 8, "memory_mib": 32768}],
    "vms": [{"name": "acme-prod-db-1", "vcpus": 4, "memory_mib": 1024, "host": "h1",
             "numa": "strict", "dedicated_cpus": 4, "hugepages": {"size_kib": 2048, "count": 512},
             "priority": 7, "groups": ["db"], "host_affinity": {"hosts": ["h1"], "hard": False},
             "required_tags": ["ssd"], "migratable": False, "ha": True, "cpu_load": 2.0,
             "numa_cells": [0]},
            {"name": "web", "vcpus": 1, "memory_mib": 512, "host": None}],
    "groups": [{"name": "db", "policy": "anti-affinity", "hard": True}],
}


def test_a_full_document_round_trips():
    cluster, config = parse_cluster(GOOD)
    db = cluster.vm("acme-prod-db-1")
    assert db.hugepage_count == 512 and db.numa_cells == (0,) and not db.host_affinity.hard
    assert cluster.host("h1").numa[0].hugepages == {2048: 512}
    again, _ = parse_cluster(json.loads(json.dumps(dump_cluster(cluster))))
    assert again == cluster


def doc(**changes):
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        kind, index, field = path.split("__")
        data[kind][int(index)][field] = value
    return data


@pytest.mark.parametrize("data,message", [
    ({"vms": []}, "cluster.hosts: is required"),
    (doc(vms__1__vcpus=None), "vms[1] (web).vcpus: is required"),
    (doc(hosts__1__memory_mib=-1), "hosts[1] (h2).memory_mib: must be at least 1 (got -1)"),
    (doc(vms__1__memory_mib=-512), "vms[1] (web).memory_mib: must be at least 1 (got -512)"),
    (doc(vms__1__cpu_load=-1), "vms[1] (web).cpu_load: must not be negative (got -1)"),
    (doc(vms__1__host="h9"), "vms (web).host: unknown host 'h9'"),
    (doc(vms__1__host_affinity={"hosts": ["h7"]}), "vms (web).host_affinity: unknown host 'h7'"),
    (doc(vms__1__groups=["nope"]), "vms (web).groups: unknown group 'nope'"),
    (doc(vms__1__name="acme-prod-db-1"), "duplicate VM name: acme-prod-db-1"),
    (doc(hosts__1__name="h1"), "duplicate host name: h1"),
    (doc(vms__1__numa="sometimes"), "vms[1] (web).numa: must be one of none, preferred, strict"),
    (doc(vms__1__colour="red"), "vms[1] (web).colour: unknown field"),
    (doc(vms__0__numa_cells=[5]), "vms (acme-prod-db-1).numa_cells: host h1 has no cell 5"),
    (doc(vms__1__dedicated_cpus=2), "vms[1] (web).dedicated_cpus: must be at most vcpus (1)"),
    (doc(hosts__0__state="sleepy"), "hosts[0] (h1).state: must be one of active"),
    ({**GOOD, "policy": {"cpu_overcommit": -1}}, "policy.cpu_overcommit: must be greater than 0"),
    ([1, 2], "cluster: must be an object"),
])
def test_bad_input_is_one_clear_error(data, message):
    with pytest.raises(PlacementInputError) as info:
        parse_cluster(data)
    assert message in str(info.value)


def test_policy_in_the_file_is_applied():
    _, config = parse_cluster({**GOOD, "policy": {"strategy": "pack"}})
    assert config.strategy == "pack"


def test_load_cluster_reports_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(PlacementInputError, match="file not found"):
        load_cluster(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlacementInputError, match="not valid JSON"):
        load_cluster(bad)


@pytest.mark.parametrize("text,message", [
    ('{"hosts": [{"name": "h1", "cpus": NaN, "memory_mib": 1}]}', "hosts[0].cpus: must be a finite number (got nan)"),
    ('{"hosts": [{"name": "h1", "cpus": 8, "memory_mib": 1e400}]}', "hosts[0].memory_mib: must be a finite number (got inf)"),
    ('{"hosts": [], "vms": [{"name": "v", "vcpus": 1, "memory_mib": 1, "cpu_load": -Infinity}]}',
     "vms[0].cpu_load: must be a finite number (got -inf)"),
    # json decodes these, then anything walking them recursively (or int()) used to crash
    ('{"hosts": ' + "[" * 900 + "]" * 900 + "}", "hosts[0]: must be an object"),
    ("[" * 100_000, "not valid JSON: nested too deeply"),
    ('{"hosts": [{"name": "h1", "cpus": ' + "9" * 5000 + ', "memory_mib": 1}]}',
     "not valid JSON: an integer has more than 4300 digits"),
])
def test_what_pythons_json_lets_through_is_one_line_not_a_traceback(tmp_path, text, message):
    path = tmp_path / "cluster.json"
    path.write_text(text)
    with pytest.raises(PlacementInputError) as info:
        load_cluster(path)
    assert message in str(info.value) and "\n" not in str(info.value)
