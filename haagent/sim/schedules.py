"""Seeded random fault schedules: small clusters, a burst of faults, a heal, then quiescence.

``generate(seed)`` returns a cluster description and a cmdlist in the scenario language, so a
failing seed replays exactly (``haagent sim random --seed N``) and can be saved as a scenario
(``--save DIR``). ``run_seed(seed)`` runs one: the safety invariants are checked after every
tick; after the heal, the run must reach quiescence (every HA VM that fits runs exactly once) by
``horizon``, and stops as soon as it does.

What the generator never does, on purpose: a fence device that lies ("reports off, host keeps
running"): with the host's lease gone for any reason no software can tell it from a dead host
(DESIGN §4 trusts a confirmed power-off), and the one case the manager can catch, a host that
renews its lease again before the lie is believed, is a race hand-written scenarios pin down.
Nor an operator ``ack`` of a host that is not off: the ack is the operator's word that it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from haagent.model import HostState
from haagent.sim.invariants import check_recovered
from haagent.sim.scenario import Command, Outcome, parse_cmdlist, run

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
        "manager": {"storm_window": 10.0, "fence_retry_interval": 3.0, "watchdog": watchdog},
        "agent": {"watchdog": watchdog, "max_restart": 2},
        "sim": {"tick": 1.0},
    }
    for h in hosts:
        kind = rng.random()
        if watchdog and kind < 0.5:
            levels: list[list[str]] = []
        elif kind < 0.3:
            levels = [["ipmi"], ["pdu-a", "pdu-b"]]
        else:
            levels = [["ipmi"]]
        cluster["hosts"][h] = {"cpus": 8, "memory_mib": rng.choice((4096, 8192)), "fencing": levels}
    used = {h: 0 for h in hosts}
    for i in range(1, rng.randint(2, 8) + 1):
        mem = rng.choice((1024, 2048, 3072))
        host = rng.choice(hosts)
        if used[host] + mem > cluster["hosts"][host]["memory_mib"]:
            continue
        used[host] += mem
        cluster["vms"].append({"name": f"vm{i}", "host": host, "memory_mib": mem,
                               "priority": rng.choice((0, 10, 50, 100)),
                               "policy": "none" if rng.random() < 0.1 else "restart"})
    vms = [v["name"] for v in cluster["vms"]]

    lines: list[str] = []
    off_at: dict[str, float] = {}  # hosts powered off by the schedule, and when
    cut: set[str] = set()
    for _ in range(rng.randint(1, 4)):
        t = float(rng.randint(2, 15))
        h = rng.choice(hosts)
        kind = rng.choice(("power", "power", "network", "network", "agent", "bmc", "quorum", "vm", "vm",
                           "flap", "pdu"))
        if kind == "power":
            lines.append(f"at {t:g} power {h} off")
            off_at.setdefault(h, t)
            if rng.random() < 0.3:
                lines.append(f"at {t + rng.randint(1, 8):g} power {h} on")
        elif kind == "network":
            lines.append(f"at {t:g} network {h} off")
            cut.add(h)
        elif kind == "flap":
            lines.append(f"at {t:g} network {h} off")
            lines.append(f"at {t + rng.randint(1, 4):g} network {h} on")
        elif kind == "agent":
            lines.append(f"at {t:g} agent {h} crash")
            if rng.random() < 0.5:
                lines.append(f"at {t + rng.randint(1, 6):g} agent {h} start")
        elif kind == "bmc" and cluster["hosts"][h]["fencing"]:
            lines.append(f"at {t:g} bmc {h} {rng.choice(('fail', 'hang', 'never-off'))}")
        elif kind == "pdu" and cluster["hosts"][h]["fencing"][1:]:
            lines.append(f"at {t:g} pdu {h} {rng.choice(('fail', 'hang'))}")
        elif kind == "quorum":
            lines.append(f"at {t:g} quorum lost")
            lines.append(f"at {t + rng.randint(1, 6):g} quorum back")
        elif kind == "vm" and vms:
            vm = rng.choice(vms)
            for k in range(rng.randint(1, 4)):  # sometimes often enough to be relocated
                lines.append(f"at {t + 2 * k:g} vm {vm} crash")
    # An honest operator acknowledges only a host that is really off.
    for h, t in sorted(off_at.items()):
        if rng.random() < 0.3 and not any(f"power {h} on" in ln for ln in lines):
            lines.append(f"at {t + rng.randint(3, 10):g} ack {h}")
    # The heal: the network, quorum, devices and agents come back; some dead hosts power on.
    heal = [f"at {HEAL_AT:g} quorum back"]
    for h in hosts:
        heal.append(f"at {HEAL_AT:g} network {h} on")
        heal.append(f"at {HEAL_AT:g} agent {h} start")
        for level in cluster["hosts"][h]["fencing"]:
            for d in level:
                heal.append(f"at {HEAL_AT:g} device {h} {d} ok")
    for h in sorted(off_at):
        if rng.random() < 0.4:
            heal.append(f"at {HEAL_AT + rng.randint(5, 15):g} power {h} on")
            if rng.random() < 0.5:
                heal.append(f"at {HEAL_AT + 20:g} return {h}")
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
