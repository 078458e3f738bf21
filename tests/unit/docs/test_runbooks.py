"""Runbooks match the code: one page per alert, named after it, and every `haagent ...` command a
page shows parses (with --help) against the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from haagent.cli import main

ROOT = Path(__file__).resolve().parents[3]
RUNBOOKS = ROOT / "runbooks"


def leader_alerts() -> set[str]:
    """Every alert name the leader's step can raise (st.alert("name", ...)), the executor's too."""
    src = "".join((ROOT / "haagent" / "manager" / f).read_text() for f in ("core.py", "drain.py"))
    return set(re.findall(r'\.alert\(\s*"([a-z_]+)"', src))


def prometheus_alerts() -> set[str]:
    # HaagentNeedsHuman fires for every leader alert and links runbooks/<its name label>.md
    rules = (ROOT / "deploy" / "prometheus-rules.yml").read_text()
    assert 'runbook: "runbooks/{{ $labels.name }}.md"' in rules
    return set(re.findall(r"- alert: (\w+)", rules)) - {"HaagentNeedsHuman"}


def test_every_alert_has_a_runbook_named_after_it():
    names = leader_alerts() | prometheus_alerts()
    assert {"fence_failed", "fence_inconsistent", "fencing_storm_hold", "agent_stopped", "bad_record"} <= names
    missing = sorted(n for n in names if not (RUNBOOKS / f"{n}.md").is_file())
    assert not missing, f"alerts without runbooks/<name>.md: {missing}"
    assert not [p.name for p in RUNBOOKS.glob("*-*.md")], "runbook names are alert names (underscores)"


def test_links_between_runbooks_resolve():
    for page in RUNBOOKS.glob("*.md"):
        for link in re.findall(r"\(([\w./-]+\.md)\)|runbooks/([\w.-]+\.md)", page.read_text()):
            target = next(x for x in link if x)
            assert (RUNBOOKS / Path(target).name).is_file(), f"{page.name} links to {target}"


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in sorted(RUNBOOKS.glob("*.md")):
        for cmd in re.findall(r"`(haagent [^`]+)`", page.read_text()):
            words = [w for w in shlex.split(cmd)[1:] if w != "..."]
            # the command path: words up to the first option or placeholder (HOST, VM, FILE...)
            path = []
            for w in words:
                if w.startswith("-") or w.isupper():
                    break
                path.append(w)
            found.append((f"{page.name}: {cmd}", path))
    return found


@pytest.mark.parametrize("where,path", commands(), ids=[c[0] for c in commands()])
def test_every_command_a_runbook_shows_exists(where, path):
    res = CliRunner().invoke(main, [*path, "--help"])
    assert res.exit_code == 0, f"{where}: {res.output}"
    words = shlex.split(where.split(": ", 1)[1])
    for opt in (w.split("=")[0] for w in words if w.startswith("--")):
        assert opt in res.output, f"{where}: {opt} is not an option of 'haagent {' '.join(path)}'"
