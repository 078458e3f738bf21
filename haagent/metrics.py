"""The process's prometheus-client registry, and the HTTP server that serves it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

# -- store / election --------------------------------------------------------------------------
IS_LEADER = Gauge("haagent_is_leader", "1 while this agent is the cluster leader", registry=REGISTRY)
LEADER_EPOCH = Gauge("haagent_leader_epoch", "Epoch (create_revision of the leader key) this agent leads with, 0 if not leader", registry=REGISTRY)
LEADERSHIP_CHANGES = Counter("haagent_leadership_changes_total", "Times this agent gained or lost leadership", ["change"], registry=REGISTRY)
LEASE_REFRESH_SECONDS = Histogram("haagent_lease_refresh_seconds", "Latency of lease keepalive refreshes", registry=REGISTRY,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
LEASE_LOST = Counter("haagent_lease_lost_total", "Times this agent's lease expired and was re-granted", registry=REGISTRY)
STORE_ISOLATED = Gauge("haagent_store_isolated", "1 while no etcd endpoint with quorum answers", registry=REGISTRY)
STORE_ERRORS = Counter("haagent_store_errors_total", "etcd calls that failed, by kind", ["kind"], registry=REGISTRY)


def serve(listen: str | None) -> None:
    """Serve /metrics on ``HOST:PORT`` in a daemon thread (no-op when listen is empty)."""
    if not listen:
        return
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=REGISTRY)

# -- failover ----------------------------------------------------------------------------------
ALERT = Gauge("haagent_alert", "1 while a condition needs a human (see runbooks/)", ["name", "host", "vm"], registry=REGISTRY)
HOST_STATE = Gauge("haagent_host_state", "1 for the state each host is in (leader only)", ["host", "state"], registry=REGISTRY)
FAILOVERS = Counter("haagent_failovers_total", "Host failovers, by how the host was confirmed fenced", ["how"], registry=REGISTRY)
FAILOVER_PHASE_SECONDS = Histogram("haagent_failover_phase_seconds", "Seconds from detection to each failover phase",
                                   ["phase"], registry=REGISTRY, buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300))
REPORT_WRITES = Counter("haagent_report_writes_total", "Writes of this host's report to etcd (only on a meaningful change)", registry=REGISTRY)
HOST_CPU_USED = Gauge("haagent_host_cpu_used_cores", "This host's CPU in use, cores, smoothed over a minute", registry=REGISTRY)
HOST_MEMORY_USED = Gauge("haagent_host_memory_used_bytes", "This host's memory in use, smoothed over a minute", registry=REGISTRY)
HOST_NUMA_MEMORY = Gauge("haagent_host_numa_memory_bytes", "Size of each of this host's NUMA cells, as last reported",
                         ["cell"], registry=REGISTRY)
HOST_NUMA_FREE = Gauge("haagent_host_numa_free_bytes", "Free memory in each of this host's NUMA cells, as last reported",
                       ["cell"], registry=REGISTRY)
TICK_ERRORS = Counter("haagent_tick_errors_total", "Agent loop rounds that failed on an unexpected error (logged with a traceback)", registry=REGISTRY)
VM_SPECS_REJECTED = Counter("haagent_vm_specs_rejected_total", "Domain specs from etcd refused by the allowlist, by rule", ["rule"], registry=REGISTRY)
VM_ACTIONS = Counter("haagent_vm_actions_total", "VM starts and stops by the agent", ["action", "result"], registry=REGISTRY)

# -- live migrations and drains -----------------------------------------------------------------
# Agent side: each migration this host ran as the source, from its MigrationResult.
MIGRATION_SECONDS = Histogram("haagent_migration_seconds", "Live migrations this host ran as the source: seconds from start to outcome",
                              ["outcome"], registry=REGISTRY, buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
MIGRATION_DOWNTIME_SECONDS = Histogram("haagent_migration_downtime_seconds", "Guest downtime of each completed live migration, as libvirt reported it",
                                       registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
MIGRATION_BYTES = Histogram("haagent_migration_bytes", "Data each completed live migration transferred, as libvirt reported it",
                            registry=REGISTRY, buckets=tuple(2.0**k for k in range(24, 40, 2)))  # 16 MiB .. 256 GiB
# Leader side: from what the migration executor's steps commit.
MIGRATIONS = Counter("haagent_migrations_total", "Live migrations the leader settled, by the operation's kind (drain, migrate, return, "
                     "rebalance) and result (completed, failed, aborted-deadline, aborted-request, interrupted)",
                     ["kind", "result"], registry=REGISTRY)
MIGRATIONS_IN_FLIGHT = Gauge("haagent_migrations_in_flight", "Live migrations ordered and not settled yet (leader only)", registry=REGISTRY)
DRAINS_IN_PROGRESS = Gauge("haagent_drains_in_progress", "Drain operations open now (leader only)", registry=REGISTRY)
DRAIN_VMS_LEFT = Gauge("haagent_drain_vms_left", "VMs still placed on each host being drained; 0 once drained (leader only)",
                       ["host"], registry=REGISTRY)

# -- placement and rebalance ----------------------------------------------------------------------
PLACEMENTS = Counter("haagent_placements_total", "Placements the leader wrote, by reason (failover, drain, migrate, return, rebalance, "
                     "relocate, adopted, followed, interrupted_migration, other)", ["reason"], registry=REGISTRY)
PLACEMENT_SECONDS = Histogram("haagent_placement_seconds", "Time one placement decision took (place: VMs to start; move: live migration targets)",
                              ["decision"], registry=REGISTRY, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
REBALANCE_SCORE = Gauge("haagent_rebalance_score", "The cluster's imbalance score at the last rebalance round (leader only)", registry=REGISTRY)
REBALANCE_MOVES = Counter("haagent_rebalance_moves_total", "VM moves a rebalance round proposed (advise) or started (auto)", ["mode"], registry=REGISTRY)
REBALANCE_ROUNDS = Counter("haagent_rebalance_rounds_total", "Rebalance rounds by result (planned, quiet, skipped)", ["result"], registry=REGISTRY)
for _mode in ("advise", "auto"):  # exported as 0 from the start: "no move yet" is a figure too
    REBALANCE_MOVES.labels(mode=_mode)
for _result in ("planned", "quiet", "skipped"):
    REBALANCE_ROUNDS.labels(result=_result)

# -- events out (webhooks) -----------------------------------------------------------------------
NOTIFY_QUEUED = Gauge("haagent_notify_queued", "Events waiting in this agent's webhook queue", registry=REGISTRY)
NOTIFY_DELIVERED = Counter("haagent_notify_delivered_total", "Events the webhook receiver accepted (2xx)", registry=REGISTRY)
NOTIFY_FAILURES = Counter("haagent_notify_failures_total", "Webhook POSTs that failed and will be retried", registry=REGISTRY)
NOTIFY_DROPPED = Counter("haagent_notify_dropped_total", "Undelivered events dropped because the queue was full", registry=REGISTRY)


def record_host_load(report: dict) -> None:
    """Set the per-host gauges from a report as the agent writes it (``load`` and ``numa`` parts)."""
    load = report.get("load") or {}
    if load.get("cpu") is not None:
        HOST_CPU_USED.set(load["cpu"])
    if load.get("memory_used_mib") is not None:
        HOST_MEMORY_USED.set(load["memory_used_mib"] * 2**20)
    for cell in report.get("numa") or ():
        if cell.get("memory_mib") is not None and cell.get("free_mib") is not None:
            HOST_NUMA_MEMORY.labels(cell=str(cell["id"])).set(cell["memory_mib"] * 2**20)
            HOST_NUMA_FREE.labels(cell=str(cell["id"])).set(cell["free_mib"] * 2**20)


def record_migration(report) -> None:
    """The source agent's figures of one finished migration (a ``MigrationReport``: outcome,
    duration_s, downtime_ms, data_total; libvirt's figures are None when it gave none)."""
    MIGRATION_SECONDS.labels(outcome=report.outcome).observe(max(0.0, report.duration_s))
    if report.outcome != "completed":
        return
    if report.downtime_ms is not None:
        MIGRATION_DOWNTIME_SECONDS.observe(report.downtime_ms / 1000)
    if report.data_total is not None:
        MIGRATION_BYTES.observe(report.data_total)
