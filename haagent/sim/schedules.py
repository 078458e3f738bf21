"""Seeded random fault schedules: small clusters, a burst of faults, a heal, then quiescence.

``generate(seed)`` returns a cluster description and a cmdlist in the scenario language, so a
failing seed replays exactly (``haagent sim random --seed N``) and can be saved as a scenario
(``--save DIR``). ``run_seed(seed)`` runs one: the safety invariants are checked after every
tick; after the heal, the run must reach quiescence (every HA VM that fits runs exactly once) by
``horizon``, and stops as soon as it does.

Clusters mix hosts with one and two NUMA cells, and VMs bound strictly to cells (restarted only
where their cells hold them: an invariant checks every start); guests get busy at random, so the
leader places by the load the agents report. The faults cover every input the leader trusts:
power, network and agent faults (crashes, clean
stops, restarts); fence devices that fail, hang, never cut power, answer status reads with no
data, or lie while the host keeps renewing its lease; storms (half the hosts or more lost at once,
by power or network) whose devices answer the leader's storm power reads honestly, with a lie
(off), with silence or with garbage (fences stay honest: a read is evidence for the storm count,
never a fence); etcd quorum loss; garbage written into host,
VM and request records; a leader cut off while its fence runs; VM crash loops; and operator acks
at any moment of hosts that are off then, some of which are powered on again later (the CLI
refuses an ack for a host that is not being failed over; the leader binds the rest to their
failover). The heal puts back what an operator would: network, quorum, devices, agents, repaired
records, acks for hosts still off, and a ``return`` for hosts whose device lied or that were
powered on again. Maintenance is mixed in: drains (with and without ``--cold-ok``), undrains
returning the VMs, ``vm migrate`` requests, ``--all`` drains and a VM without the HA mark, under
the same invariants; VMs whose disk is outside the shared storage (refused by a drain unless
``--cold-ok``), and hosts whose libvirtd fails every start for a while (a cold move's target that
never starts the VM, so its start is given up and the VM placed elsewhere).

What the generator never does, on purpose: a device that lies while its host has lost its lease
for longer than a fence takes (cut off, or its agent dead): with the lease gone no software can
tell that from a dead host (DESIGN §4 trusts a confirmed power-off); lies are generated only while
the lease renews, or across a flap short enough that the host is back before a lie is acted upon.
Nor an operator ack of a host that is running: the ack is the operator's word that it is off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from haagent.model import HostState
from haagent.sim.invariants import check_recovered
from haagent.sim.scenario import Command, Outcome, parse_cmdlist, run
from haagent.sim.world import READ_FAULTS

HEAL_AT = 20.0
HORIZON = 90.0
STABLE = frozenset({HostState.ACTIVE, HostState.FAILED, HostState.MAINTENANCE})


@dataclass(frozen=True)
class Schedule:
    seed: int
    cluster: dict[str, Any]
    cmdlist: str

    def commands(self) -> tuple[list[Command], float]:
        return parse_cmdlist(self.cmdlist, f"seed {self.seed}")


def generate(seed: int) -> Schedule:
    """A random cluster and fault schedule; the same seed always gives the same one."""
    rng = random.Random(seed)
    n_hosts = rng.randint(3, 5)
    hosts = [f"h{i}" for i in range(1, n_hosts + 1)]
    watchdog = rng.random() < 0.2
    cluster: dict[str, Any] = {
        "hosts": {},
        "vms": [],
        "manager": {"storm_window": 10.0, "fence_retry_interval": 3.0},
        "agent": {"watchdog": watchdog, "max_restart": 2},
        "sim": {"tick": 1.0},
    }
    # Half the schedules run the shipped default timings (lease TTL 2 s, no fence_delay, no new-
    # leader grace), half the conservative ones the corpus is written in (3 s, 1 s, 3 s); their own
    # RNG, so the faults of a seed stay as they were.
    short = random.Random(seed * 104729 + 3).random() < 0.5
    if short:
        cluster["manager"].update(lease_ttl=2.0, fence_delay=0.0, new_leader_grace=0.0)
    for h in hosts:
        kind = rng.random()
        if watchdog and kind < 0.5:
            levels: list[list[str]] = []
        elif kind < 0.3:
            levels = [["ipmi"], ["pdu-a", "pdu-b"]]
        else:
            levels = [["ipmi"]]
        memory = rng.choice((4096, 8192))
        cluster["hosts"][h] = {"cpus": 8, "memory_mib": memory, "fencing": levels}
        if rng.random() < 0.5:  # two NUMA cells, even or not
            first = rng.choice((memory // 4, memory // 2))
            cluster["hosts"][h]["numa"] = [{"cpus": 4, "memory_mib": first}, {"cpus": 4, "memory_mib": memory - first}]
    used = {h: 0 for h in hosts}
    cell0 = {h: 0.0 for h in hosts}  # memory cell 0 holds: bound there, or its share of the rest
    for i in range(1, rng.randint(2, 8) + 1):
        mem = rng.choice((1024, 2048, 3072))
        host = rng.choice(hosts)
        cells = cluster["hosts"][host].get("numa")
        size0 = cells[0]["memory_mib"] if cells else cluster["hosts"][host]["memory_mib"]
        vm: dict[str, Any] = {"name": f"vm{i}", "host": host, "memory_mib": mem,
                              "priority": rng.choice((0, 10, 50, 100)),
                              "policy": "none" if rng.random() < 0.1 else "restart"}
        share = mem / (len(cells) if cells else 1)  # what an unbound VM takes from each cell
        if rng.random() < 0.3:  # bound strictly to NUMA cells: restarted only where they fit
            vm["numa"] = "strict"
            if rng.random() < 0.5:
                vm["nodeset"] = [0]
                share = mem
        # The starting cluster is one a real host could run: no cell holds more than it has.
        if used[host] + mem > cluster["hosts"][host]["memory_mib"] or cell0[host] + share > size0:
            continue
        used[host] += mem
        cell0[host] += share
        cluster["vms"].append(vm)
    vms = [v["name"] for v in cluster["vms"]]

    lines: list[str] = []
    off_at: dict[str, float] = {}  # hosts powered off by the schedule, and when
    back_on: set[str] = set()  # ... and powered on again before the heal
    on_at: dict[str, float] = {}  # ... and when (an ack must come while the host is still off)
    liars: set[str] = set()
    lossy: set[str] = set()  # hosts with a fault that can take their lease away
    stormed: set[str] = set()  # hosts lost in a storm (a lying read lets their fences through)
    for _ in range(rng.randint(1, 4)):
        t = float(rng.randint(2, 15))
        h = rng.choice(hosts)
        kind = rng.choice(("power", "power", "network", "network", "agent", "bmc", "quorum", "vm", "vm",
                           "flap", "pdu", "stop", "corrupt", "corrupt", "depose", "lie", "ackflap", "ackflap",
                           "load", "libvirtd", "read", "storm", "storm"))
        if kind in ("power", "network", "flap", "agent", "stop", "depose", "ackflap") and h in liars:
            continue  # a liar's lease may only lapse through the short flap below
        if kind in ("power", "network", "flap", "agent", "stop", "depose", "ackflap") and stormed and \
                h == hosts[0]:
            continue  # after a storm (whose lying reads may let fences through) someone must lead
        if kind == "power":
            lines.append(f"at {t:g} power {h} off")
            off_at.setdefault(h, t)
            lossy.add(h)
            if rng.random() < 0.3:
                on = t + rng.randint(1, 8)
                lines.append(f"at {on:g} power {h} on")
                back_on.add(h)
                on_at.setdefault(h, on)
        elif kind == "network":
            lines.append(f"at {t:g} network {h} off")
            lossy.add(h)
        elif kind == "flap":
            lines.append(f"at {t:g} network {h} off")
            lines.append(f"at {t + rng.randint(1, 4):g} network {h} on")
            lossy.add(h)
        elif kind == "agent":
            lines.append(f"at {t:g} agent {h} crash")
            lossy.add(h)
            if rng.random() < 0.5:
                lines.append(f"at {t + rng.randint(1, 6):g} agent {h} start")
        elif kind == "stop":  # a clean stop (SIGTERM), sometimes a restart
            lines.append(f"at {t:g} agent {h} stop")
            lossy.add(h)
            if rng.random() < 0.6:
                lines.append(f"at {t + rng.randint(1, 8):g} agent {h} start")
        elif kind == "bmc" and cluster["hosts"][h]["fencing"]:
            lines.append(f"at {t:g} bmc {h} {rng.choice(('fail', 'hang', 'never-off', 'empty'))}")
        elif kind == "pdu" and cluster["hosts"][h]["fencing"][1:]:
            lines.append(f"at {t:g} pdu {h} {rng.choice(('fail', 'hang', 'empty'))}")
        elif kind == "lie" and cluster["hosts"][h]["fencing"] and h not in lossy and h not in liars:
            # (once per host: two short flaps a fence retry apart would let a lie through while the
            # host is cut off, which is the case the generator never makes, see above)
            # The device says off while the host keeps its lease; sometimes the host flaps, back
            # before its lease runs out (within 3 s: lease TTL 3 s, fence_delay 1 s, a fence 1 s,
            # ticks of 1 s; within 1 s with the short timings): by the time a lie comes back the
            # leader sees the host alive again and never believes it.
            liars.add(h)
            lines.append(f"at {t:g} bmc {h} lies")
            if rng.random() < 0.5:
                off = min(t + rng.randint(0, 6), HEAL_AT - 4)
                flap = rng.randint(1, 3)
                lines.append(f"at {off:g} network {h} off")
                lines.append(f"at {off + (1 if short else flap):g} network {h} on")
        elif kind == "ackflap" and cluster["hosts"][h]["fencing"] and h != hosts[0] and h not in lossy:
            # Off with a slow device; an operator acks it while it is off; it is powered on again
            # before the fence gives up, so the failover is called off and the ack must die with
            # it. Later it is cut off with a dead device: that ack must not vouch for it.
            t = float(rng.randint(2, 4))
            lossy.add(h)
            lines += [f"at {t:g} bmc {h} hang", f"at {t:g} power {h} off",
                      f"at {t + rng.randint(4, 5):g} ack {h}", f"at {t + rng.randint(6, 7):g} power {h} on",
                      f"at {t + 12:g} bmc {h} fail", f"at {t + 13:g} network {h} off"]
        elif kind == "read":  # how h's devices answer the leader's storm power reads, from now on
            lines.append(f"at {t:g} read {h} {rng.choice(READ_FAULTS)}")
        elif kind == "storm" and hosts[0] not in lossy:
            # Half the hosts or more lost together, each by power or network, with a read fault;
            # never the first host, so that someone is left to lead.
            group = [x for x in rng.sample(hosts[1:], max(2, (n_hosts + 1) // 2)) if x not in liars]
            stormed.update(group)
            how = rng.choice(("power", "network", "mixed"))
            for x in group:
                lines.append(f"at {t - 1:g} read {x} {rng.choice(READ_FAULTS)}")
                cut = rng.choice(("power", "network")) if how == "mixed" else how
                lines.append(f"at {t:g} {cut} {x} off")
                lossy.add(x)
                if cut == "power":
                    off_at.setdefault(x, t)
        elif kind == "quorum":
            lines.append(f"at {t:g} quorum lost")
            lines.append(f"at {t + rng.randint(1, 6):g} quorum back")
        elif kind == "libvirtd":  # its libvirtd stops answering: VMs run on, the inventory goes stale
            lines.append(f"at {t:g} libvirtd {h} down")
            if rng.random() < 0.5:
                lines.append(f"at {t + rng.randint(1, 8):g} libvirtd {h} up")
        elif kind == "load" and vms:  # guests get busy: the leader's placement reads the load
            for vm in rng.sample(vms, rng.randint(1, len(vms))):
                lines.append(f"at {t:g} load {vm} {rng.choice((0, 50, 100, 300, 700))}")
        elif kind == "vm" and vms:
            vm = rng.choice(vms)
            for k in range(rng.randint(1, 4)):  # sometimes often enough to be relocated
                lines.append(f"at {t + 2 * k:g} vm {vm} crash")
        elif kind == "corrupt":
            what = rng.choice(("host", "host", "vm", "request"))
            if what == "host":
                lines.append(f"at {t:g} corrupt {h} {rng.choice(('state', 'report', 'lease', 'stopped'))}")
            elif what == "vm" and vms:
                lines.append(f"at {t:g} corrupt {rng.choice(vms)} {rng.choice(('spec', 'placement', 'migration'))}")
            else:
                lines.append(f"at {t:g} corrupt request")
        elif kind == "depose" and h != hosts[0] and hosts[0] not in liars:  # (it cuts hosts[0] off)
            # h dies; the first host (the usual leader) is cut off while its fence runs (a slow
            # one, sometimes: it ends after that leader has lost its lease, so it must be dropped).
            if cluster["hosts"][h]["fencing"] and rng.random() < 0.5:
                lines.append(f"at {t:g} bmc {h} hang")
            lines.append(f"at {t:g} power {h} off")
            off_at.setdefault(h, t)
            lossy.update({h, hosts[0]})
            cut = t + rng.choice((3, 4, 5))
            lines.append(f"at {cut:g} network {hosts[0]} off")
            lines.append(f"at {cut + rng.randint(2, 8):g} network {hosts[0]} on")
    # Operators acknowledge hosts that are off at that moment, at any time (the CLI refuses the
    # ones not being failed over); some of those hosts are powered on again later.
    for h, t in sorted(off_at.items()):
        if rng.random() < 0.4:
            ack = t + rng.randint(0, 12)
            if ack >= on_at.get(h, float("inf")):
                continue  # it runs again by then: acknowledging it off would be a false statement
            lines.append(f"at {ack:g} ack {h}")
            if h not in back_on and rng.random() < 0.3:
                lines.append(f"at {ack + rng.randint(1, 6):g} power {h} on")
                back_on.add(h)
    # Maintenance mixed in (its own RNG, so the fault schedules of a seed stay as they were): a
    # drain of one host, often with --cold-ok (HA-policy-none VMs are then shut down and started
    # on their target), sometimes an undrain (returning the VMs) during the faults; migrate
    # requests, to a host or the leader's choice; some VMs with their own migration tuning.
    mrng = random.Random(seed * 7919 + 1)
    if mrng.random() < 0.5:
        h, t = mrng.choice(hosts), float(mrng.randint(1, 14))
        flags = (" cold-ok" if mrng.random() < 0.5 else "") + (" all" if mrng.random() < 0.3 else "") + \
            (" max-parallel=1" if mrng.random() < 0.3 else "")
        lines.append(f"at {t:g} drain {h}{flags}")
        if mrng.random() < 0.4:
            lines.append(f"at {t + mrng.randint(2, 12):g} undrain {h}{' return-vms' if mrng.random() < 0.5 else ''}")
    for _ in range(mrng.choice((0, 0, 1, 1, 2))):
        if vms:
            to = f" {mrng.choice(hosts)}" if mrng.random() < 0.4 else ""
            lines.append(f"at {float(mrng.randint(1, 15)):g} migrate {mrng.choice(vms)}{to}")
    for vm in cluster["vms"]:
        if mrng.random() < 0.2:
            vm["migration"] = {"bandwidth_cap": mrng.choice((0, 200, 500)), "postcopy": mrng.random() < 0.5}
    if mrng.random() < 0.3:  # a VM without the HA mark (drain --all moves it; nothing else does)
        host = mrng.choice(hosts)
        cells = cluster["hosts"][host].get("numa")
        size0 = cells[0]["memory_mib"] if cells else cluster["hosts"][host]["memory_mib"]
        share = 1024 / (len(cells) if cells else 1)
        if used[host] + 1024 <= cluster["hosts"][host]["memory_mib"] and cell0[host] + share <= size0:
            cluster["vms"].append({"name": "other1", "host": host, "memory_mib": 1024, "managed": False})
    # Disks and starts (their own RNG, so the schedules above stay as they were): some VMs keep
    # their disk outside the shared storage (a drain refuses them by name unless --cold-ok, which
    # moves them cold; vm migrate refuses them); some hosts' libvirtd fails every domain start for
    # a while, so a cold move's target may never start its VM: it gives the start up at
    # cold_start_timeout and the leader places the VM on another host, or back on its source.
    drng = random.Random(seed * 104729 + 3)
    starts_ok: dict[str, float] = {}  # hosts whose starts fail -> when they work again
    cluster["manager"]["migration"] = {"cold_start_timeout": 10}
    for vm in cluster["vms"]:
        if drng.random() < 0.25:
            vm["disk"] = drng.choice(("local", "local", "shared"))
    if drng.random() < 0.4:  # mostly hosts a drain's VMs would go to: sometimes all of them
        drained = next((w[3] for w in (ln.split() for ln in lines) if w[2] == "drain"), None)
        others = [h for h in hosts if h != drained]
        n = len(others) if drng.random() < 0.3 else drng.randint(1, max(1, len(others) - 1))
        for h in drng.sample(others, n):
            lines.append(f"at {float(drng.randint(0, 6)):g} starts {h} fail")
            starts_ok[h] = HEAL_AT + drng.choice((0, 10, 20))  # (some stay broken past the heal)
    # The heal: the network, quorum, devices and agents come back; records are repaired; hosts
    # still off are acknowledged (a storm hold waits for that); liars' hosts are returned.
    heal = [f"at {HEAL_AT:g} quorum back", f"at {HEAL_AT:g} repair"]
    for h in hosts:
        heal.append(f"at {HEAL_AT:g} libvirtd {h} up")
        heal.append(f"at {starts_ok.get(h, HEAL_AT):g} starts {h} ok")
        heal.append(f"at {HEAL_AT:g} network {h} on")
        heal.append(f"at {HEAL_AT:g} agent {h} start")
        for level in cluster["hosts"][h]["fencing"]:
            for d in level:
                heal.append(f"at {HEAL_AT:g} device {h} {d} ok")
        heal.append(f"at {HEAL_AT:g} read {h} ok")
    power: dict[str, str] = {}  # each host's last power command before the heal decides
    for ln in sorted(lines, key=lambda ln: float(ln.split()[1])):
        w = ln.split()
        if w[2] == "power" and float(w[1]) < HEAL_AT:
            power[w[3]] = w[4]
    still_off = sorted(h for h, state in power.items() if state == "off")
    # A storm host may have been switched off by a fence whose result a deposed leader dropped: the
    # next leader holds it (it cannot tell it from a cut-off one). The operator acks it; the CLI
    # refuses the ack if it holds a lease again, i.e. it runs.
    for h in sorted(set(still_off) | stormed):
        heal.append(f"at {HEAL_AT + 2:g} ack {h}")
        heal.append(f"at {HEAL_AT + 12:g} ack {h}")
        heal.append(f"at {HEAL_AT + 25:g} ack {h}")  # after a slow recovery (e.g. watchdog resets)
    # A host whose device lied, or that someone powered on again while it was being fenced, may
    # be held with fence_inconsistent: the operator, seeing it run, returns it.
    for h in sorted(liars | back_on):
        heal.append(f"at {HEAL_AT + 12:g} return {h}")
    for h in still_off:
        if rng.random() < 0.4:
            heal.append(f"at {HEAL_AT + rng.randint(15, 25):g} power {h} on")
            if rng.random() < 0.5:
                heal.append(f"at {HEAL_AT + 30:g} return {h}")
    lines = sorted(lines, key=lambda ln: float(ln.split()[1])) + heal
    lines.append(f"end {HORIZON:g}")
    return Schedule(seed, cluster, "\n".join(lines) + "\n")


def quiescent(outcome_sim: Any) -> bool:
    """Nothing left to do: no fence running, every host in a stable state, every VM recovered."""
    sim = outcome_sim
    if sim.fences or sim.leader() is None:
        return False
    if any(sim.stored_state(h) not in STABLE for h in sim.hosts):
        return False
    if any(k.startswith(sim.keys.requests) for k in sim.store.kvs):
        return False
    return not check_recovered(sim)


def run_seed(seed: int, *, log: bool = False) -> Outcome:
    """Run one schedule; ``violations`` or ``problems`` on the outcome say what went wrong."""
    sched = generate(seed)
    cmds, end = sched.commands()
    last_at = max((c.at for c in cmds), default=0.0)
    outcome = run(sched.cluster, cmds, end, source=f"seed {seed}", summary=log,
                  stop_when=lambda sim: sim.now > last_at and quiescent(sim))
    return outcome


def replay_command(seed: int) -> str:
    return f"haagent sim random --seed {seed} --log"
