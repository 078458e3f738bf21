"""Every failover scenario of the corpus: its run keeps the invariants and matches its golden log."""

from __future__ import annotations

import difflib

import pytest

from haagent.sim.scenario import CORPUS, corpus, run_dir

NAMES = corpus()


def test_corpus_has_the_scenarios_the_issue_lists():
    assert len(NAMES) >= 25
    for d in NAMES:
        readme = (CORPUS / d / "README").read_text().strip()
        assert readme and "\n" not in readme, f"{d}/README must be one line"


@pytest.mark.parametrize("name", NAMES)
def test_scenario(name: str) -> None:
    out = run_dir(CORPUS / name)
    assert not out.violations, f"{name}: safety invariant violated: {out.violations}"
    want = (CORPUS / name / "log.expect").read_text()
    if out.text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), out.text.splitlines(True),
                                            "log.expect", "this run"))
        pytest.fail(f"{name}: the simulator's log differs from the golden (a behaviour change: review it,\n"
                    f"then `haagent sim scenario {name} --update` if it is intended):\n{diff}")
