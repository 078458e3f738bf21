"""deploy/prometheus-rules.yml against Prometheus's own checker: syntax, and each alert's unit
tests in deploy/prometheus-rules.test.yml (input series in, expected alerts out)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus-rules.yml"
RULE_TESTS = DEPLOY / "prometheus-rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    # Not skipped when missing: scripts/install-system-deps.sh installs Debian's prometheus.
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/install-system-deps.sh (Debian package prometheus)"
    return subprocess.run([exe, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)


def test_rules_pass_promtool_check():
    res = promtool("check", "rules", RULES.name)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_pass_their_unit_tests():
    res = promtool("test", "rules", RULE_TESTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_is_tested_firing_and_quiet():
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    # each case is "alertname: X" followed by "exp_alerts: []" (quiet) or a list (firing)
    cases = re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts:[ ]*(\[\])?", RULE_TESTS.read_text())
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    assert alerts, "no alert found in deploy/prometheus-rules.yml"
    assert sorted(alerts - firing) == [], "alerts without a case where they fire"
    assert sorted(alerts - quiet) == [], "alerts without a case where they must not fire"


def test_a_broken_rule_makes_the_unit_tests_fail(tmp_path):
    """The unit tests can fail: the same tests against a rule file whose fence alert never fires."""
    (tmp_path / RULES.name).write_text(RULES.read_text().replace(
        "expr: haagent_fence_path_broken == 1", "expr: haagent_fence_path_broken == 2"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    res = subprocess.run([shutil.which("promtool") or "promtool", "test", "rules", RULE_TESTS.name],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "HaagentFencePathBroken" in res.stdout + res.stderr
