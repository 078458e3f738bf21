"""The safety invariants (DESIGN §4), checked on the simulated world after every tick.

Safety, after every tick and at every committed leader write:
1. never two running copies of a VM (counted on powered hosts, whatever etcd believes), and no
   start of a VM on a host its placement does not name (the second copy in the making);
2. placement moves off a host only when that VM does not run there, and off a host without a
   lease only once the host is confirmed fenced (fenced, recovering or failed);
3. no VM definition is lost: every spec and placement key the cluster started with still exists;
4. a VM whose XML binds its memory strictly to NUMA cells is started on a new host (a failover
   or relocation: a placement decision) only where those cells have the free memory (or
   hugepages) to hold it. A restart in place after a crash is the agent's, not a placement;
5. no ping-pong: a rebalance starts no migration of a VM a rebalance moved less than
   ``[rebalance] vm_cooldown`` ago, nor one back to a host a rebalance took it from (while that
   move's operation is kept).

Liveness, at quiescence (``check_recovered``): every HA VM runs exactly once, on the host its
placement names, unless the leader reports it unplaceable (too little capacity), or its host's
agent was stopped cleanly and is not back (shutdown_policy freeze: by design nothing recovers it);
and no migration order (live or cold) is left stored while both of its hosts hold a lease.
"""

from __future__ import annotations

import json
from typing import Iterable

from haagent.manager.core import CONFIRMED_FENCED
from haagent.state.view import ClusterView, SetPlacement, StartMigration
from haagent.sim.world import InvariantViolation, Simulation


class Invariants:
    """Install on a simulation with ``attach``; violations are logged and raised."""

    def __init__(self, sim: Simulation):
        self.sim = sim
        self.vms = sorted(sim.specs)
        self.last_host = {u: w[0] for u in self.vms if len(w := sim.where(u)) == 1}  # where it last started
        self.rebalanced: dict[str, list[tuple[float, str, str]]] = {}  # vm -> (when, from, op) of its rebalance moves

    def attach(self) -> "Invariants":
        self.sim.checkers.append(lambda s: self.after_tick())
        self.sim.on_commit.append(lambda s, view, actions: self.at_commit(view, actions))
        self.sim.start_checkers.append(lambda s, host, vm: self.at_start(host, vm))
        return self

    def at_start(self, host: str, vm: str) -> None:
        """A start while another powered host runs the VM is a double start, even for one tick; a
        start anywhere but where its placement names is one in the making (e.g. a cold move's
        old target starting it late, after it was placed elsewhere)."""
        others = [h for h in self.sim.where(vm) if h != host]
        if others:
            self.fail(f"vm={vm} started on {host} while it runs on {', '.join(others)}")
        if vm in self.sim.specs and self.sim.keys.vm_placement(vm) not in self.sim.corrupted:
            placed = self.sim.stored_placement(vm)
            if placed != host:
                self.fail(f"vm={vm} started on {host}, but its placement names {placed}")
        spec = self.sim.specs.get(vm)
        moved = self.last_host.get(vm) != host
        self.last_host[vm] = host
        if moved and spec is not None and spec.needs.numa == "strict" and spec.needs.nodeset:
            self._check_numa_fit(host, spec)

    def _check_numa_fit(self, host: str, spec) -> None:
        """The host can hold the VM: memory bound to each of its cells (by the VMs running there
        and this one) within the cell, and all memory within the host (unbound memory can live
        anywhere). Order-free: it does not matter which of two VMs placed together starts first."""
        hv = self.sim.hosts[host].hv
        assert hv is not None
        n = spec.needs
        cells = {c.id: c for c in hv.host_info().numa}
        if not set(n.nodeset) <= set(cells):
            self.fail(f"vm={spec.uuid} (strict on NUMA cells {_ids(n.nodeset)}) started on {host}, "
                      f"which has no cell {_ids(set(n.nodeset) - set(cells))}")
        bound = {cid: 0.0 for cid in cells}
        total = float(spec.memory_mib)
        for info in hv.list_vms():
            if not info.active or info.uuid == spec.uuid:
                continue
            total += info.memory_mib
            nodes = [c for c in info.numa.nodeset if c in bound]
            for c in nodes:
                bound[c] += info.memory_mib / len(nodes)
        for c in n.nodeset:
            bound[c] += spec.memory_mib / len(n.nodeset)
        over = [c for c in n.nodeset if bound[c] > cells[c].memory_mib + 1e-6]
        if over or total > sum(c.memory_mib for c in cells.values()) + 1e-6:
            self.fail(f"vm={spec.uuid} (strict on NUMA cells {_ids(n.nodeset)}) started on {host}, "
                      f"which cannot hold it (bound to cell {_ids(over or n.nodeset)}: "
                      f"{', '.join(f'{bound[c]:.0f}/{cells[c].memory_mib}' for c in n.nodeset)} MiB)")

    def fail(self, message: str) -> None:
        self.sim.say("INVARIANT", message)
        self.sim.violations.append(f"t={self.sim.now:g}: {message}")
        raise InvariantViolation(f"t={self.sim.now:g}: {message}")

    def after_tick(self) -> None:
        sim = self.sim
        seen: dict[str, str] = {}
        for name, h in sim.hosts.items():
            if not h.powered:
                continue
            for uuid in h.running:
                if uuid in seen:
                    where = sim.where(uuid)
                    self.fail(f"vm={uuid} runs on {len(where)} hosts at once: {', '.join(where)}")
                seen[uuid] = name
        kvs = sim.store.kvs
        for uuid in self.vms:
            if sim.keys.vm_spec(uuid) not in kvs:
                self.fail(f"vm={uuid} definition lost: {sim.keys.vm_spec(uuid)} is gone")
            if sim.keys.vm_placement(uuid) not in kvs:
                self.fail(f"vm={uuid} placement lost: {sim.keys.vm_placement(uuid)} is gone")

    def at_commit(self, view: ClusterView, actions: Iterable[object]) -> None:
        """Just after a leader's transaction committed: check every placement it moved."""
        sim = self.sim
        cooldown = sim.mcfg.rebalance.vm_cooldown
        for a in actions:
            if isinstance(a, StartMigration):  # when each order (or a cold move's second half) was written
                sim.orders[a.vm] = (a.mode, sim.now, a.deadline)
            op = view.ops.get(getattr(a, "op", "") or "")
            if isinstance(a, StartMigration) and op is not None and op.kind == "rebalance":
                for at, src, op_id in self.rebalanced.get(a.vm, ()):
                    if sim.now - at < cooldown:
                        self.fail(f"vm={a.vm} rebalanced again at {sim.now:g}s, {sim.now - at:g}s after its last "
                                  f"rebalance move (vm_cooldown {cooldown:g}s)")
                    if src == a.dest and op_id in view.ops and cooldown > 0:
                        self.fail(f"vm={a.vm} rebalanced back to {a.dest}, which a rebalance took it from ({op_id})")
            if not isinstance(a, SetPlacement):
                continue
            old = view.placements.get(a.vm)
            if op is not None and op.kind == "rebalance" and old is not None and old != a.host:
                self.rebalanced.setdefault(a.vm, []).append((sim.now, old, op.id))
            if old is None or old == a.host:
                continue
            src = sim.hosts.get(old)
            if src is not None and src.powered and a.vm in src.running:
                self.fail(f"vm={a.vm} placement moved {old} -> {a.host} while it still runs on {old}")
            hv = view.hosts.get(old)
            if hv is not None and not hv.alive and sim.stored_state(old) not in CONFIRMED_FENCED:
                self.fail(f"vm={a.vm} placement moved off {old}, which has no lease and is "
                          f"{sim.stored_state(old)}, not confirmed fenced")


def check_recovered(sim: Simulation) -> list[str]:
    """Liveness at quiescence: a list of problems (empty when every HA VM that can run, runs)."""
    problems = []
    lead = sim.leader()
    alerts = lead[1].alerts if lead else frozenset()
    unplaceable = {a.vm for a in alerts if a.name == "vm_unplaceable"}
    if lead is None:
        return ["no leader at quiescence"]
    for uuid in sorted(sim.specs):
        spec = sim.specs[uuid]
        if spec.policy == "none":
            continue
        if uuid in sim.user_stopped:
            continue
        where = sim.where(uuid)
        placed = sim.stored_placement(uuid)
        if where == [placed]:
            continue
        if uuid in unplaceable:
            continue
        if placed and sim.keys.host_stopped(placed) in sim.store.kvs and sim.keys.host_alive(placed) not in sim.store.kvs:
            continue  # frozen: its agent was stopped cleanly (shutdown_policy freeze) and is not back

        state = sim.stored_state(placed) if placed else None
        problems.append(f"vm={uuid} runs on [{', '.join(where)}], placed on {placed} "
                        f"(host state {state.value if state else None})")
    # A move left half done: a migration order still stored long after it was written (a cold
    # move's VM shut down and never started again, whatever its HA policy, would sit here), where
    # both its hosts are back. Long: past its deadline (live), its shutdown (cold), at once (start).
    for key, kv in sorted(sim.store.kvs.items()):
        if key.startswith(sim.keys.vms) and key.endswith("/migration"):
            uuid = key[len(sim.keys.vms):-len("/migration")]
            try:
                order = json.loads(kv.value)
                sides = (order["from"], order["to"])
            except (ValueError, KeyError, TypeError):
                continue  # a corrupted record: bad_record's
            mode, since, deadline = sim.orders.get(uuid, ("live", 0.0, 0.0))
            allowed = {"live": deadline, "cold": sim.cfg.cold_shutdown_s, "cold-start": deadline}.get(mode, 0.0) + 10.0
            if sim.now - since > allowed and all(sim.keys.host_alive(h) in sim.store.kvs for h in sides):
                problems.append(f"vm={uuid} migration {order.get('mode', 'live')} {sides[0]} -> {sides[1]} "
                                "still stored at quiescence with both hosts alive")
    return problems


def _ids(ids) -> str:
    return ",".join(str(i) for i in sorted(ids))
