"""rebalance(): fewer imbalance, every rule kept, limits honoured."""

from __future__ import annotations

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


def test_max_moves_and_min_gain_are_limits(build):
    c = skewed(build)
    assert len(rebalance(c, 2, 0.0).moves) == 2
    assert rebalance(c, 2, 0.0).stopped == "max_moves"
    assert rebalance(c, 20, 10.0).moves == () and rebalance(c, 20, 10.0).stopped == "min_gain"


def test_each_move_is_the_largest_gain_first(build):
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
