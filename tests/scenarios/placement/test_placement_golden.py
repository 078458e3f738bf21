"""Golden placement scenarios: each directory holds README (one line), cluster.json, command
(the ``haagent plan`` arguments) and expected.json (its --json output, plus the exit code).

A changed golden is a behaviour change a reviewer reads. Regenerate with
``PLACEMENT_GOLDEN_UPDATE=1 .venv/bin/python -m pytest tests/scenarios/placement``.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from policies.cli import plan

HERE = Path(__file__).parent
SCENARIOS = sorted(p.name for p in HERE.iterdir() if (p / "command").exists())


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(name):
    d = HERE / name
    assert (d / "README").read_text().strip(), "each scenario says what it shows"
    args = shlex.split((d / "command").read_text()) + ["--cluster", str(d / "cluster.json"), "--json"]
    result = CliRunner().invoke(plan, args, catch_exceptions=False)
    got = {"exit_code": result.exit_code, "output": json.loads(result.output)}
    expected_path = d / "expected.json"
    if os.environ.get("PLACEMENT_GOLDEN_UPDATE"):
        expected_path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(expected_path.read_text())


def test_there_are_scenarios():
    assert len(SCENARIOS) >= 6
