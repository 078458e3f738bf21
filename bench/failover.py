"""Failover in the lab: a host's power loss, the leader's host's, and compound faults, to all HA VMs
running elsewhere (measured by asking every libvirtd), with IPMI fencing through the lab's BMCs.

Three parts, in one run so their ratios compare: the default timings (10 crashes of a host and 10
of the leader's host, 3 hosts); the other presets (5 crashes each); compound faults in a 5-host lab
(10 runs each, next to 10 single crashes of the same lab).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from typing import Any, Callable

RUNS = 10
PRESET_RUNS = 5
POLL = 0.1


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _raft_leader(lab: Any) -> str | None:
    """The etcd member that leads raft now (its lab host's name), or None."""
    for h in lab.etcd_members():
        try:
            c = lab.etcd_client(h, timeout=1)
            try:
                return c.status().leader.name
            finally:
                c.close()
        except Exception:  # a member that does not answer: ask the next
            continue
    return None


def _return_hosts(lab: Any, hosts: list[str], timeout: float = 90) -> None:
    """Power the hosts back on and return them, as an operator would; wait until all are active."""
    from haagent.model import HostState
    from haagent.state.codec import build_view
    from haagent.store.keys import Keys

    keys = Keys(lab.prefix)
    for h in hosts:
        lab.heal(h)
        lab.revive(h)
    store = lab.etcd_store(timeout=1)
    deadline, asked = time.monotonic() + timeout, set()
    try:
        while time.monotonic() < deadline:
            try:
                kvs, _ = store.get_prefix(keys.root)
            except Exception:
                time.sleep(0.5)
                continue
            view = build_view({kv.key: kv for kv in kvs}, keys, 0)
            for h in hosts:
                hv = view.hosts.get(h)
                if hv and hv.alive and hv.state is HostState.FAILED and h not in asked:
                    store.put(keys.request(f"host_return-{h}-{uuid.uuid4().hex[:6]}"),
                              json.dumps({"kind": "host_return", "host": h, "at": time.time()}))
                    asked.add(h)
            if all(view.hosts.get(h) and view.hosts[h].alive and view.hosts[h].state is HostState.ACTIVE
                   for h in hosts):
                return
            time.sleep(0.2)
    finally:
        store.close()
    raise RuntimeError(f"hosts {hosts} not active again within {timeout:g}s")


def _settled(lab: Any, timeout: float = 90) -> tuple[str, dict[str, list[str]]]:
    """Wait for a leader, every host active, every VM placed and running exactly once: (leader, where)."""
    from haagent.lab.drill import _cluster, _store, _where
    from haagent.model import HostState
    from haagent.store.election import read_leader
    from haagent.store.keys import Keys

    hosts, vms = lab.hosts(), sorted(lab.vms())
    uuids = {vm: lab.vm_uuid(vm) for vm in vms}
    store = _store(lab)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                view, lead = _cluster(lab, store), read_leader(store, Keys(lab.prefix))
            except Exception:
                view, lead = None, None
            if (view is not None and lead is not None
                    and all(view.hosts.get(h) and view.hosts[h].state is HostState.ACTIVE for h in hosts)
                    and all(uuids[v] in view.placements for v in vms)):
                where = _where(lab, hosts)
                if all(len(where.get(v, [])) == 1 for v in vms):
                    return lead.host, where
            time.sleep(0.2)
    finally:
        store.close()
    raise RuntimeError(f"the lab did not settle within {timeout:g}s")


def compound(lab: Any, plan: Callable[[str, dict[str, list[str]]], list[tuple[str, str]]],
             timeout: float = 60) -> dict[str, Any]:
    """Crash hosts as ``plan(leader, where)`` says: [(when, host)], ``when`` "now" or "suspect:H"
    (once the leader has H suspect or further, i.e. while H's failover runs). Returns the time from
    the first crash until every VM of the crashed hosts runs exactly once elsewhere (None if not
    within ``timeout``) and any VM seen on two hosts (a failed run)."""
    from haagent.lab.drill import _cluster, _store, _where
    from haagent.model import HostState

    leader, where = _settled(lab)
    steps = plan(leader, where)
    crashed = [h for _, h in steps]
    victims = sorted(v for v, hs in where.items() if hs[0] in crashed)
    raft = _raft_leader(lab)
    store = _store(lab)
    t0, done, twice, at = time.monotonic(), None, {}, {}
    pending = list(steps)
    try:
        while time.monotonic() - t0 < timeout:
            while pending:
                when, h = pending[0]
                if when != "now":
                    other = when.split(":", 1)[1]
                    try:
                        hv = _cluster(lab, store).hosts.get(other)
                    except Exception:
                        hv = None
                    if hv is None or hv.state in (HostState.ACTIVE,):
                        break
                lab.crash(h)
                at[h] = round(time.monotonic() - t0, 3)
                pending.pop(0)
            alive = [x for x in lab.hosts() if x not in at]
            now_where = _where(lab, alive)
            twice = {v: hs for v, hs in now_where.items() if len(hs) > 1}
            if twice:
                break
            if not pending and all(len(now_where.get(v, [])) == 1 for v in victims):
                done = time.monotonic() - t0
                break
            time.sleep(POLL)
    finally:
        store.close()
    return {"leader": leader, "raft_leader": raft, "crashed": at, "victims": len(victims),
            "recovery_s": None if done is None else round(done, 3), "twice": twice}


def _drills(lab: Any, runs: int, faults: tuple[str, ...], figures: dict[str, list[float]],
            phases: dict[str, list[float]], notes: dict[str, list[bool]], failures: list[str]) -> None:
    from haagent.lab.drill import run_drill

    for i in range(runs):
        for fault in faults:
            raft = _raft_leader(lab)
            r = run_drill(lab, fault, timeout=60, say=lambda m: None)
            if not r.ok or r.recovery_s is None:
                failures.append(f"{fault} run {i}: {r.verdict}")
            else:
                figures.setdefault(fault, []).append(r.recovery_s)
                notes.setdefault(fault, []).append(raft == r.target)
                for row in r.timeline:
                    if row["phase"] in ("detect", "confirm", "fence", "place") and row.get("t") is not None:
                        phases.setdefault(f"{fault}:{row['phase']}", []).append(row["t"])
            if r.target:
                _return_hosts(lab, [r.target])


def _placement_times(lab: Any, repeat: int = 5) -> list[float]:
    """Time the production placer on the lab's live view, placing the VMs of the busiest host
    elsewhere as if it had failed."""
    from haagent.manager.placer import policy_placer
    from haagent.state.codec import build_view
    from haagent.store.keys import Keys

    keys = Keys(lab.prefix)
    store = lab.etcd_store(timeout=1)
    try:
        kvs, _ = store.get_prefix(keys.root)
    finally:
        store.close()
    view = build_view({kv.key: kv for kv in kvs}, keys, 0)
    counts: dict[str, int] = {}
    for u, h in view.placements.items():
        counts[h] = counts.get(h, 0) + 1
    host = max(sorted(counts), key=lambda h: counts[h])
    todo = [view.specs[u] for u, h in view.placements.items() if h == host and u in view.specs]
    assert todo, "no VM to place: the timing would be of nothing"
    placer, out = policy_placer(), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        placer(todo, view, frozenset({host}))
        out.append(time.perf_counter() - t0)
    return out


def run() -> str:
    from haagent.config import TIMING_PRESETS
    from haagent.lab.lab import Lab

    failures: list[str] = []
    # 1. the default preset, 3 hosts
    figures: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    raft_on_target: dict[str, list[bool]] = {}
    placing: list[float] = []
    with Lab("bfo").running(3, 6):
        _drills(Lab("bfo"), RUNS, ("crash", "crash-leader"), figures, phases, raft_on_target, failures)
        _settled(Lab("bfo"))
        placing = _placement_times(Lab("bfo"), repeat=50)
    # 2. the other presets, 3 hosts each
    presets: dict[str, dict[str, list[float]]] = {"default": figures}
    for preset in ("fast", "conservative"):
        got: dict[str, list[float]] = {}
        with Lab("bfp").running(3, 6, agent_config={"timing": {"preset": preset}}):
            _drills(Lab("bfp"), PRESET_RUNS, ("crash", "crash-leader"), got, {}, {}, failures)
        presets[preset] = got
    # 3. compound faults, 5 hosts (etcd members h1-h3)
    comp: dict[str, list[dict[str, Any]]] = {"single": [], "leader-during-recovery": [], "two-at-once": []}
    lab5 = Lab("bfc")
    with lab5.running(5, 10):
        members = set(lab5.etcd_members())

        def busiest(where: dict[str, list[str]], among: list[str]) -> str:
            count = {h: sum(1 for hs in where.values() if hs == [h]) for h in among}
            return max(sorted(count), key=lambda h: count[h])

        plans = {
            # a host that is not the leader's, not an etcd member: the baseline
            "single": lambda lead, where: [("now", busiest(where, [h for h in lab5.hosts()
                                                                  if h != lead and h not in members]))],
            # the leader's host dies once another host's failover has begun (it is suspect)
            # (the first is not an etcd member: with the leader's host, two members would lose quorum)
            "leader-during-recovery": lambda lead, where: (
                lambda x: [("now", x), (f"suspect:{x}", lead)])(
                    busiest(where, [h for h in lab5.hosts() if h != lead and h not in members])),
            # an etcd member and a host that is not one, at the same moment (neither the leader's)
            "two-at-once": lambda lead, where: [
                ("now", busiest(where, [h for h in lab5.hosts() if h != lead and h in members])),
                ("now", busiest(where, [h for h in lab5.hosts() if h != lead and h not in members]))],
        }
        for i in range(RUNS):
            for name, plan in plans.items():
                r = compound(lab5, plan)
                comp[name].append(r)
                if r["recovery_s"] is None or r["twice"]:
                    failures.append(f"{name} run {i}: " + (f"VM on two hosts: {r['twice']}" if r["twice"]
                                                            else f"not recovered in 60 s ({r})"))
                _return_hosts(lab5, list(r["crashed"]))

    t = TIMING_PRESETS["default"]
    lines = [
        "## Failover in the lab",
        "",
        f"IPMI fencing through the lab's BMCs; TCG guests of 64 MiB. Time from the fault until every VM of the failed "
        f"host(s) runs exactly once elsewhere, as seen by polling every libvirtd (0.1 s). The lab's etcd runs with a "
        f"500 ms election timeout (docs/timings.md). Default timings: heartbeat {t['heartbeat_interval']:g} s, "
        f"lease TTL {t['lease_ttl']:g} s, fence_delay {t['fence_delay']:g} s, new_leader_grace "
        f"{t['new_leader_grace']:g} s.",
        "",
        f"### Default timings (3 hosts, 6 VMs, {RUNS} runs each)",
        "",
        "| fault | runs | median | p95 | max | target (median / p95) | runs where the host also led etcd |",
        "|---|---|---|---|---|---|---|",
    ]
    targets = {"crash": ("<= 3 s / <= 4 s", 3.0, 4.0), "crash-leader": ("<= 4 s / <= 5 s", 4.0, 5.0)}
    for fault, vals in figures.items():
        lines.append(f"| power loss of {'the leader' + chr(39) + 's host' if fault == 'crash-leader' else 'a host'} | {len(vals)} | "
                     f"{statistics.median(vals):.2f} s | {_pct(vals, 95):.2f} s | {max(vals):.2f} s | "
                     f"{targets[fault][0]}: {'met' if statistics.median(vals) <= targets[fault][1] and _pct(vals, 95) <= targets[fault][2] else '**missed**'} | "
                     f"{sum(raft_on_target.get(fault, []))} |")
    for fault in ("crash", "crash-leader"):
        ph = {p.split(":")[1]: v for p, v in phases.items() if p.startswith(fault + ":")}
        if ph:
            lines += ["", f"Phases of a {'leader host' if fault == 'crash-leader' else 'host'} crash, seconds after "
                          f"the fault, median (max): "
                      + ", ".join(f"{p} {statistics.median(v):.2f} ({max(v):.2f})" for p, v in ph.items())
                      + ". `detect` is when the leader saw the lease gone; with etcd's leader on the crashed host "
                        "etcd first elects a new leader, which extends every lease by its election timeout."]
        split = [(r, v) for r, v in zip(raft_on_target.get(fault, []), figures.get(fault, []))]
        if split and any(r for r, _ in split) and not all(r for r, _ in split):
            lines.append(f"Median when the crashed host led etcd: {statistics.median([v for r, v in split if r]):.2f} s; "
                         f"when it did not: {statistics.median([v for r, v in split if not r]):.2f} s.")
    if placing:
        lines += ["", f"The leader's placement of a failed host's VMs on the lab's live inventory (every host's NUMA "
                      f"cells, load and CPU key from its report; the production placer on the view the leader decodes; "
                      f"the VMs of the busiest host, as if it had failed): median {statistics.median(placing) * 1000:.1f} ms, "
                      f"max {max(placing) * 1000:.1f} ms over {len(placing)} placements."]
    lines += ["", f"### Timing presets ({PRESET_RUNS} runs each; default from above)", "",
              "| preset | heartbeat / TTL / fence_delay / grace | a host: median (max) | the leader's host: median (max) |",
              "|---|---|---|---|"]
    for preset in ("fast", "default", "conservative"):
        p, got = TIMING_PRESETS[preset], presets.get(preset, {})
        cells = [f"{statistics.median(got[f]):.2f} s ({max(got[f]):.2f} s)" if got.get(f) else "-"
                 for f in ("crash", "crash-leader")]
        lines.append(f"| `{preset}` | {p['heartbeat_interval']:g} / {p['lease_ttl']:g} / {p['fence_delay']:g} / "
                     f"{p['new_leader_grace']:g} s | {cells[0]} | {cells[1]} |")
    single = [r["recovery_s"] for r in comp["single"] if r["recovery_s"] is not None]
    base = statistics.median(single) if single else None
    headline = statistics.median(figures["crash"]) if figures.get("crash") else None
    lines += ["", f"### Compound faults (5 hosts, 10 VMs, etcd members h1-h3, {RUNS} runs each)", "",
              "| fault | runs recovered | median | p95 | max | max / single-crash median of the first table (target <= 2) "
              "| max / this lab's baseline median |",
              "|---|---|---|---|---|---|---|"]
    names = {"single": "one host (not the leader's, not an etcd member): the baseline",
             "leader-during-recovery": "the leader's host, once another host is suspect",
             "two-at-once": "two hosts at once, one an etcd member"}
    for name, runs in comp.items():
        vals = [r["recovery_s"] for r in runs if r["recovery_s"] is not None]
        if not vals:
            lines.append(f"| {names[name]} | 0 of {len(runs)} | | | | |")
            continue
        ratio = max(vals) / base if base else float("nan")
        head = max(vals) / headline if headline else float("nan")
        lines.append(f"| {names[name]} | {len(vals)} of {len(runs)} | {statistics.median(vals):.2f} s | "
                     f"{_pct(vals, 95):.2f} s | {max(vals):.2f} s | "
                     f"{head:.2f}{'' if name == 'single' else (': met' if head <= 2 else ': **missed**')} | {ratio:.2f} |")
    lines += ["", "The first table's single-crash median is the headline figure (a host of a 3-host lab where every "
                  "host runs an etcd member, so it often led etcd); this lab's baseline is the most favourable single "
                  "crash (a host that runs no etcd member), shown so the cost of the second fault can be read too."]
    lead_gap = [r["crashed"].get(r["leader"], 0) for r in comp["leader-during-recovery"] if r["leader"] in r["crashed"]]
    if lead_gap:
        lines.append(f"\nThe leader's host died {statistics.median(lead_gap):.2f} s (median) after the first host, "
                     f"once the leader had it suspect. In the two-at-once runs the crashed etcd member also led "
                     f"etcd in {sum(1 for r in comp['two-at-once'] if r['raft_leader'] in r['crashed'])} of "
                     f"{len(comp['two-at-once'])}.")
    lines += ["", "For reference: Proxmox VE documents about 2 minutes to recover a failed node's services, and "
              "vSphere HA needs 15 s just to declare a host dead."]
    if failures:
        lines += ["", "Failed runs:", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines)
