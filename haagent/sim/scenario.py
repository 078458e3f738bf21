"""Scenarios: a starting cluster plus timed fault rounds, run on the simulator into a story log.

A scenario directory holds ``README`` (one line), ``cluster.json``, ``cmdlist`` and the golden
``log.expect``. The command language (one per line, ``#`` starts a comment)::

    at 5 power h2 off          power h2 on
    at 5 network h3 off        network h3 on        (a partition: cut off from etcd and peers)
    at 9 agent h1 crash        agent h1 start       (the agent process only; its VMs keep running)
    at 9 agent h1 stop                              (a clean stop, SIGTERM: shutdown_policy freeze)
    bmc h2 fail                pdu h2 never-off     device h2 pdu-b lies
                               (device modes: ok, fail, hang, never-off, lies, empty)
    read h2 lies                                    (h2's devices answer the leader's storm power
                                                     reads, only those: ok, lies, hang, garbage)
    at 5 corrupt h2 report     corrupt vm1 spec     (garbage in a record: host state|report|lease|
                                                     stopped; vm spec|placement|migration; request)
    at 30 repair                                    (every corrupted record put back)
    at 20 quorum lost          quorum back
    at 7 vm web-1 crash        vm web-1 shutdown    (a crash, or a shutdown by a user)
    at 20 ack h2               at 30 return h2      (haagent fence ack / haagent host return)
    at 5 load web-1 150                             (the VM now burns 150 % of one host CPU)
    at 5 libvirtd h2 down      libvirtd h2 up       (its libvirtd stops answering; VMs run on)
    at 5 starts h2 fail        starts h2 ok         (its libvirtd fails every domain start)
    at 5 drain h2              drain h2 partial max-parallel=1   (haagent host drain)
                               drain h2 cold-ok all              (--cold-ok, --all)
    at 40 undrain h2           undrain h2 return-vms             (haagent host undrain)
    at 5 migrate web-1         migrate web-1 h3                  (haagent vm migrate [--to])
    link 100                   (migrations move memory at 100 MiB/s; default 1000)
    end 40                     (run until t=40; default 60)

A line without ``at`` happens at t=0, before the first tick. docs/simulator.md has the details.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from haagent.agent.core import AgentConfig
from haagent.config import MigrationSection, RebalanceSection, check_tuning, window_problem
from haagent.manager.core import ManagerConfig
from haagent.model import HostCell
from haagent.state.view import VmNeeds, VmSpec
from haagent.sim.invariants import Invariants, check_recovered
from haagent.sim.store import NoQuorum
from haagent.sim.world import DEVICE_MODES, READ_FAULTS, Device, InvariantViolation, SimConfig, SimHost, Simulation

DEFAULT_END = 60.0
CORPUS = Path(__file__).resolve().parent / "scenarios"  # ships with the package: haagent sim scenario NAME works anywhere


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Command:
    at: float
    words: tuple[str, ...]
    line: int

    @property
    def text(self) -> str:
        return " ".join(self.words)


def parse_cmdlist(text: str, source: str = "cmdlist") -> tuple[list[Command], float]:
    """Commands in time order (stable for equal times) and the end time."""
    cmds: list[Command] = []
    end = DEFAULT_END
    for n, raw in enumerate(text.splitlines(), 1):
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        at = 0.0
        if words[0] == "at":
            if len(words) < 3:
                raise ScenarioError(f"{source}:{n}: 'at' needs a time and a command")
            at = _number(words[1], source, n)
            words = words[2:]
        if words[0] == "end":
            if len(words) == 2:
                end = _number(words[1], source, n)
            elif at:
                end = at
            else:
                raise ScenarioError(f"{source}:{n}: 'end' needs a time")
            continue
        _validate(words, source, n)
        cmds.append(Command(at, tuple(words), n))
    cmds.sort(key=lambda c: c.at)
    return cmds, end


def _number(word: str, source: str, n: int) -> float:
    try:
        return float(word)
    except ValueError:
        raise ScenarioError(f"{source}:{n}: {word!r} is not a time in seconds") from None


_SHAPES = {
    "power": ("HOST", ("on", "off")), "network": ("HOST", ("on", "off")),
    "agent": ("HOST", ("crash", "start", "stop")), "vm": ("VM", ("crash", "shutdown")),
    "bmc": ("HOST", DEVICE_MODES), "pdu": ("HOST", DEVICE_MODES), "read": ("HOST", READ_FAULTS),
    "libvirtd": ("HOST", ("down", "up")), "starts": ("HOST", ("fail", "ok")),
}
_HOST_RECORDS = ("state", "report", "lease", "stopped")
_VM_RECORDS = ("spec", "placement", "migration")


def _validate(words: tuple[str, ...] | list[str], source: str, n: int) -> None:
    verb = words[0]
    if verb in _SHAPES:
        what, options = _SHAPES[verb]
        if len(words) != 3 or words[2] not in options:
            raise ScenarioError(f"{source}:{n}: expected '{verb} {what} {'|'.join(options)}'")
    elif verb == "device":
        if len(words) != 4:
            raise ScenarioError(f"{source}:{n}: expected 'device HOST DEVICE MODE'")
    elif verb == "quorum":
        if len(words) != 2 or words[1] not in ("lost", "back"):
            raise ScenarioError(f"{source}:{n}: expected 'quorum lost|back'")
    elif verb in ("ack", "return"):
        if len(words) != 2:
            raise ScenarioError(f"{source}:{n}: expected '{verb} HOST'")
    elif verb == "corrupt":
        if not (len(words) == 3 and words[2] in _HOST_RECORDS + _VM_RECORDS) and words[1:] != ["request"]:
            raise ScenarioError(f"{source}:{n}: expected 'corrupt HOST {'|'.join(_HOST_RECORDS)}', "
                                f"'corrupt VM {'|'.join(_VM_RECORDS)}' or 'corrupt request'")
    elif verb == "repair":
        if len(words) != 1:
            raise ScenarioError(f"{source}:{n}: expected 'repair'")
    elif verb == "load":
        if len(words) != 3 or not _is_number(words[2]) or float(words[2]) < 0:
            raise ScenarioError(f"{source}:{n}: expected 'load VM PERCENT' (of one host CPU, >= 0)")
    elif verb == "drain":
        if len(words) < 2 or any(w not in ("partial", "cold-ok", "all") and not (w.startswith("max-parallel=")
                                                                               and w[13:].isdigit())
                                 for w in words[2:]):
            raise ScenarioError(f"{source}:{n}: expected 'drain HOST [partial] [cold-ok] [all] [max-parallel=N]'")
    elif verb == "undrain":
        if len(words) not in (2, 3) or words[2:] not in ([], ["return-vms"]):
            raise ScenarioError(f"{source}:{n}: expected 'undrain HOST [return-vms]'")
    elif verb == "migrate":
        if len(words) not in (2, 3):
            raise ScenarioError(f"{source}:{n}: expected 'migrate VM [HOST]'")
    elif verb == "rebalance":
        if words[1:2] != ["run"] or any(not (w.startswith("max-moves=") and w[10:].isdigit()) for w in words[2:]):
            raise ScenarioError(f"{source}:{n}: expected 'rebalance run [max-moves=N]'")
    elif verb == "link":
        if len(words) != 2 or not _is_number(words[1]) or float(words[1]) <= 0:
            raise ScenarioError(f"{source}:{n}: expected 'link MIB_PER_S' (> 0)")
    else:
        raise ScenarioError(f"{source}:{n}: unknown command {verb!r}")


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _config(cls: type, raw: Mapping[str, Any] | None, source: str) -> Any:
    known = {f.name for f in fields(cls)}
    raw = dict(raw or {})
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ScenarioError(f"{source}: unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**raw)


def build(cluster: Mapping[str, Any], source: str = "cluster.json") -> Simulation:
    """A simulation from a cluster description (see docs/simulator.md)."""
    hosts = []
    for name, h in sorted(dict(cluster.get("hosts", {})).items()):
        h = h or {}
        levels = [[Device(d) for d in level] for level in h.get("fencing", [["ipmi"]])]
        cells = None
        if h.get("numa"):  # [{"cpus": 4, "memory_mib": 4096, "hugepages_2m": 0}, ...]
            cpu = 0
            cells = []
            for i, c in enumerate(h["numa"]):
                pages = int(c.get("hugepages_2m", 0))
                cells.append(HostCell(i, tuple(range(cpu, cpu + int(c["cpus"]))), int(c["memory_mib"]),
                                      int(c["memory_mib"]), {2048: (pages, pages)} if pages else {}))
                cpu += int(c["cpus"])
            cells = tuple(cells)
        hosts.append(SimHost(name, int(h.get("cpus", 8)) if cells is None else sum(len(c.cpus) for c in cells),
                             int(h.get("memory_mib", 8192)) if cells is None else sum(c.memory_mib for c in cells),
                             levels, watchdog=h.get("watchdog"), numa=cells, tags=tuple(h.get("tags", ())),
                             cpu_model=str(h.get("cpu_model", "qemu64"))))
    specs, placements, running, unmanaged, disks = [], {}, {}, {}, {}
    names = {h.name for h in hosts}
    for v in cluster.get("vms", []):
        hp = int(v.get("hugepages_2m", 0))
        needs = VmNeeds(numa=str(v.get("numa", "none")), nodeset=tuple(v.get("nodeset", ())),
                        hugepage_size_kib=2048 if hp else None, hugepage_count=hp)
        tuning = dict(v.get("migration", {}))  # its HA mark's migration tuning
        if check_tuning(tuning):
            raise ScenarioError(f"{source}: vm {v['name']} migration: {check_tuning(tuning)[0]}")
        spec = VmSpec(v["name"], v["name"], int(v.get("vcpus", 1)), int(v.get("memory_mib", 1024)),
                      int(v.get("priority", 0)), str(v.get("policy", "restart")), "",
                      tuple(v.get("groups", ())), needs, tuple(sorted(tuning.items())))
        if v.get("disk") is not None:  # "local": a qcow2 outside the shared storage; "shared": on it
            if v["disk"] not in ("local", "shared"):
                raise ScenarioError(f"{source}: vm {v['name']} disk: expected \"local\" or \"shared\"")
            disks[spec.uuid] = f"/sim/{'images' if v['disk'] == 'local' else 'shared'}/{spec.name}.qcow2"
        if v.get("managed") is False:  # a VM without the HA mark: running on its host, nothing registered
            if v.get("host") not in names:
                raise ScenarioError(f"{source}: unmanaged vm {v['name']} needs a known host")
            unmanaged[spec.uuid] = (spec, v["host"])
            continue
        specs.append(spec)
        if v.get("host"):
            if v["host"] not in names:
                raise ScenarioError(f"{source}: vm {v['name']} on unknown host {v['host']}")
            placements[spec.uuid] = v["host"]
        if "running_on" in v:  # where it really runs, when that is not (only) its placement
            running[spec.uuid] = list(v["running_on"])
            if not set(running[spec.uuid]) <= names:
                raise ScenarioError(f"{source}: vm {v['name']} running on an unknown host")
    migrations = {vm: (m[0], m[1]) for vm, m in dict(cluster.get("migrations", {})).items()}
    manager = _config(ManagerConfig, {k: v for k, v in dict(cluster.get("manager") or {}).items()
                                      if k not in ("migration", "rebalance")}, source)
    manager = replace(manager, migration=_config(MigrationSection,
                                                 dict(cluster.get("manager") or {}).get("migration"), source),
                      rebalance=_config(RebalanceSection, dict(cluster.get("manager") or {}).get("rebalance"), source))
    problem = window_problem(manager.rebalance.window, manager.rebalance.timezone)
    if problem:
        raise ScenarioError(f"{source}: manager.rebalance.{problem}")
    return Simulation(hosts, specs, placements,
                      manager=manager,
                      agent=_config(AgentConfig, cluster.get("agent"), source),
                      sim=_config(SimConfig, cluster.get("sim"), source), migrations=migrations,
                      running=running, unmanaged=unmanaged, disks=disks)


def apply(sim: Simulation, cmd: Command) -> None:
    """Inject one fault or operator action, and log it."""
    w = cmd.words
    verb = w[0]
    note = ""
    try:
        if verb == "power":
            sim.power(w[1], w[2] == "on")
        elif verb == "network":
            sim.network(w[1], w[2] == "on")
        elif verb == "agent":
            {"crash": sim.agent_crash, "start": sim.agent_start, "stop": sim.agent_stop}[w[2]](w[1])
        elif verb == "libvirtd":
            sim.libvirtd(w[1], w[2] == "up")
        elif verb == "starts":
            sim.starts(w[1], w[2] == "ok")
        elif verb == "bmc":
            sim.set_device(w[1], "ipmi", w[2])
        elif verb == "pdu":
            sim.set_device(w[1], "pdu", w[2])
        elif verb == "device":
            sim.set_device(w[1], w[2], w[3])
        elif verb == "read":
            sim.set_read_fault(w[1], w[2])
        elif verb == "quorum":
            sim.set_quorum(w[1] == "back")
        elif verb == "vm":
            where = sim.vm_crash(w[1], by_user=w[2] == "shutdown")
            note = f" (on {where})" if where else " (not running anywhere: no effect)"
        elif verb in ("ack", "return"):
            if w[1] not in sim.hosts:
                raise KeyError(f"unknown host {w[1]}")
            refused = sim.request("fence_ack" if verb == "ack" else "host_return", host=w[1])
            note = f" (refused: {refused})" if refused else ""
        elif verb == "corrupt":
            if w[1] == "request":
                key = sim.keys.request("garbage")
            elif w[2] in _HOST_RECORDS:
                if w[1] not in sim.hosts:
                    raise KeyError(f"unknown host {w[1]}")
                key = f"{sim.keys.host(w[1])}{w[2]}"
            else:
                if w[1] not in sim.specs:
                    raise KeyError(f"unknown vm {w[1]}")
                key = f"{sim.keys.vms}{w[1]}/{w[2]}"
            try:
                sim.corrupt(key)
            except NoQuorum:
                note = " (rejected: no quorum)"
        elif verb == "repair":
            try:
                sim.repair()
            except NoQuorum:
                note = " (rejected: no quorum)"
        elif verb == "load":
            where = sim.vm_load(w[1], float(w[2]))
            note = f" (on {where})" if where else " (not running anywhere: no effect)"
        elif verb in ("drain", "undrain"):
            if w[1] not in sim.hosts:
                raise KeyError(f"unknown host {w[1]}")
            opts: dict[str, Any] = {}
            for word in w[2:]:
                if word.startswith("max-parallel="):
                    opts["max_parallel"] = int(word.split("=", 1)[1])
                else:
                    opts[word.replace("-", "_")] = True
            refused = sim.request(verb, host=w[1], options=opts)
            note = f" (refused: {refused})" if refused else ""
        elif verb == "migrate":
            if w[1] not in sim.specs:
                raise KeyError(f"unknown vm {w[1]}")
            refused = sim.request("migrate", vm=w[1], options={"to": w[2]} if len(w) > 2 else {})
            note = f" (refused: {refused})" if refused else ""
        elif verb == "rebalance":
            opts = {"max_moves": int(word.split("=", 1)[1]) for word in w[2:]}
            refused = sim.request("rebalance", options=opts)
            note = f" (refused: {refused})" if refused else ""
        elif verb == "link":
            sim.fakes.link_mib_s = float(w[1])
    except KeyError as exc:
        raise ScenarioError(f"line {cmd.line}: {cmd.text}: {exc.args[0]}") from None
    sim.say("fault", cmd.text + note)


@dataclass
class Outcome:
    log: list[str]
    violations: list[str]
    problems: list[str]  # liveness problems at the end (informational for scenarios)
    sim: Simulation

    @property
    def text(self) -> str:
        return "\n".join(self.log) + "\n"


def run(cluster: Mapping[str, Any], cmds: list[Command], end: float, *, source: str = "scenario",
        summary: bool = True, stop_when: Callable[[Simulation], bool] | None = None) -> Outcome:
    """Run to ``end``; invariants are checked after every tick and at every leader commit."""
    sim = build(cluster, source)
    Invariants(sim).attach()
    pending = list(cmds)
    try:
        while True:
            while pending and pending[0].at <= sim.now + 1e-9:
                apply(sim, pending.pop(0))  # faults due now happen before this tick's agents run
            sim.tick_body()
            if sim.now >= end - 1e-9 or (stop_when is not None and stop_when(sim)):
                break
            sim.advance_clock()
    except InvariantViolation:
        sim.say("stop", "run stopped: a safety invariant was violated")
    problems = check_recovered(sim) if not sim.violations else []
    if summary:
        _summary(sim, problems)
    return Outcome(sim.log, sim.violations, problems, sim)


def _summary(sim: Simulation, problems: list[str]) -> None:
    lead = sim.leader()
    sim.say("end", f"leader {lead[0]} (epoch {lead[1].epoch})" if lead else "no leader")
    for name, h in sim.hosts.items():
        alive = sim.keys.host_alive(name) in sim.store.kvs
        power = "on" if h.powered else "off"
        agent = "" if not h.powered else (" agent down" if h.agent is None else "")
        cut = " partitioned" if h.partitioned else ""
        state = sim.stored_state(name)
        sim.say("end", f"host {name} {state.value if state else 'none'} power {power}"
                       f"{' lease' if alive else ' no-lease'}{agent}{cut}")
    for uuid in sorted(sim.specs):
        where = sim.where(uuid)
        sim.say("end", f"vm {uuid} running on [{', '.join(where)}] placed on {sim.stored_placement(uuid)}")
    for uuid in sorted(sim.unmanaged):
        sim.say("end", f"vm {uuid} (unmanaged) running on [{', '.join(sim.where(uuid))}]")
    if lead:
        for al in sorted(lead[1].alerts, key=lambda a: (a.name, a.host, a.vm)):
            sim.say("end", " ".join(x for x in (f"alert {al.name}", f"host={al.host}" * bool(al.host), f"vm={al.vm}" * bool(al.vm)) if x))
    if sim.violations:
        sim.say("end", f"SAFETY INVARIANT VIOLATED: {sim.violations[0]}")
    elif problems:
        for p in problems:
            sim.say("end", f"not recovered: {p}")
    else:
        sim.say("end", "every HA VM that can run runs exactly once")


# -- the corpus on disk ------------------------------------------------------------------------


def locate(name: str, base: Path | None = None) -> Path:
    """A scenario directory by name (in the corpus) or by path."""
    p = Path(name)
    if (p / "cluster.json").is_file():
        return p
    d = (base or CORPUS) / name
    if (d / "cluster.json").is_file():
        return d
    raise ScenarioError(f"no scenario {name!r} (looked for {p}/cluster.json and {d}/cluster.json)")


def corpus(base: Path | None = None) -> list[str]:
    base = base or CORPUS
    return sorted(d.name for d in base.iterdir() if (d / "cluster.json").is_file()) if base.is_dir() else []


def run_dir(path: Path) -> Outcome:
    try:
        cluster = json.loads((path / "cluster.json").read_text())
    except ValueError as exc:
        raise ScenarioError(f"{path / 'cluster.json'}: {exc}") from None
    cmds, end = parse_cmdlist((path / "cmdlist").read_text(), str(path / "cmdlist"))
    return run(cluster, cmds, end, source=str(path))
