"""The failover simulator at length: 20,000 seeded random fault schedules (``make test`` runs 1,000).

Every schedule's safety invariants are checked after every tick (never two running copies, no
placement moved off a host that was not confirmed fenced, nothing lost) and its liveness at
quiescence. The figures: schedules per second, how many held, and how often each kind of fault
the generator is meant to explore actually happened, so a generator that stopped producing one
(too polite again) shows here.
"""

from __future__ import annotations

import collections
import os
import time

SEEDS = int(os.environ.get("HAAGENT_BENCH_SIM_SEEDS", "20000"))
BASE = 1000  # past the seeds make test runs

# what to look for in a run's story -> the fault or rule it shows was exercised
EXPLORED = {
    "operator ack used": "how=operator acknowledged",
    "ack refused by the CLI": "(refused:",
    "ack discarded by the leader": "event fence_ack_discarded",
    "device lied, caught (fence_inconsistent)": "step=inconsistent",
    "status replies without data": "carries no power state",
    "bad record alerted": "ALERT bad_record",
    "clean agent stop": "stopped cleanly",
    "fence of a deposed leader cancelled": "cancelled: ",
    "fence found the power already off": "already off",
    "storm guard held": "ALERT fencing_storm_hold",
    "watchdog self-fence": "how=watchdog",
    "fence retried": "attempt=2",
    "guests got busy (load)": "fault     load",
    "VM unplaceable (capacity, NUMA)": "ALERT vm_unplaceable",
    "clean stop unrecorded, watchdog left armed": "watchdog left armed",
}


def run() -> str:
    from haagent.sim.schedules import run_seed

    seen: collections.Counter[str] = collections.Counter()
    failed: list[str] = []
    t0 = time.monotonic()
    for seed in range(BASE, BASE + SEEDS):
        out = run_seed(seed, log=True)
        if out.violations or out.problems:
            failed.append(f"{seed}: {'; '.join(out.violations or out.problems)}")
        text = out.text
        for what, needle in EXPLORED.items():
            if needle in text:
                seen[what] += 1
    took = time.monotonic() - t0
    lines = [
        "## Simulator: random fault schedules",
        "",
        f"{SEEDS:,} schedules (seeds {BASE}-{BASE + SEEDS - 1}) in {took:.0f} s "
        f"({SEEDS / took:.0f} per second); **{SEEDS - len(failed):,} held every invariant**, "
        f"{len(failed)} did not.",
        "",
        "| explored in a schedule | schedules |",
        "|---|---:|",
    ]
    lines += [f"| {what} | {seen[what]:,} |" for what in EXPLORED]
    if failed:
        lines += ["", "Failed seeds (replay with `haagent sim random --seed N --log`):", ""]
        lines += [f"- {f}" for f in failed[:20]]
    return "\n".join(lines) + "\n"
