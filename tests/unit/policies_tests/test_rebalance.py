"""rebalance(): less imbalance for little memory, every rule kept, limits honoured."""

from __future__ import annotations

import pytest

from haagent.errors import PlacementInputError
from policies import rebalance, score
from policies.config import PolicyConfig
from policies.model import Group
from policies.state import ClusterState
from policies.rebalance import imbalance


def skewed(build, n_hosts=4, n_vms=12, **vm_kw):
    hosts = [build.host(f"h{i}", 16, 65536) for i in range(n_hosts)]
    vms = [build.vm(f"v{j:02d}", 2, 4096, host="h0", **vm_kw) for j in range(n_vms)]
    return build.cluster(hosts, vms)


def test_rebalance_lowers_the_score_with_few_moves(build):
    c = skewed(build)
    plan = rebalance(c, 20, 0.0, PolicyConfig())
    assert plan.score_before == score(c) > plan.score_after
    assert len(plan.moves) == 9 and plan.score_after < 1e-9  # 12 VMs -> 3 per host
    assert len({m.vm for m in plan.moves}) == len(plan.moves)  # nobody moves twice


def test_max_moves_max_gib_and_min_gain_are_limits(build):
    c = skewed(build)
    assert len(rebalance(c, 2, 0.0).moves) == 2
    assert rebalance(c, 2, 0.0).stopped == "max_moves"
    assert rebalance(c, 20, 10.0).moves == () and rebalance(c, 20, 10.0).stopped == "min_gain"
    plan = rebalance(c, None, 0.0, max_gib=13.0)  # 4 GiB VMs: three fit in 13 GiB
    assert len(plan.moves) == 3 and plan.gib == 12.0 and plan.stopped == "max_gib"
    assert rebalance(c, None, 0.0, max_gib=0).moves == ()


def test_without_limits_the_plan_runs_until_no_move_gains(build):
    c = skewed(build, n_hosts=6, n_vms=60)
    plan = rebalance(c)
    assert len(plan.moves) == 50 and plan.stopped == "no_move"  # 60 VMs -> 10 per host
    assert plan.score_after < 1e-9


def test_frozen_vms_and_hosts_not_active_stay_out_of_the_plan(build):
    hosts = [build.host("h0"), build.host("h1"), build.host("h2", state="maintenance"),
             build.host("h3")]
    vms = [build.vm(f"v{j:02d}", 2, 4096, host="h0") for j in range(8)]
    vms += [build.vm(f"m{j}", 2, 4096, host="h2") for j in range(3)]
    frozen = {"v00", "v01", "v02", "v03", "v04", "v05"}
    plan = rebalance(build.cluster(hosts, vms), frozen=frozen)
    assert {m.vm for m in plan.moves} == {"v06", "v07"}
    assert {m.target for m in plan.moves} == {"h1", "h3"}


def test_the_cost_method_moves_the_smaller_of_two_equal_gains(build):
    # Memory does not count in this score: moving a or b gains the same, b migrates 1/8 of a.
    hosts = [build.host("h0"), build.host("h1")]
    vms = [build.vm("a", 2, 16384, host="h0", cpu_load=2.0),
           build.vm("b", 2, 2048, host="h0", cpu_load=2.0)]
    config = PolicyConfig(imbalance_memory_weight=0.0)
    c = build.cluster(hosts, vms)
    assert [m.vm for m in rebalance(c, 1, 0.0, config, method="greedy").moves] == ["a"]
    cost = rebalance(c, 1, 0.0, config)
    assert [m.vm for m in cost.moves] == ["b"] and cost.mib == (2048,)


def test_a_move_the_rest_of_the_plan_no_longer_needs_is_dropped(build):
    spec = [("v0", 16384, "h1", 1.0), ("v1", 2048, "h1", 2.0), ("v2", 4096, "h1", 2.0),
            ("v3", 16384, "h0", 2.0), ("v4", 8192, "h0", 2.0), ("v5", 2048, "h0", 4.0)]
    c = build.cluster([build.host(f"h{i}", cells=0) for i in range(4)],
                      [build.vm(n, 4, m, host=h, cpu_load=load) for n, m, h, load in spec])
    plan = rebalance(c, None, 0.05)
    # Moving v4 (8 GiB) to h2 first gained 0.083; once v5 and v2 have moved it only gains 0.048.
    assert [(m.vm, m.target) for m in plan.moves] == [("v5", "h3"), ("v2", "h2")]
    state = ClusterState(c, PolicyConfig())
    for m in plan.moves:
        state.remove(state.reqs[m.vm])
        state.add(state.reqs[m.vm], m.target, m.cells)
    for m in plan.moves:  # every move left is still worth min_gain at the end
        req = state.reqs[m.vm]
        state.remove(req)
        state.add(req, m.source, ())
        assert imbalance(state) - plan.score_after >= 0.05
        state.remove(req)
        state.add(req, m.target, m.cells)


@pytest.mark.parametrize("kwargs,message", [
    ({"max_moves": -1}, "max_moves: must not be negative (got -1)"),
    ({"max_moves": 2.5}, "max_moves: must be a whole number (got 2.5)"),
    ({"max_gib": -0.5}, "max_gib: must not be negative (got -0.5)"),
    ({"max_gib": float("nan")}, "max_gib: must be a finite number (got nan)"),
    ({"min_gain": -1e-3}, "min_gain: must not be negative (got -0.001)"),
    ({"method": "best"}, "method: must be one of cost, greedy (got 'best')"),
])
def test_bad_limits_are_one_line_field_named_errors(build, kwargs, message):
    with pytest.raises(PlacementInputError) as err:
        rebalance(skewed(build), **kwargs)
    assert str(err.value) == message


def test_plan_scores_are_the_scores_after_each_move(build):
    c = skewed(build)
    plan = rebalance(c, 20, 0.0)
    scores = [plan.score_before]
    state = ClusterState(c, PolicyConfig())
    for m in plan.moves:
        req = state.reqs[m.vm]
        state.remove(req)
        state.add(req, m.target, m.cells)
        scores.append(imbalance(state))
    gains = [a - b for a, b in zip(scores, scores[1:])]
    assert all(g > 0 for g in gains)
    assert all(abs(a - b) < 1e-9 for a, b in zip(scores[1:], plan.scores))
    assert abs(scores[-1] - plan.score_after) < 1e-9


def test_rebalance_keeps_rules(build):
    hosts = [build.host(f"h{i}", 16, 65536, cpu_family="zen3" if i < 2 else "skylake")
             for i in range(4)]
    vms = [build.vm(f"v{j}", 2, 4096, host="h0") for j in range(6)]
    vms += [build.vm("pinned", 2, 4096, host="h0", migratable=False)]
    plan = rebalance(build.cluster(hosts, vms), 20, 0.0)
    assert plan.moves and all(m.target == "h1" for m in plan.moves)  # same cpu family only
    assert "pinned" not in {m.vm for m in plan.moves}


def test_hard_affinity_group_is_not_split(build):
    hosts = [build.host(f"h{i}") for i in range(3)]
    vms = [build.vm(f"a{j}", 2, 8192, host="h0", groups=("app",)) for j in range(4)]
    plan = rebalance(build.cluster(hosts, vms, [Group("app", "affinity", True)]), 10, 0.0)
    assert plan.moves == () and plan.stopped == "no_move"


def test_balanced_cluster_needs_no_move(build):
    hosts = [build.host(f"h{i}") for i in range(3)]
    vms = [build.vm(f"v{i}", host=f"h{i}") for i in range(3)]
    plan = rebalance(build.cluster(hosts, vms), 10, 0.0)
    assert plan.moves == () and plan.score_before == plan.score_after


def test_a_swap_beats_one_bigger_move(build):
    # h1 holds 12 GiB and 3 cores, h0 2 GiB and 1 core. One move, v0 (8 GiB), evens the cpu;
    # the pair v1 (4 GiB) to h0 then v2 (2 GiB) back reaches the same score for 6 GiB.
    hosts = [build.host("h0", cells=0), build.host("h1", cells=0)]
    vms = [build.vm("v0", 2, 8192, host="h1", cpu_load=1.0),
           build.vm("v1", 2, 4096, host="h1", cpu_load=2.0),
           build.vm("v2", 2, 2048, host="h0", cpu_load=1.0)]
    c = build.cluster(hosts, vms)
    greedy = rebalance(c, None, 0.0, method="greedy")
    assert [(m.vm, m.target) for m in greedy.moves] == [("v0", "h0")]
    cost = rebalance(c, None, 0.0)
    assert [(m.vm, m.target) for m in cost.moves] == [("v1", "h0"), ("v2", "h1")]
    assert cost.gib == 6.0 < greedy.gib and abs(cost.score_after - greedy.score_after) < 1e-12
    assert cost.scores[0] < cost.score_before  # each half of the swap gains on its own
    # With room for one move only, the swap is not started.
    assert [m.vm for m in rebalance(c, 1, 0.0).moves] == ["v0"]
