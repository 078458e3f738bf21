"""Failover in the lab: power loss of a host, and of the leader's host, to all HA VMs running
elsewhere (measured by asking every libvirtd), with the default timings and IPMI fencing."""

from __future__ import annotations

import statistics
import time

RUNS = 10


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _placement_times(lab, keys, host: str | None, repeat: int = 5) -> list[float]:
    """Time the production placer on the lab's live view, placing the VMs of the busiest host
    elsewhere as if it had failed (``host`` has just been recovered and holds none now)."""
    from haagent.manager.placer import policy_placer
    from haagent.state.codec import build_view

    if host is None:
        return []
    store = lab.etcd_store(timeout=1)
    try:
        kvs, _ = store.get_prefix(keys.root)
    finally:
        store.close()
    view = build_view({kv.key: kv for kv in kvs}, keys, 0)
    counts: dict[str, int] = {}
    for u, h in view.placements.items():
        counts[h] = counts.get(h, 0) + 1
    host = max(sorted(counts), key=lambda h: counts[h]) if counts else host
    todo = [view.specs[u] for u, h in view.placements.items() if h == host and u in view.specs]
    assert todo, "no VM to place: the timing would be of nothing"
    placer, out = policy_placer(), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        placer(todo, view, frozenset({host}))
        out.append(time.perf_counter() - t0)
    return out


def run() -> str:
    import json
    import uuid

    from haagent.lab.lab import Lab
    from haagent.state.codec import build_view
    from haagent.lab.drill import run_drill
    from haagent.model import HostState
    from haagent.store.keys import Keys

    lab = Lab("bfo")
    figures: dict[str, list[float]] = {"crash": [], "crash-leader": []}
    placing: list[float] = []  # the production placer on the lab's live inventory, one failed host's VMs
    phases: dict[str, list[float]] = {}
    failures: list[str] = []
    with lab.running(3, 6):
        keys = Keys(lab.prefix)
        for i in range(RUNS):
            for fault in ("crash", "crash-leader"):
                r = run_drill(lab, fault, timeout=60, say=lambda m: None)
                if not r.ok or r.recovery_s is None:
                    failures.append(f"{fault} run {i}: {r.verdict}")
                else:
                    figures[fault].append(r.recovery_s)
                    if fault == "crash":
                        for row in r.timeline:
                            if row["phase"] in ("detect", "confirm", "fence", "place") and row.get("t") is not None:
                                phases.setdefault(row["phase"], []).append(row["t"])
                        placing.extend(_placement_times(lab, keys, r.target))
                # power the host back on and return it, as an operator would
                lab.heal(r.target) if r.target else None
                if r.target:
                    lab.revive(r.target)
                    store = lab.etcd_store(timeout=1)
                    deadline, asked = time.monotonic() + 60, False
                    try:
                        while time.monotonic() < deadline:
                            kvs, _ = store.get_prefix(keys.root)
                            hv = build_view({kv.key: kv for kv in kvs}, keys, 0).hosts.get(r.target)
                            if hv and hv.alive and hv.state is HostState.FAILED and not asked:
                                store.put(keys.request(f"host_return-{r.target}-{uuid.uuid4().hex[:6]}"),
                                          json.dumps({"kind": "host_return", "host": r.target, "at": time.time()}))
                                asked = True
                            if hv and hv.alive and hv.state is HostState.ACTIVE:
                                break
                            time.sleep(0.2)
                    finally:
                        store.close()
    lines = [
        "## Failover in the lab",
        "",
        f"3 lab hosts (TCG), 6 HA VMs, default timings (heartbeat 1 s, lease TTL 3 s, fence_delay 1 s, "
        f"new_leader_grace 3 s), IPMI fencing through the lab BMCs. Time from the fault until every VM of "
        f"the failed host is running elsewhere, as seen by polling every libvirtd (0.1 s).",
        "",
        "| fault | runs | median | p95 | max | target |",
        "|---|---|---|---|---|---|",
    ]
    targets = {"crash": "<= 10 s", "crash-leader": "<= 15 s"}
    for fault, vals in figures.items():
        if vals:
            lines.append(f"| power loss of {'the leader' if fault == 'crash-leader' else 'a host'} | {len(vals)} | "
                         f"{statistics.median(vals):.2f} s | {_pct(vals, 95):.2f} s | {max(vals):.2f} s | {targets[fault]} |")
    if phases:
        lines += ["", "Phases of a (non-leader) host crash, seconds after the fault, median:", ""]
        lines += [f"- {p}: {statistics.median(v):.2f} s" for p, v in phases.items()]
    if placing:
        lines += ["", f"The leader's placement of a failed host's VMs on the lab's live inventory (every host's "
                      f"NUMA cells, load and CPU key from its report; the production placer on the view the "
                      f"leader decodes; the VMs of the busiest host, as if it had failed): median "
                      f"{statistics.median(placing) * 1000:.1f} ms, max {max(placing) * 1000:.1f} ms over {len(placing)} placements."]
    lines += ["", "For reference: Proxmox VE documents about 2 minutes to recover a failed node's services, and "
              "vSphere HA needs 15 s just to declare a host dead."]
    if failures:
        lines += ["", "Failed runs:", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines)
