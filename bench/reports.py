"""Host reports: etcd writes per host per minute in a steady state, beyond lease keepalives.

Agents publish ``hosts/<h>/report`` with their inventory and smoothed load only on a meaningful
change (``haagent.agent.inventory.worth_writing``). This runs the simulator's agents, which
build their reports with the agent's own inventory code, for 30 virtual minutes on an idle
cluster and on one whose guests' CPU use jitters every 10 s (each VM around its own level,
+-30 %), and on one where a VM a minute really changes (idle <-> 3 cores: those changes must
reach the leader), and counts report writes after a 2-minute warm-up. Target: <= 2 per host per minute.
A report written every ``report_interval`` (5 s) would be 12.
"""

from __future__ import annotations

import random

HOSTS, VMS_PER_HOST = 5, 4
WARMUP, SPAN = 120.0, 1800.0


def _cluster() -> dict:
    return {
        "hosts": {f"h{i}": {"numa": [{"cpus": 4, "memory_mib": 8192}, {"cpus": 4, "memory_mib": 8192}]}
                  for i in range(1, HOSTS + 1)},
        "vms": [{"name": f"vm{h}{j}", "host": f"h{h}", "memory_mib": 1024}
                for h in range(1, HOSTS + 1) for j in range(VMS_PER_HOST)],
        "sim": {"tick": 1.0},
    }


def _writes(jitter: bool, seed: int = 1, swing: bool = False) -> float:
    from haagent.sim.scenario import build

    sim = build(_cluster())
    rng = random.Random(seed)
    level = {v: rng.choice((20.0, 50.0, 100.0, 200.0)) for v in sim.specs}
    counted = {"n": 0}
    put = sim.store.put

    def counting_put(key, value, lease=None):
        if key.endswith("/report") and sim.now >= WARMUP:
            counted["n"] += 1
        return put(key, value, lease)

    sim.store.put = counting_put  # type: ignore[method-assign]
    for vm, pct in level.items():
        sim.vm_load(vm, pct)
    next_jitter = 0.0
    while sim.now < WARMUP + SPAN:
        if jitter and sim.now >= next_jitter:
            for vm, pct in level.items():
                sim.vm_load(vm, pct * rng.uniform(0.7, 1.3))
            next_jitter += 10.0
        if swing and sim.now >= next_jitter:  # one VM jumps between idle and 3 cores each minute
            vm = rng.choice(sorted(level))
            level[vm] = 20.0 if level[vm] > 100 else 300.0
            sim.vm_load(vm, level[vm])
            next_jitter += 60.0
        sim.tick_body()
        sim.advance_clock()
    return counted["n"] / HOSTS / (SPAN / 60.0)


def run() -> str:
    steady, noisy, swing = _writes(False), _writes(True), _writes(False, swing=True)
    return "\n".join([
        "## Host reports: etcd writes per host per minute",
        "",
        f"The simulator's agents (the agent's inventory and `worth_writing` code) on {HOSTS} hosts with "
        f"{VMS_PER_HOST} VMs each and two NUMA cells, over {SPAN / 60:.0f} virtual minutes after a "
        f"{WARMUP / 60:.0f}-minute warm-up; lease keepalives are not writes and are not counted.",
        "",
        "| cluster | report writes per host per minute | target |",
        "|---|---:|---:|",
        f"| guests at a steady load | {steady:.2f} | <= 2 |",
        f"| guests' CPU jittering +-30 % every 10 s | {noisy:.2f} | <= 2 |",
        f"| one VM a minute jumping between idle and 3 cores (real change) | {swing:.2f} | |",
        "| (a report every report_interval, for comparison) | 12.00 | |",
    ])
