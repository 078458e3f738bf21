"""deploy/grafana/haagent.json is what haagent/dashboard.py generates, and its queries name
only metrics haagent exports (the lab test evaluates them against a real Prometheus)."""

from __future__ import annotations

import json
import re

import fencing.metrics  # noqa: F401  (registers the fencing metrics in the one registry)
from haagent import dashboard, metrics


def test_the_committed_dashboard_is_current(tmp_path):
    assert dashboard.DASHBOARD_FILE.read_text() == dashboard.render(), \
        "deploy/grafana/haagent.json is out of date: run `python -m haagent.dashboard`"
    stale = tmp_path / "haagent.json"
    stale.write_text(dashboard.render().replace("Fence time by result", "Fence time"))
    assert dashboard.main(["--check", "--output", str(stale)]) == 1
    assert dashboard.main(["--output", str(stale)]) == 0
    assert dashboard.main(["--check", "--output", str(stale)]) == 0


def test_every_row_has_panels_and_every_panel_one_query():
    model = json.loads(dashboard.DASHBOARD_FILE.read_text())
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert rows == list(dashboard.ROWS)
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert len(panels) == len(dashboard.PANELS)
    assert len({p["id"] for p in model["panels"]}) == len(model["panels"])
    for p in panels:
        assert p["description"] and [t["expr"] for t in p["targets"]], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def _exported() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
    # a histogram's series exist once observed; collect() lists them only for unlabelled ones
    for family in metrics.REGISTRY.collect():
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_queries_name_only_metrics_haagent_exports():
    exported = _exported()
    used = {m for p in dashboard.PANELS for m in re.findall(r"\bhaagent_\w+", p.expr)}
    assert "haagent_host_numa_free_bytes" in used
    assert sorted(used - exported) == []


def test_docs_describe_every_panel():
    text = (dashboard.DASHBOARD_FILE.parents[2] / "docs" / "monitoring.md").read_text()
    missing = [p.title for p in dashboard.PANELS if f"**{p.title}**" not in text]
    assert not missing, f"panels without a description in docs/monitoring.md: {missing}"
    assert all(f"### {row}" in text for row in dashboard.ROWS)
