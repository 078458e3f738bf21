"""capacity(): exact N+k on small clusters, a stated worst-case heuristic on big ones."""

from __future__ import annotations

from policies import capacity
from policies.config import PolicyConfig


def cluster(build, n_hosts, vms_per_host, memory=4096):
    hosts = [build.host(f"h{i}", 8, 16384) for i in range(n_hosts)]
    vms = [build.vm(f"h{i}-v{j}", 1, memory, host=f"h{i}")
           for i in range(n_hosts) for j in range(vms_per_host)]
    return build.cluster(hosts, vms)


def test_n_plus_one_holds_when_survivors_have_room(build):
    report = capacity(cluster(build, 4, 2), 1, PolicyConfig())
    assert report.ok and report.exact and report.sets_total == report.sets_checked == 4


def test_n_plus_one_fails_and_names_the_vms(build):
    report = capacity(cluster(build, 3, 3), 1, PolicyConfig())
    assert not report.ok and len(report.at_risk) == 3
    first = report.at_risk[0]
    assert first.hosts == ("h0",) and [u.vm for u in first.unplaceable] == ["h0-v2"]


def test_capacity_leaves_the_cluster_untouched_between_sets(build):
    c = cluster(build, 4, 3)
    a = capacity(c, 2, PolicyConfig())
    b = capacity(c, 2, PolicyConfig())
    assert a == b and a.sets_total == 6


def test_non_ha_vms_are_not_counted(build):
    c = cluster(build, 2, 1)
    c = build.cluster(c.hosts, [build.vm("h0-v0", 1, 14000, host="h0", ha=False),
                                build.vm("h1-v0", 1, 14000, host="h1", ha=False)])
    assert capacity(c, 1, PolicyConfig()).ok


def test_heuristic_above_the_limit_states_its_bound(build):
    roomy = capacity(cluster(build, 10, 3), 2, PolicyConfig(capacity_exact_limit=10))
    assert not roomy.exact and roomy.sets_total == 45 and roomy.sets_checked < 45
    assert roomy.bound.startswith("heuristic: checked")
    assert "so the total holds" in roomy.bound and roomy.ok  # 8 x 4 GiB free for 6 x 4 GiB
    full = capacity(cluster(build, 10, 3, memory=5000), 2, PolicyConfig(capacity_exact_limit=10))
    assert "does NOT hold" in full.bound and not full.ok  # 1.4 GiB free per survivor
