"""The Grafana dashboard deploy/grafana/haagent.json, generated from the panels below.

``python -m haagent.dashboard`` rewrites the file; ``--check`` fails when it is out of date. Each
panel is one PromQL query over haagent's own metrics (haagent/metrics.py, fencing/metrics.py) and
Prometheus's ``ALERTS``; docs/monitoring.md describes every panel, and the lab test
(tests/lab/test_monitoring.py) evaluates each query against a real Prometheus scraping a lab.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

DASHBOARD_FILE = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "haagent.json"
UID = "haagent"

# Only the current leader's figures: a demoted agent keeps exporting what it last set.
_LEADER = " * on (instance) group_left () (haagent_is_leader == 1)"


@dataclass(frozen=True)
class PanelSpec:
    """One panel: where it sits, what it shows (a single PromQL query) and how."""

    row: str
    title: str
    description: str
    expr: str
    legend: str = ""
    kind: str = "timeseries"  # timeseries | stat | bargauge
    unit: str = ""
    width: int = 8


ROWS = ("Cluster health", "Failover", "Fencing", "Migrations and drains", "Placement and rebalance", "VMs",
        "Hosts: CPU, memory, NUMA")
MIGRATIONS, PLACEMENT = ROWS[3], ROWS[4]


def _mean(histogram: str, by: str, leader: bool = False) -> str:
    """A histogram's mean by ``by``; no series (not NaN) where nothing was observed yet."""
    only = _LEADER if leader else ""
    return (f"sum by ({by}) ({histogram}_sum{only}) / "
            f"(sum by ({by}) ({histogram}_count{only}) > 0)")

PANELS: tuple[PanelSpec, ...] = (
    # -- cluster health ------------------------------------------------------------------------
    PanelSpec("Cluster health", "Leader", "The agent that holds the leader key now; empty means no "
              "leader, so no failover can happen (alert HaagentNoLeader after 30 s).",
              "max by (instance) (haagent_is_leader) == 1", "{{instance}}", kind="stat", width=6),
    PanelSpec("Cluster health", "Hosts by state", "How many hosts the leader has in each state "
              "(active, suspect, fencing, failed, ...), from the leader's own gauges only.",
              "sum by (state) (haagent_host_state" + _LEADER + ")", "{{state}}", kind="bargauge", width=6),
    PanelSpec("Cluster health", "Alerts firing", "haagent's Prometheus alerts firing now, by name "
              "(deploy/prometheus-rules.yml; each links its runbook).",
              'sum by (alertname) (ALERTS{alertstate="firing", alertname=~"Haagent.*"})', "{{alertname}}",
              kind="stat", width=6),
    PanelSpec("Cluster health", "Agents cut off from etcd", "Agents that reach no etcd quorum "
              "(alert HaagentIsolated after 10 s); 0 in a healthy cluster.",
              "sum(haagent_store_isolated)", "isolated", kind="stat", width=6),
    PanelSpec("Cluster health", "Lease refresh latency (p99)", "99th percentile of each agent's etcd "
              "lease keepalive over 5 minutes; a rise comes before leases expire.",
              "histogram_quantile(0.99, sum by (le, instance) (rate(haagent_lease_refresh_seconds_bucket[5m])))",
              "{{instance}}", unit="s", width=12),
    PanelSpec("Cluster health", "Leadership changes", "Times each agent gained or lost the leadership "
              "since it started.", "sum by (instance, change) (haagent_leadership_changes_total)",
              "{{instance}} {{change}}", width=12),
    # -- failover -------------------------------------------------------------------------------
    PanelSpec("Failover", "Failover timeline (mean seconds from detection)", "For each failover "
              "phase, the mean time from detecting the host as failed to reaching that phase, over "
              "the failovers the current leader ran: read left to right, it is the timeline.",
              "sum by (phase) (haagent_failover_phase_seconds_sum" + _LEADER + ") / "
              "sum by (phase) (haagent_failover_phase_seconds_count" + _LEADER + ")",
              "{{phase}}", kind="bargauge", unit="s", width=12),
    PanelSpec("Failover", "Failovers by how the host was confirmed fenced", "Host failovers the "
              "current leader ran, by how it knew the host was off (fenced, self-fenced, operator).",
              "sum by (how) (haagent_failovers_total" + _LEADER + ")", "{{how}}", kind="stat", width=12),
    # -- fencing --------------------------------------------------------------------------------
    PanelSpec("Fencing", "Fence time by result", "Mean seconds to fence a host, all levels "
              "included, by result (confirmed_off, failed, ...).",
              "sum by (result) (haagent_fence_seconds_sum) / sum by (result) (haagent_fence_seconds_count)",
              "{{result}}", kind="bargauge", unit="s"),
    PanelSpec("Fencing", "Fence results by device", "Device fence operations since each agent "
              "started, by device and result; anything but confirmed_off deserves a look.",
              "sum by (device, result) (haagent_fence_device_results_total)", "{{device}} {{result}}",
              kind="bargauge"),
    PanelSpec("Fencing", "Fence latency by device", "Mean seconds one device took to confirm the "
              "host off (or give up), by device and result.",
              "sum by (device, result) (haagent_fence_device_seconds_sum) / "
              "sum by (device, result) (haagent_fence_device_seconds_count)", "{{device}} {{result}}",
              kind="bargauge", unit="s"),
    PanelSpec("Fencing", "Fence path check by device", "1 while the leader's periodic status check "
              "([fencing] check_interval) finds a host's fence device not answering "
              "(alert HaagentFencePathBroken).",
              "max by (host, device) (haagent_fence_path_broken)", "{{host}} {{device}}"),
    PanelSpec("Fencing", "Fence call latency (p95)", "95th percentile of one plugin call (status or "
              "set_power) over 15 minutes, by plugin and call: the periodic check keeps it fed.",
              "histogram_quantile(0.95, sum by (le, plugin, call) (rate(haagent_fence_call_seconds_bucket[15m])))",
              "{{plugin}} {{call}}", unit="s", width=12),
    PanelSpec("Fencing", "Since the last fence path check", "Seconds since the leader last "
              "completed the fence path check; it should stay below check_interval.",
              "time() - max(haagent_fence_check_last_run_timestamp_seconds)", "age", kind="stat",
              unit="s", width=12),
    # -- migrations and drains --------------------------------------------------------------------
    PanelSpec(MIGRATIONS, "Migrations by kind and result", "Live migrations the current leader "
              "settled, by the operation that ordered them (drain, migrate, return, rebalance) and "
              "result (completed, failed, aborted-deadline, aborted-request, interrupted).",
              "sum by (kind, result) (haagent_migrations_total" + _LEADER + ")", "{{kind}} {{result}}",
              kind="bargauge"),
    PanelSpec(MIGRATIONS, "Migrations in flight", "Live migrations ordered and not settled yet; "
              "[migration] max_cluster bounds it.",
              "max(haagent_migrations_in_flight" + _LEADER + ")", "in flight"),
    PanelSpec(MIGRATIONS, "Drains in progress", "Host drains open now; a paused one raises "
              "drain_paused (HaagentNeedsHuman).",
              "max(haagent_drains_in_progress" + _LEADER + ")", "drains", kind="stat"),
    PanelSpec(MIGRATIONS, "Migration time by outcome", "Mean seconds a live migration took on its "
              "source agent, from start to outcome, by outcome.",
              _mean("haagent_migration_seconds", "outcome"), "{{outcome}}", kind="bargauge",
              unit="s"),
    PanelSpec(MIGRATIONS, "Guest downtime per migration", "Mean pause of the guest in a completed "
              "live migration, as libvirt reported it, by source agent.",
              _mean("haagent_migration_downtime_seconds", "instance"), "{{instance}}",
              kind="bargauge", unit="s"),
    PanelSpec(MIGRATIONS, "Data moved per migration", "Mean bytes a completed live migration "
              "transferred, as libvirt reported it, by source agent.",
              _mean("haagent_migration_bytes", "instance"), "{{instance}}", kind="bargauge",
              unit="bytes"),
    PanelSpec(MIGRATIONS, "VMs left to drain", "VMs still placed on each host being drained; a "
              "host stays at 0 once drained (until the leader restarts).",
              "max by (host) (haagent_drain_vms_left" + _LEADER + ")", "{{host}}", width=24),
    # -- placement and rebalance ----------------------------------------------------------------
    PanelSpec(PLACEMENT, "Placements by reason", "Placements the current leader wrote, by reason: "
              "failover, drain, migrate, return, rebalance, relocate, adopted, followed (a VM "
              "moved by hand), interrupted_migration.",
              "sum by (reason) (haagent_placements_total" + _LEADER + ")", "{{reason}}", kind="bargauge"),
    PanelSpec(PLACEMENT, "Placement decision time", "Mean seconds one placement decision took on "
              "the current leader: place (VMs to start) and move (live migration targets).",
              _mean("haagent_placement_seconds", "decision", leader=True), "{{decision}}",
              kind="bargauge", unit="s"),
    PanelSpec(PLACEMENT, "Imbalance score", "The rebalance planner's imbalance score of the cluster "
              "(lower is better; docs/placement.md): what a rebalance round would start from.",
              "max(haagent_rebalance_score" + _LEADER + ")", "score"),
    PanelSpec(PLACEMENT, "Rebalance moves by mode", "VM moves rebalance rounds proposed (advise) "
              "or started (auto).",
              "sum by (mode) (haagent_rebalance_moves_total" + _LEADER + ")", "{{mode}}", kind="bargauge",
              width=12),
    PanelSpec(PLACEMENT, "Rebalance rounds by result", "Rebalance rounds by result: planned (moves "
              "found), quiet (nothing worth moving) or skipped (the round did not run).",
              "sum by (result) (haagent_rebalance_rounds_total" + _LEADER + ")", "{{result}}",
              kind="bargauge", width=12),
    # -- VMs ------------------------------------------------------------------------------------
    PanelSpec("VMs", "VM starts and stops by agents", "VM starts and stops the agents made (a "
              "failover restarts VMs through them), by action and result, since each agent started.",
              "sum by (instance, action, result) (haagent_vm_actions_total)",
              "{{instance}} {{action}} {{result}}", width=24),
    # -- hosts ----------------------------------------------------------------------------------
    PanelSpec("Hosts: CPU, memory, NUMA", "CPU in use", "Each host's CPU in use, in cores, "
              "smoothed as the agent reports it to placement.", "haagent_host_cpu_used_cores",
              "{{instance}}", unit="none"),
    PanelSpec("Hosts: CPU, memory, NUMA", "Memory in use", "Each host's memory in use, smoothed as "
              "the agent reports it to placement.", "haagent_host_memory_used_bytes", "{{instance}}",
              unit="bytes"),
    PanelSpec("Hosts: CPU, memory, NUMA", "NUMA cell use", "Share of each NUMA cell's memory in "
              "use, per host and cell: strict-NUMA VMs need room in one cell, not on the host.",
              "1 - haagent_host_numa_free_bytes / haagent_host_numa_memory_bytes",
              "{{instance}} cell {{cell}}", unit="percentunit"),
)


def build() -> dict:
    """The dashboard as Grafana's JSON model (a dict)."""
    # Imported here: only generating the dashboard needs the SDK (the test extra installs it).
    from grafana_foundation_sdk.builders import bargauge, stat, timeseries
    from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
    from grafana_foundation_sdk.builders.prometheus import Dataquery
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    kinds = {"timeseries": timeseries.Panel, "stat": stat.Panel, "bargauge": bargauge.Panel}
    source = DataSourceRef(type_val="prometheus", uid="${datasource}")
    dash = (Dashboard("haagent").uid(UID).tags(["haagent", "ha", "kvm"]).refresh("30s")
            .time("now-6h", "now").timezone("browser")
            .description("haagent: leader, host states, failovers, fencing, migrations and drains, "
                         "placement and rebalance, VMs and host use "
                         "(generated by haagent/dashboard.py; docs/monitoring.md)")
            .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    panel_id = 1
    for row in ROWS:
        dash = dash.with_row(Row(row).id(panel_id))
        panel_id += 1
        for p in (p for p in PANELS if p.row == row):
            panel = (kinds[p.kind]().id(panel_id).title(p.title).description(p.description)
                     .datasource(source).height(8).span(p.width)
                     .with_target(Dataquery().expr(p.expr).legend_format(p.legend or "__auto").ref_id("A")))
            if p.unit:
                panel = panel.unit(p.unit)
            dash = dash.with_panel(panel)
            panel_id += 1
    return dash.build()


def render() -> str:
    """The file's text: stable key order and indentation, so regenerating gives the same bytes."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m haagent.dashboard", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from what the code generates")
    ap.add_argument("--output", type=Path, default=DASHBOARD_FILE, help="where the dashboard goes")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output}: out of date; run `python -m haagent.dashboard`", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(PANELS)} panels in {len(ROWS)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
