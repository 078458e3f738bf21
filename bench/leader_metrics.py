"""What the leader's own metrics cost it: the imbalance score it publishes (the live cluster
converted for the placement engine, then the rebalance planner's score) and the migration and
drain figures it sets at every round, at three cluster sizes.

Views are generated from a fixed seed: hosts with two NUMA cells and a smoothed load, VMs spread
round-robin. A rebalance round computes the score on the leader's decision thread every
``[rebalance] interval``; the figures are computed at every round.
"""

from __future__ import annotations

import gc
import random
import statistics
import time

from haagent.manager.live import live_cluster
from haagent.config import RebalanceSection
from haagent.manager.shell import migration_figures
from haagent.model import HostCell, HostState
from haagent.state.view import ClusterView, HostView, Migration, Op, OpStep, VmSpec
from policies.config import PolicyConfig
from policies.rebalance import score

SIZES = ((40, 800), (200, 4000), (1000, 20000))  # hosts, VMs
REPEAT = 5
INTERVAL = RebalanceSection.interval  # the default [rebalance] interval


def make_view(n_hosts: int, n_vms: int, draining: int = 0, seed: int = 7) -> ClusterView:
    """A cluster at one revision; ``draining`` hosts have an open drain and 2 migrations each."""
    rnd = random.Random(seed)
    hosts = {}
    for i in range(n_hosts):
        name = f"h{i:04d}"
        cells = (HostCell(0, tuple(range(32)), 131072, rnd.randint(20000, 100000)),
                 HostCell(1, tuple(range(32, 64)), 131072, rnd.randint(20000, 100000)))
        hosts[name] = HostView(name, True, HostState.ACTIVE, 64, 262144, numa=cells,
                               cpu_used=rnd.uniform(1, 40), memory_used_mib=rnd.uniform(1e4, 2e5))
    names = sorted(hosts)
    specs = {f"u{j:05d}": VmSpec(f"u{j:05d}", f"acme-prod-svc{j % 50}-{j}", rnd.choice((1, 2, 4)),
                                 rnd.choice((2048, 4096, 8192))) for j in range(n_vms)}
    placements = {u: names[j % n_hosts] for j, u in enumerate(sorted(specs))}
    ops, migrations = {}, {}
    for h in names[:draining]:
        op = f"drain-{h}"
        ops[op] = Op(op, "drain", h, 1, (OpStep("intent", 1.0),))
        for u in [u for u, p in placements.items() if p == h][:2]:
            migrations[u] = Migration(u, h, names[-1], 1, 60.0, op, 1)
    return ClusterView(1, hosts, specs, placements, ops, migrations)


def median_s(fn) -> float:
    times = []
    for _ in range(REPEAT):
        gc.collect()
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def run() -> str:
    cfg = PolicyConfig()
    rows = []
    for n_hosts, n_vms in SIZES:
        view = make_view(n_hosts, n_vms)
        busy = make_view(n_hosts, n_vms, draining=3)
        t_score = median_s(lambda: score(live_cluster(view, cfg).cluster, cfg))
        t_quiet = median_s(lambda: migration_figures(view))
        t_drain = median_s(lambda: migration_figures(busy))
        rows.append(f"| {n_hosts:,} / {n_vms:,} | {t_score * 1000:.1f} ms | "
                    f"{t_score / INTERVAL * 100:.2f} % | {t_quiet * 1e6:.0f} µs | {t_drain * 1000:.2f} ms |")
    return "\n".join([
        "## Leader metrics: the imbalance score and the migration gauges",
        "",
        f"Median CPU time (process time: the machine is shared) of {REPEAT} runs. The score is `policies.rebalance.score` of `live_cluster(view)`, "
        f"as a rebalance round computes it on the leader's decision thread, every `[rebalance] interval` "
        f"(default {INTERVAL:.0f} s), and publishes it (`haagent_rebalance_score`); \"share of a core\" "
        "is its time over that interval. The "
        "figures (`haagent_migrations_in_flight`, `haagent_drains_in_progress`, "
        "`haagent_drain_vms_left`) are computed at every leader round from the round's view: "
        "without a drain they read only the open operations; with drains open (3 hosts here) "
        "they also count the placements.",
        "",
        "| hosts / VMs | score | share of a core | figures, no drain | figures, 3 drains open |",
        "|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    print(run())
