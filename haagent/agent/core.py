"""The agent's decisions for its own host: a pure step.

``step(inp, now, config) -> actions``. Rules (DESIGN §4 invariant 3):
* start only what placement gives this host, only while its lease is alive, only from a
  placement read at a revision newer than the lease grant, and only while the host is active
  (a fenced host that comes back runs nothing);
* never start what it does not own, nor what another live host reports running; remove a local copy placed elsewhere only once the owner
  reports that VM running (a copy that arrived by a live migration, only once it still does
  ``ARRIVAL_GRACE`` after the arrival);
* a managed VM that crashed (not one a user shut down) restarts in place up to ``max_restart``
  times per ``restart_window``; after that the agent asks the leader to relocate it;
* a live migration ordered from this host (``vms/<uuid>/migration``) runs once per order (op and
  attempt), only while the lease lives and the VM runs here (a cold move's first half, a clean
  shutdown here, likewise); its second half ("cold-start") starts the VM on the target, only
  once placed there and reported nowhere, and only within the order's deadline from when this
  agent first saw it: past it, the target gives the order up (``AbandonColdStart``: its outcome
  record says it never started the VM for that order, and it never will), so the leader may
  place the VM elsewhere with no second copy; the source removes the stopped definition once the
  target runs the VM (``UndefineVm``, as ``--undefinesource`` does for a live migration);
  otherwise a VM with a migration record is
  never started by the step (the leader settles where it runs first), and a copy arriving by
  migration is never stopped for running where its placement does not say;
* watchdog mode: once the lease is lost, kill every managed VM (the watchdog is fed from the
  lease keepalive, so it starves by itself and resets the host: haagent/agent/watchdog.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from haagent.state.view import Migration, VmSpec
from haagent.model import HostState

STARTS_VMS = frozenset({HostState.ACTIVE, HostState.DRAINING})
# Seconds a copy that arrived here by live migration is kept although its owner's report lists
# it: the source reports again within a round or two of the migration's end (a wake-up on the
# libvirt event), also on a loaded machine.
ARRIVAL_GRACE = 10.0


@dataclass(frozen=True)
class AgentConfig:
    max_restart: int = 3
    restart_window: float = 600.0
    watchdog: bool = False
    self_fence_timeout: float = 5.0


@dataclass(frozen=True)
class AgentInput:
    host: str
    host_state: HostState | None
    lease_ok: bool  # by the agent's own clock the lease is alive
    lease_grant_revision: int
    placement_revision: int  # store revision the placements below were read at
    placements: Mapping[str, str]  # uuid -> host
    specs: Mapping[str, VmSpec]
    running: frozenset[str]  # managed VMs running here now
    # running VMs of the OTHER hosts that hold a live lease (a dead host's report is stale)
    reports: Mapping[str, frozenset[str]] = field(default_factory=dict)
    crashes: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # uuid -> crash times
    stopped_by_user: frozenset[str] = frozenset()
    relocation_requested: frozenset[str] = frozenset()
    migrated_away: frozenset[str] = frozenset()  # left this host by live migration since placed here
    # Store revision at which each local copy was first seen running, and of each host's report:
    # a report older than our copy cannot tell whether the owner still runs it (e.g. a live
    # migration to us that the owner has not reported yet).
    local_since: Mapping[str, int] = field(default_factory=dict)
    report_revisions: Mapping[str, int] = field(default_factory=dict)
    # When each local copy that arrived by a live migration (libvirt: running, reason "migrated")
    # was first seen running here, by the agent's clock.
    arrived: Mapping[str, float] = field(default_factory=dict)
    migrations: Mapping[str, Migration] = field(default_factory=dict)  # every stored migration order
    migrations_run: frozenset[tuple[str, str, int]] = frozenset()  # (uuid, op, attempt) run (or reported) here
    # When this agent first saw each cold-start order naming this host, (uuid, op, attempt) -> its clock
    cold_start_seen: Mapping[tuple[str, str, int], float] = field(default_factory=dict)
    # Managed VMs defined here and not running; and those this host shut down for a cold move
    # (its own outcome records say so: they outlive an agent restart)
    stopped_here: frozenset[str] = frozenset()
    cold_stopped: frozenset[str] = frozenset()


@dataclass(frozen=True)
class StartVm:
    vm: str
    reason: str


@dataclass(frozen=True)
class StopVm:
    vm: str
    reason: str


@dataclass(frozen=True)
class RequestRelocation:
    vm: str
    crashes: int


@dataclass(frozen=True)
class MigrateVm:
    """Live-migrate a local VM as the leader ordered; the shell reports the outcome."""

    vm: str
    dest: str
    deadline: float
    op: str
    attempt: int
    options: tuple = ()  # the libvirt tuning the leader resolved (applied exactly)
    mode: str = "live"  # live, or cold: shut it down here (ACPI, then destroyed after ``deadline`` s)


@dataclass(frozen=True)
class AbandonColdStart:
    """Give up starting a cold-moved VM here for one order: past its deadline, not running here.
    The shell records the order as run (never started for it again) and writes a failed outcome."""

    vm: str
    source: str
    op: str
    attempt: int
    waited: float  # since this agent first saw the order
    deadline: float


@dataclass(frozen=True)
class UndefineVm:
    """Remove a stopped VM's definition from this host (it runs elsewhere now)."""

    vm: str
    reason: str


AgentAction = StartVm | StopVm | RequestRelocation | MigrateVm | AbandonColdStart | UndefineVm


def step(inp: AgentInput, now: float, config: AgentConfig) -> list[AgentAction]:
    """One reconcile round for this host. Pure."""
    actions: list[AgentAction] = []
    if not inp.lease_ok:
        if config.watchdog:
            # Self-fence: the leader will restart these elsewhere after self_fence_timeout.
            actions += [StopVm(u, "self-fence: lease lost (watchdog mode)") for u in sorted(inp.running)]
        return actions

    for uuid in sorted(inp.running):
        owner = inp.placements.get(uuid)
        if owner is None or owner == inp.host:
            continue
        mig = inp.migrations.get(uuid)
        if mig is not None and mig.dest == inp.host:
            continue  # arriving by migration: the leader moves placement once it has settled
        fresh_report = inp.report_revisions.get(owner, 0) >= inp.local_since.get(uuid, 0)
        if uuid in inp.reports.get(owner, frozenset()) and fresh_report:
            if now - inp.arrived.get(uuid, float("-inf")) < ARRIVAL_GRACE:
                # Live-migrated here by hand (virsh migrate, no order): the source's report may
                # have been read from its libvirt before the migration completed and written after
                # we saw the copy, so it looks fresh and is not. libvirt never runs both ends, so
                # the arrival is the live copy; the source's next report drops it and the leader's
                # placement follows. A copy the owner still reports after the grace is removed.
                continue
            actions.append(StopVm(uuid, f"placed on {owner}, which reports it running"))

    for uuid, mig in sorted(inp.migrations.items()):
        # An order for a VM that does not run here is carried out too: the shell reports that it
        # failed (the VM is not here), so the leader clears it and the VM is started again.
        # (A VM haagent does not manage, moved by ``drain --all``, has neither spec nor placement.)
        ours = inp.placements.get(uuid) == inp.host or (uuid not in inp.placements and uuid not in inp.specs
                                                        and mig.mode == "live")
        if (mig.source == inp.host and mig.attempt > 0 and ours
                and mig.mode in ("live", "cold") and (uuid, mig.op, mig.attempt) not in inp.migrations_run):
            actions.append(MigrateVm(uuid, mig.dest, mig.deadline, mig.op, mig.attempt, mig.options, mig.mode))

    # A cold move's second half, past its deadline and not started here: given up, in this very
    # round (the one that would start it, after a libvirt listing without it), whatever the
    # host's state. From then on this order never starts it here, so the leader may place it on
    # another host. (Only an order the agent saw itself counts: a new agent process starts the
    # clock again.)
    gave_up = set()
    for uuid, mig in sorted(inp.migrations.items()):
        key = (uuid, mig.op, mig.attempt)
        seen = inp.cold_start_seen.get(key)
        if (mig.mode == "cold-start" and mig.dest == inp.host and key not in inp.migrations_run
                and uuid not in inp.running and seen is not None and mig.deadline > 0
                and now - seen >= mig.deadline):
            actions.append(AbandonColdStart(uuid, mig.source, mig.op, mig.attempt, now - seen, mig.deadline))
            gave_up.add(uuid)
    # A VM this host shut down for a cold move, now run by its new host (which its placement
    # names, and whose report lists it) and settled (no order left): its stopped definition here
    # goes, as a live migration's --undefinesource takes it. Not earlier: until the target runs
    # it, this definition is where the VM would come back to (the spec in etcd holds it too).
    for uuid in sorted(inp.cold_stopped & inp.stopped_here):
        owner = inp.placements.get(uuid)
        if (owner is not None and owner != inp.host and uuid not in inp.migrations and uuid not in inp.running
                and uuid in inp.reports.get(owner, frozenset())):
            actions.append(UndefineVm(uuid, f"cold-moved to {owner}, which runs it"))

    fresh = inp.placement_revision > inp.lease_grant_revision
    if not fresh or inp.host_state not in STARTS_VMS:
        return actions
    for uuid, mig in sorted(inp.migrations.items()):
        # The second half of a cold move: the leader wrote "cold-start" only once the source had
        # shut the VM down and no live host reported it, and placed it here. Started whatever its
        # HA policy (a policy "none" VM moved cold is still the operator's VM to run), never twice,
        # and never for an order given up (or answered) here.
        if (mig.mode == "cold-start" and mig.dest == inp.host and inp.placements.get(uuid) == inp.host
                and uuid not in inp.running and uuid in inp.specs and uuid not in gave_up
                and (uuid, mig.op, mig.attempt) not in inp.migrations_run
                and not any(uuid in running for running in inp.reports.values())):
            actions.append(StartVm(uuid, f"cold move from {mig.source} ({mig.op})"))
    for uuid, owner in sorted(inp.placements.items()):
        spec = inp.specs.get(uuid)
        if owner != inp.host or uuid in inp.running or spec is None or spec.policy == "none":
            continue
        if uuid in inp.stopped_by_user:
            continue  # an operator shut it down on purpose; HA does not fight the operator
        if uuid in inp.migrated_away or uuid in inp.migrations:
            continue  # it runs on the destination now, or may: the leader moves placement after it
        if any(uuid in running for running in inp.reports.values()):
            # A live host runs it (e.g. a migration finished before its placement moved): starting
            # it here would make a second copy. The leader resolves it; never start a twin.
            continue
        recent = [t for t in inp.crashes.get(uuid, ()) if now - t <= config.restart_window]
        if recent and len(recent) > config.max_restart:
            if uuid not in inp.relocation_requested:
                actions.append(RequestRelocation(uuid, len(recent)))
            continue
        reason = f"restart in place after crash {len(recent)}/{config.max_restart}" if recent else "placed here"
        actions.append(StartVm(uuid, reason))
    return actions
