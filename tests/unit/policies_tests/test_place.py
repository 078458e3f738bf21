"""place (failover), evacuate (drain) and explain."""

from __future__ import annotations

import pytest

from haagent.errors import PlacementInputError
from policies import evacuate, explain, place
from policies.config import PolicyConfig
from policies.model import Group


def test_place_goes_by_priority_then_size_and_reports_the_rest(build):
    hosts = [build.host("a", 8, 16384), build.host("dead", state="fenced")]
    vms = [build.vm("small", 1, 2048, host="dead"), build.vm("big", 1, 8192, host="dead"),
           build.vm("vip", 1, 8192, host="dead", priority=10), build.vm("x", 1, 8192, host="dead")]
    result = place([v for v in vms], build.cluster(hosts, vms), PolicyConfig())
    assert [p.vm for p in result.placements] == ["vip", "big"]
    assert [u.vm for u in result.unplaceable] == ["x", "small"]
    assert all("capacity" in u.reasons[0] for u in result.unplaceable)


def test_place_never_drops_a_vm(build):
    hosts = [build.host("a", 2, 2048)]
    vms = [build.vm(f"v{i}", 1, 1024) for i in range(5)]
    result = place(vms, build.cluster(hosts), PolicyConfig(cpu_overcommit=1))
    assert len(result.placements) + len(result.unplaceable) == 5
    assert len(result.placements) == 2


def test_place_spreads_instances_of_a_service(build):
    hosts = [build.host(n) for n in "abc"]
    vms = [build.vm(f"acme-prod-web-{i}") for i in range(3)]
    result = place(vms, build.cluster(hosts), PolicyConfig(strategy="pack"))
    assert sorted(p.host for p in result.placements) == ["a", "b", "c"]


def test_place_keeps_hard_anti_affinity(build):
    hosts = [build.host("a"), build.host("b")]
    groups = [Group("db", "anti-affinity", True)]
    vms = [build.vm(f"db{i}", groups=("db",)) for i in range(3)]
    result = place(vms, build.cluster(hosts, (), groups), PolicyConfig())
    assert len({p.host for p in result.placements}) == 2
    assert [u.vm for u in result.unplaceable] == ["db2"]
    assert "hard anti-affinity" in result.unplaceable[0].reasons[0]


def test_place_rejects_a_vm_listed_twice(build):
    with pytest.raises(PlacementInputError):
        place([build.vm("x"), build.vm("x")], build.cluster([build.host("a")]))


def test_evacuate_plans_live_migrations_to_compatible_hosts(build):
    hosts = [build.host("a", cpu_family="zen3"), build.host("b", cpu_family="zen3"),
             build.host("c", cpu_family="skylake")]
    vms = [build.vm("v1", host="a"), build.vm("v2", host="a", migratable=False),
           build.vm("v3", host="b")]
    plan = evacuate("a", build.cluster(hosts, vms), PolicyConfig())
    assert [(m.vm, m.source, m.target) for m in plan.moves] == [("v1", "a", "b")]
    assert [u.vm for u in plan.unplaceable] == ["v2"]
    assert "cannot live-migrate" in plan.unplaceable[0].reasons[0]
    with pytest.raises(PlacementInputError):
        evacuate("zz", build.cluster(hosts, vms))


def test_explain_lists_every_host_with_a_verdict(build):
    hosts = [build.host("a", 4, 8192), build.host("b"), build.host("c", state="maintenance")]
    vms = [build.vm("x", 8, 4096)]
    e = explain("x", build.cluster(hosts, vms), PolicyConfig(cpu_overcommit=1))
    by = {v.host: v for v in e.hosts}
    assert [v.host for v in e.hosts] == ["a", "b", "c"]
    assert by["a"].rejected_by == "capacity" and "needs 8 vcpus" in by["a"].reason
    assert by["c"].rejected_by == "state"
    assert by["b"].chosen and {s[0] for s in by["b"].scores} == {"load"} and e.chosen == "b"
    with pytest.raises(PlacementInputError):
        explain("nope", build.cluster(hosts, vms))
