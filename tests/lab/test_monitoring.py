"""The lab's real Prometheus and Alertmanager (`lab up --monitoring`): a broken fence path raises
HaagentFencePathBroken in Prometheus and reaches Alertmanager within the bound, and after a real
drain (live migrations) and a real failover every panel of deploy/grafana/haagent.json returns
data."""

from __future__ import annotations

import os
import time

import pytest
from click.testing import CliRunner

from haagent import dashboard
from haagent.cli import main
from haagent.lab import layout as L
from haagent.lab.cli import lab as lab_cli
from haagent.lab.lab import Lab
from lab_helpers import eventually

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ALERT = "HaagentFencePathBroken"
# The leader checks every path each FENCE_CHECK_INTERVAL; Prometheus then needs one scrape and
# one evaluation. The slack covers the status call against the failing BMC (pyghmi can stall
# ~1 s) and this test's own polling on a shared machine.
ALERT_BOUND = L.FENCE_CHECK_INTERVAL + L.SCRAPE_INTERVAL + L.EVALUATION_INTERVAL + 3


@pytest.fixture(scope="module")
def mon_lab():
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (namespaces, libvirtd, etcd); CI runs them as root")
    with Lab("lmon").running(3, 3, monitoring=True) as lab:
        yield lab


def leader(lab: Lab) -> str:
    found = eventually(lambda: lab.query("haagent_is_leader == 1"), 30, 0.5, "a leader scraped")
    return found[0]["metric"]["agent"]  # type: ignore[index]


def in_alertmanager(lab: Lab, host: str) -> list[dict]:
    return [a for a in lab.monitoring_get(L.alertmanager_url("/api/v2/alerts"))
            if a["labels"].get("alertname") == ALERT and a["labels"].get("host") == host]


def test_broken_fence_path_alerts_in_prometheus_and_alertmanager(mon_lab: Lab) -> None:
    lead = leader(mon_lab)
    victim = next(h for h in mon_lab.hosts() if h != lead)
    # the leader has checked once already: every path answers, nothing fires
    eventually(lambda: mon_lab.query(f'haagent_fence_path_broken{{host="{victim}"}} == 0'), 30, 0.5,
               "a first fence path check")
    assert not mon_lab.query(f'ALERTS{{alertname="{ALERT}"}}')

    t0 = time.monotonic()
    mon_lab.bmc(victim, "fail")
    firing = eventually(lambda: mon_lab.query(f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}'),
                        ALERT_BOUND, 0.2, f"{ALERT} firing in Prometheus")
    in_prometheus = time.monotonic() - t0
    delivered = eventually(lambda: in_alertmanager(mon_lab, victim), ALERT_BOUND - in_prometheus + 1, 0.2,
                           f"{ALERT} in Alertmanager")
    in_am = time.monotonic() - t0
    assert [s["metric"]["host"] for s in firing] == [victim]  # type: ignore[index]
    alert = delivered[0]  # type: ignore[index]
    assert alert["status"]["state"] == "active"
    assert alert["labels"]["device"] == f"ipmi-{victim}" and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook"] == f"runbooks/{ALERT}.md"
    assert in_am <= ALERT_BOUND, f"alert reached Alertmanager after {in_am:.1f}s (bound {ALERT_BOUND}s)"
    print(f"\n{ALERT}: firing in Prometheus {in_prometheus:.1f}s, in Alertmanager {in_am:.1f}s after `bmc fail`")

    # the CLI's view from inside the lab shows the same
    out = CliRunner().invoke(lab_cli, ["query", "--prefix", mon_lab.prefix, f'ALERTS{{alertname="{ALERT}"}}'])
    assert out.exit_code == 0 and f'host="{victim}"' in out.output, out.output


def test_every_dashboard_panel_returns_data_after_a_drain_and_a_failover(mon_lab: Lab) -> None:
    lead = leader(mon_lab)
    # one host keeps a broken fence path (the alert panel) and is drained (the migration panels:
    # the lab spreads its VMs, one per host here); another one crashes and fails over
    broken = next(h for h in mon_lab.hosts() if h != lead)
    crashed = next(h for h in mon_lab.hosts() if h not in (lead, broken))
    mon_lab.bmc(broken, "fail")
    assert mon_lab.running_vms(broken), f"no VM runs on {broken}: its drain would migrate nothing"
    # a rebalance round on request (the scheduled ones wait an interval): the score and rounds panels
    res = CliRunner().invoke(main, ["rebalance", "run", "--config", str(mon_lab.layout.operator_config)])
    assert res.exit_code == 0, res.output
    eventually(lambda: mon_lab.query('haagent_rebalance_rounds_total{result=~"planned|quiet"} > 0'), 30, 0.5,
               "a rebalance round counted")
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["host", "drain", broken, "--config", str(mon_lab.layout.operator_config)])
    assert res.exit_code == 0, res.output
    eventually(lambda: mon_lab.query(f'haagent_host_state{{host="{broken}", state="maintenance"}} == 1'),
               60, 0.5, f"{broken} drained")
    eventually(lambda: mon_lab.query('haagent_migrations_total{kind="drain", result="completed"}'), 30, 0.5,
               "the drain's migrations counted")
    print(f"\ndrain of {broken} scraped as done {time.monotonic() - t0:.1f}s after `host drain`")
    mon_lab.crash(crashed)
    eventually(lambda: mon_lab.query('haagent_failover_phase_seconds_count{phase="done"}'), 60, 0.5,
               "a finished failover scraped")
    eventually(lambda: mon_lab.query(f'ALERTS{{alertname="{ALERT}", alertstate="firing"}}'), 30, 0.5,
               "the fence path alert")

    def empty_panels() -> list[str]:
        return [p.title for p in dashboard.PANELS if not mon_lab.query(p.expr)]

    # a scrape or two after the failover: every series the panels read is there
    last: list[str] = []

    def all_have_data() -> bool:
        last[:] = empty_panels()
        return not last
    try:
        eventually(all_have_data, 15, 1, "every panel returning data")
    finally:
        assert not last, f"panels without data: {last}"
    panels = {p.title: p for p in dashboard.PANELS}
    by_state = {s["metric"]["state"]: float(s["value"][1]) for s in mon_lab.query(panels["Hosts by state"].expr)}
    assert (by_state.get("failed"), by_state.get("maintenance"), by_state.get("active")) == (1, 1, 1), by_state
    reasons = {s["metric"]["reason"] for s in mon_lab.query(panels["Placements by reason"].expr)}
    assert {"drain", "failover"} <= reasons, reasons
    decisions = {s["metric"]["decision"] for s in mon_lab.query(panels["Placement decision time"].expr)}
    assert decisions == {"place", "move"}, decisions
    left = {s["metric"]["host"]: float(s["value"][1]) for s in mon_lab.query(panels["VMs left to drain"].expr)}
    assert left == {broken: 0}, left
    shown = {t: {next(iter(s["metric"].values()), ""): float(s["value"][1]) for s in mon_lab.query(panels[t].expr)}
             for t in ("Migration time by outcome", "Guest downtime per migration", "Data moved per migration",
                       "Placement decision time", "Imbalance score")}
    print(f"\n{shown}")
