"""The composition root: ``haagent agent`` builds the agent process (heartbeat, election,
report, metrics, the VM shell, the watchdog, a clean SIGTERM) and, when elected, its leader loop.

Decisions stay in pure step functions (the manager and agent steps) and their shells
(``haagent.manager.shell``, ``haagent.agent.vms``); this module only wires the ports (etcd,
libvirt, fence devices, clock) and runs the loop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import click
from sdnotify import SystemdNotifier

from haagent import __version__, metrics
from fencing.runner import Fencer
from haagent.agent.collector import InventoryCollector
from haagent.agent.inventory import worth_writing
from haagent.agent.watchdog import Watchdog, WatchdogError
from haagent.hypervisor.port import Hypervisor
from haagent.clikit import config_option
from haagent.config import Config
from haagent.errors import ConfigError, NotLeader, StoreAccessDenied, StoreError
from haagent.log import configure, get_logger
from haagent.notify.webhook import Notifier
from haagent.store.client import Compare, Delete, EtcdStore, Put
from haagent.store.election import Election, Leadership
from haagent.store.keys import Keys
from haagent.store.lease import LeaseEvent, LeaseKeeper
from haagent.store.watch import PrefixCache, ResumingWatch, WatchEvent

log = get_logger("haagent.agent")


def progress_only(event: WatchEvent, keys: Keys) -> bool:
    """Whether a change is only a running migration's progress (``hosts/<h>/migration/<uuid>``
    with outcome "running", written at most once a second per migration for ``--wait``). Nothing
    in an agent's or the leader's round acts on it, and waking every agent for each one made a
    drain's rounds several times as frequent (each reads every VM from libvirt): the loop reads it
    at its next round. An outcome, or anything else, wakes the loop as before."""
    rest = event.key[len(keys.hosts):] if event.key.startswith(keys.hosts) else ""
    if event.kind != "put" or rest.count("/") != 2 or rest.split("/")[1] != "migration":
        return False
    try:
        return json.loads(event.value).get("outcome") == "running"
    except (ValueError, AttributeError):
        return False


def host_facts() -> dict[str, Any]:
    """What the agent can say about its host without libvirt."""
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count() or 0, "memory_mib": mem_kib // 1024}


class AgentDaemon:
    """One host's agent. ``run()`` blocks until ``stop()`` (or SIGTERM via ``install_signals``)."""

    def __init__(self, config: Config, *, store: EtcdStore | None = None,
                 leader_work: Callable[["AgentDaemon"], None] | None = None,
                 facts: Callable[[], dict[str, Any]] = host_facts, hypervisor: Hypervisor | None = None,
                 fencer: Fencer | None = None, watchdog: Watchdog | None = None,
                 watchdog_write_only: bool = False, systemd: Any = None):
        self.config = config
        self.host = config.host
        self.keys = Keys(config.cluster)
        self.store = store or EtcdStore.from_config(config.etcd)
        self.lease = LeaseKeeper(self.store, config.timing.lease_ttl,
                                 interval=min(config.timing.heartbeat_interval, config.timing.lease_ttl / 3))
        self.election = Election(self.store, self.keys, self.host, self.lease)
        self.leader_work = leader_work
        self.facts = facts
        self.hypervisor = hypervisor
        self.fencer = fencer
        self.cache: PrefixCache | None = None
        self.vms: Any = None
        self.leader: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_report: dict[str, Any] | None = None
        self._last_report_at = 0.0
        self.collector: InventoryCollector | None = None
        if hypervisor is not None:
            # Sampled at least every 5 s: the smoothing needs a few readings per time constant.
            self.collector = InventoryCollector(hypervisor, config.tags, interval=min(config.timing.report_interval, 5.0),
                                                smoothing=config.agent.load_smoothing,
                                                vms_only=config.agent.load_source == "vms")
        self._leader_watch: ResumingWatch | None = None
        self.lease.subscribe(self._on_lease_event)
        self.election.on_change(self._on_leadership)
        # Every grant stamps hosts/<h>/lease (its revision is the grant's, known after the lease
        # is gone) and deletes a clean-stop record, in the transaction that puts the alive key.
        self.lease.on_grant(lambda lease_id: [
            Put(self.keys.host_lease(self.host), json.dumps({"lease": lease_id, "at": round(time.time(), 3)})),
            Delete(self.keys.host_stopped(self.host))])
        # systemd's notify protocol (Type=notify, WatchdogSec): without NOTIFY_SOCKET it sends nothing.
        self.systemd = systemd if systemd is not None else SystemdNotifier()
        self._ready = False
        self.notifier: Notifier | None = None
        if config.notify is not None:
            # Every agent delivers what its own queue holds (a former leader's events go out after
            # a restart); only the leader queues new ones.
            self.notifier = Notifier(config.notify, config.cluster, self.host)
        self.watchdog = watchdog
        if self.watchdog is None and config.agent.watchdog and config.agent.watchdog_device:
            # A device that took a timeout below lease_ttl would reset a host whose lease is alive.
            self.watchdog = Watchdog(config.agent.watchdog_device, int(config.agent.self_fence_timeout),
                                     minimum=config.timing.lease_ttl, allow_write_only=watchdog_write_only)
        if self.watchdog is not None:
            self.lease.on_alive(self.watchdog.feed)  # fed from the heartbeat, only while it renews

    # -- wiring -----------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if not self.lease.lease_id:
            # Still waiting for the first grant (etcd down at start): that loop watches only the
            # lease's own stop, so without this a SIGTERM waits for etcd or for SIGKILL.
            self.lease.stop(revoke=False)

    def _on_lease_event(self, event: LeaseEvent) -> None:
        if event.kind in ("lease_lost", "reconnected"):
            self._last_report = None  # re-publish: the world may have moved on while we were away
            self._wake.set()

    def _on_leadership(self, old: Leadership | None, new: Leadership | None) -> None:
        self._wake.set()

    # watch handler for the leader key: wake the loop when leadership may be up for grabs
    def on_events(self, events: list[WatchEvent]) -> None:
        if any(e.key == self.keys.leader for e in events):
            self._wake.set()

    def on_resync(self, kvs: Any, revision: int) -> None:
        self._wake.set()

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Raises WatchdogError (after a clean stop) when the watchdog cannot be armed as configured,
        StoreAccessDenied when etcd refuses our certificate or role at the first grant."""
        metrics.serve(self.config.metrics_listen)
        if self.notifier is not None:
            self.notifier.start()
        self.systemd.notify("STATUS=waiting for an etcd lease")
        log.info("agent_starting", host=self.host, cluster=self.config.cluster, version=__version__,
                 endpoints=[str(e) for e in self.config.etcd.endpoints])
        self.lease.attach(self.keys.host_alive(self.host),
                          json.dumps({"host": self.host, "pid": os.getpid(), "version": __version__}))
        self.lease.start()
        if self._stop.is_set():
            return self._shutdown()
        if self.watchdog is not None:
            self._arm_watchdog(self.watchdog)
        self._start_leader_watch()
        self._start_cache()
        log.info("agent_started", host=self.host, lease=self.lease.lease_id,
                 hypervisor=getattr(self.hypervisor, "uri", None))
        # Round at least twice per systemd watchdog period, even with a long heartbeat_interval.
        interval = min(self.config.timing.heartbeat_interval, _watchdog_period() / 2)
        while not self._stop.is_set():
            self._wake.clear()
            self.tick()
            self._tell_systemd()
            self._wake.wait(interval)
        return self._shutdown()

    def _tell_systemd(self) -> None:
        """READY once the first round has heartbeated and joined the election; then a watchdog
        ping every round, so a loop that hangs gets the agent restarted (WatchdogSec)."""
        if not self._ready and self.lease.alive:
            self._ready = True
            lead = self.election.leadership
            self.systemd.notify(f"READY=1\nSTATUS={'leader, epoch ' + str(lead.epoch) if lead else 'following'}")
        self.systemd.notify("WATCHDOG=1")

    def _arm_watchdog(self, watchdog: Watchdog) -> None:
        """Arm only now that we hold a lease, before any VM is looked at.

        NOTE: opening the device restarts its countdown. Armed before the first grant, an agent
        that crashed and was restarted (Restart=always) would keep resetting the timer of a host
        with no lease while its VMs ran on, and the leader would restart them elsewhere, trusting
        the last report's self_fence. Here the old countdown runs on until we hold a lease again.
        """
        try:
            watchdog.arm()
        except WatchdogError:
            # Refuse as a clean stop would: the grant just deleted any clean-stop record, and
            # without one the leader would fence a host whose agent merely refused to run.
            self._shutdown()
            raise

    def _start_leader_watch(self) -> None:
        while not self._stop.is_set():
            try:
                start = self.store.revision(self.keys.leader) + 1
                self._leader_watch = ResumingWatch(self.store, self.keys.leader, self, start).start()
                return
            except StoreError as exc:
                log.warning("leader_watch_failed", error=str(exc))
                self._stop.wait(1)

    def _on_change(self, events: list) -> None:
        """A change in the cluster's keys wakes the loop, unless it is only migration progress."""
        if not all(progress_only(e, self.keys) for e in events):
            self._wake.set()

    def _start_cache(self) -> None:
        """The watch-fed copy of the cluster's keys, and the shells that read it."""
        from haagent.agent.core import AgentConfig
        from haagent.manager.placer import policy_mover, policy_placer, policy_rebalancer
        from haagent.manager.shell import LeaderLoop, manager_config

        while not self._stop.is_set():
            try:
                self.cache = PrefixCache(self.store, self.keys.root, on_change=self._on_change).start()
                break
            except StoreError as exc:
                log.warning("cache_start_failed", error=str(exc))
                self._stop.wait(1)
        if self.cache is None:
            return
        if self.collector is not None:
            self.collector.start()
        if self.hypervisor is not None:
            from haagent.agent.vms import VmShell
            from haagent.hypervisor.port import MigrationTarget

            from haagent.hypervisor.options import MigrationOptions

            a, mig = self.config.agent, self.config.migration
            self.vms = VmShell(self.host, self.hypervisor, self.store, self.keys, self.lease, self.cache,
                               AgentConfig(a.max_restart, a.restart_window, a.watchdog, a.self_fence_timeout),
                               wake=self._wake.set,
                               migration_target=lambda host: MigrationTarget(mig.target_uri(host)),
                               # the rest of the tuning comes resolved in each order (MigrationSection.tuning)
                               migration_options=MigrationOptions(tls=mig.tls),
                               disks=(a.image_dirs, a.block_device_dirs, a.network_disk_protocols,
                                      a.metadata_namespaces),
                               shared_paths=a.shared_paths)
        if self.leader_work is None:
            self.leader = LeaderLoop(self.keys, self.election, self.cache, manager_config(self.config),
                                     self.fencer or _no_fencing(), policy_placer(self.config.policy),
                                     wake=self._wake.set,
                                     notify=self.notifier.publish if self.notifier is not None else None,
                                     memo=self.vms.views.memo if self.vms is not None else None,
                                     mover=policy_mover(self.config.policy),
                                     rebalancer=policy_rebalancer(self.config.policy))

    def tick(self) -> None:
        """One round: keep leadership honest, campaign if free, run VMs, report, lead."""
        if self.vms is not None:
            try:
                self.vms.reconcile()
            except Exception:  # libvirt down, a bad spec: log, keep heartbeating
                log.exception("vm_reconcile_failed")
        try:
            if self.election.is_leader and not self.lease.alive:
                # By our own clock the lease may have expired on the server while we were cut
                # off: act as if it did (another agent may already lead).
                self.election.step_down("lease may have expired while isolated")
            if not self.election.is_leader and self.lease.alive:
                if self.election.try_acquire():
                    self._announce()
            self.publish_report()
            if self.election.is_leader and self.leader_work is not None:
                self.leader_work(self)
            elif self.leader is not None:
                self.leader.tick()
        except NotLeader as exc:
            log.warning("stepped_down", reason=str(exc))
        except StoreError as exc:
            log.warning("agent_tick_failed", error=str(exc))
        except Exception:  # a bug or a record nobody foresaw: log it, keep heartbeating and leading
            log.exception("agent_tick_crashed")
            metrics.TICK_ERRORS.inc()

    def _announce(self) -> None:
        lead = self.election.leadership
        if lead is None:
            return
        self.election.guarded([Put(self.keys.leader_info, json.dumps(
            {"host": self.host, "epoch": lead.epoch, "since": time.time(), "version": __version__}))])

    def publish_report(self) -> None:
        """Write hosts/<h>/report only on a meaningful change (etcd writes cost every watcher;
        ``haagent.agent.inventory.worth_writing`` says what counts)."""
        now = time.monotonic()
        running = sorted(self.vms.running) if self.vms is not None else []
        unmanaged = list(self.vms.unmanaged) if self.vms is not None else []
        facts = self.facts()
        inventory = (self.collector.latest(facts) if self.collector is not None
                     else {**facts, "tags": sorted(set(self.config.tags))})
        self_fence = (self.watchdog.report(int(self.config.agent.self_fence_timeout))
                      if self.watchdog is not None else None)
        report = {"host": self.host, "version": __version__, **inventory,
                  "running_vms": running, "reported_at": round(time.time(), 3), "self_fence": self_fence}
        if unmanaged:
            report["unmanaged_vms"] = unmanaged
        if not worth_writing(self._last_report, report, now - self._last_report_at,
                             self.config.timing.report_interval):
            return
        metrics.record_host_load(report)
        self.store.put(self.keys.host_report(self.host), json.dumps(report, sort_keys=True))
        metrics.REPORT_WRITES.inc()
        self._last_report, self._last_report_at = report, now

    def _record_clean_stop(self) -> bool:
        """shutdown_policy freeze: say so while the lease lives, so the leader does not fence us.
        False when the leader could not be told (it will treat this host as failed)."""
        if not self.lease.lease_id:
            return False
        record = json.dumps({"policy": self.config.agent.shutdown_policy, "lease": self.lease.lease_id,
                             "at": round(time.time(), 3), "pid": os.getpid()})
        try:
            written = self.store.txn([Compare(self.keys.host_alive(self.host), "version", ">", 0)],
                                     [Put(self.keys.host_stopped(self.host), record)]).succeeded
        except StoreError as exc:
            log.warning("clean_stop_not_recorded", error=str(exc))
            return False
        if written:
            log.info("clean_stop_recorded", policy=self.config.agent.shutdown_policy)
        else:
            log.warning("clean_stop_not_recorded", error="the lease was already gone")
        return written

    def _shutdown(self) -> int:
        log.info("agent_stopping", host=self.host)
        self.systemd.notify("STOPPING=1")
        recorded = self._record_clean_stop()
        if self.watchdog is not None:
            if recorded or not self.watchdog.armed:
                self.watchdog.disarm()
            else:
                # The leader was not told of this stop: with the lease gone it presumes this host
                # has reset itself (the report said it self-fences) and restarts its VMs elsewhere.
                # Disarming now would leave them running here as well, so the reset must happen.
                log.critical("clean_stop_unrecorded_host_will_reset", host=self.host,
                             why="etcd did not take the clean-stop record; the leader will recover this "
                                 "host's VMs elsewhere once its self-fence time has passed")
                self.watchdog.release()
        if self._leader_watch:
            self._leader_watch.stop()
        if self.cache is not None:
            self.cache.stop()
        if self.leader is not None:
            self.leader.close()
        if self.vms is not None:
            self.vms.close()
        if self.collector is not None:
            self.collector.stop()
        if self.notifier is not None:
            self.notifier.stop()  # what is still queued stays on disk for the next start
        self.election.resign()
        self.lease.stop(revoke=True)
        self.store.close()
        log.info("agent_stopped", host=self.host)
        return 0


def _watchdog_period() -> float:
    """systemd's WatchdogSec for this process, in seconds (infinite when it set none)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return float("inf")
    return int(usec) / 1e6


def _no_fencing() -> Fencer:
    """Without a [fencing] section every fence fails, saying so (recovery then needs an ack)."""
    from fencing.config import FencingConfig
    from fencing.runner import FenceRunner

    return FenceRunner(FencingConfig())


@click.command("agent")
@config_option
@click.option("--watchdog-write-only", is_flag=True, hidden=True,
              help="Testing only: feed a watchdog node that takes no ioctl (a FIFO) by writes; "
                   "it is never reported as a self-fence.")
def agent(config: Config, watchdog_write_only: bool) -> None:
    """Run the agent: heartbeat, campaign for leadership, run VMs, lead when elected."""
    configure(config.log.format, config.log.level)
    hypervisor = None
    if config.libvirt_enabled:
        from haagent.hypervisor.libvirt_impl import LibvirtHypervisor

        hypervisor = LibvirtHypervisor(config.libvirt_uri, shared_paths=config.agent.shared_paths)
    fencer = None
    if config.fencing is not None:
        from fencing.runner import FenceRunner

        # No ack source: in the cluster an operator's ack is a request the leader's core binds
        # to one failover (docs/design.md, "Operator acks"); a manual device only says so.
        fencer = FenceRunner(config.fencing)
    try:
        daemon = AgentDaemon(config, hypervisor=hypervisor, fencer=fencer, watchdog_write_only=watchdog_write_only)
    except ConfigError as exc:  # what check-config cannot see: a queue_dir this process cannot use
        click.echo(f"haagent: refusing to run: {'; '.join(exc.problems)}", err=True)
        sys.exit(2)
    daemon.install_signals()
    try:
        code = daemon.run()
    except WatchdogError as exc:  # refuse to run unprotected: one line, exit 2
        click.echo(f"haagent: refusing to run: {'; '.join(exc.problems)}", err=True)
        code = 2
    except StoreAccessDenied as exc:  # at the first grant: our certificate or role, not the network
        daemon.store.close()
        click.echo(f"haagent: refusing to run: {exc}", err=True)
        code = 2
    if hypervisor is not None:
        hypervisor.close()
    sys.exit(code)
