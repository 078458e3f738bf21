"""Scheduled rebalancing in a real 3-host lab with Linux guests: burners on one host's guests,
``[rebalance] mode = "auto"``; the leader's rounds bring the CPU spread down within 3 rounds by
live migration, no VM moves twice, and the rounds after that are quiet. Rounds are read from
the leader's own log (``rebalance_round``), moves from the journal, load from the hosts' reports."""

from __future__ import annotations

import json
import math
import time

import pytest

from haagent.lab.lab import Lab
from haagent.state.view import ClusterView
from haagent.store.keys import Keys
from lab_helpers import view

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(600)]

INTERVAL = 45  # the least the lab's agents allow: 3 x their load_smoothing (15 s)


def cpu_spread(v: ClusterView) -> float:
    """Population standard deviation of the hosts' smoothed CPU use over their cpus (0 while no
    host has reported a load yet: an agent's first reports carry none, it needs two samples)."""
    use = [hv.cpu_used / max(hv.cpus, 1) for hv in v.hosts.values() if hv.cpu_used is not None]
    if not use:
        return 0.0
    mean = sum(use) / len(use)
    return math.sqrt(sum((u - mean) ** 2 for u in use) / len(use))


def rounds(lab: Lab, leader: str) -> list[dict]:
    path = lab.layout.logs_dir(leader) / "agent.log"
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
        if '"rebalance_round"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait(what: str, cond, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_auto_rounds_spread_the_burners_then_stay_quiet(make_lab) -> None:
    lab = make_lab("lrb", 3, 4, guest="linux",  # vm1 and vm4 on h1, vm2 on h2, vm3 on h3
                   agent_config={"rebalance": {"mode": "auto", "interval": INTERVAL, "threshold": 0.05,
                                               "min_gain": 0.01, "vm_cooldown": 3600, "max_moves_per_round": 2}})
    for vm in ("vm1", "vm4"):
        lab.guest(vm).wait_ready(timeout=120)
    v = wait("the leader to record every VM", lambda: (lambda v: len(v.placements) == 4 and v)(view(lab)), 60)
    by_name = {s.name: u for u, s in v.specs.items()}
    assert v.placements[by_name["vm1"]] == v.placements[by_name["vm4"]] == "h1"
    store = lab.etcd_store(timeout=1)
    try:
        leader = json.loads(store.get(Keys(lab.prefix).leader).value)["host"]
    finally:
        store.close()
    for vm in ("vm1", "vm4"):
        lab.load(vm, cpu=1, mem=0)
    wait("h1's burners to show in its report", lambda: cpu_spread(view(lab)) > 0.1, 90)
    before = len(rounds(lab, leader))
    peak = [0.0]

    def moved_off_h1() -> bool:
        v = view(lab)
        peak[0] = max(peak[0], cpu_spread(v))
        return any(s.step == "migrated" for o in v.ops.values() if o.kind == "rebalance" for s in o.steps)

    # Within 3 rounds from here: one proposes, the next confirms and migrates, one more settles.
    wait("a rebalance to move a burner off h1", moved_off_h1, 3 * INTERVAL + 30)
    # Two burners on one host of three, then on two: the spread halves (0.6: the smoothing's tail).
    done = wait("the spread to come down", lambda: (lambda v: cpu_spread(v) < 0.6 * peak[0] and v)(view(lab)),
                2 * INTERVAL)
    assert len(rounds(lab, leader)) - before <= 3, rounds(lab, leader)[before:]
    moved = [s.detail["vm"] for o in done.ops.values() if o.kind == "rebalance" for s in o.steps
             if s.step == "migrated"]
    assert sorted(set(moved)) == sorted(moved), f"a VM moved twice: {moved}"
    assert {by_name["vm1"], by_name["vm4"]} & set(moved), moved
    # Then quiet: the two rounds after the one that moved (the first of them passes while the
    # spread comes down) move nothing.
    results = [r["result"] for r in rounds(lab, leader)]
    last = len(results) - 1 - results[::-1].index("planned")
    wait("two more rounds", lambda: len(rounds(lab, leader)) >= last + 3, 2 * INTERVAL + 30)
    assert [r["result"] for r in rounds(lab, leader)[last + 1:last + 3]] == ["quiet", "quiet"]
    final = view(lab)
    assert [s.detail["vm"] for o in final.ops.values() if o.kind == "rebalance" for s in o.steps
            if s.step == "migrated"] == moved
    where = {lab_vm: [h for h in lab.hosts() if lab_vm in (lab.running_vms(h) or [])] for lab_vm in lab.vms()}
    assert all(len(hs) == 1 for hs in where.values()), where
