"""The suite's own layout: pytest imports test modules by basename (rootdir on sys.path), so two
test files with one name anywhere under tests/ break collection for the whole run."""

from __future__ import annotations

import collections
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_and_helper_module_names_are_unique():
    names = collections.Counter(p.name for p in TESTS.rglob("*.py") if p.name not in ("conftest.py", "__init__.py"))
    assert not [n for n, c in names.items() if c > 1], "rename one of each pair"


def test_no_test_directory_is_named_like_a_project_package():
    # pytest puts each test file's directory on sys.path: a tests/unit/policies/ directory (no
    # __init__.py) then imports as the namespace package ``policies`` in place of the real one,
    # whenever a module of tests/unit/ is collected before anything imported the real package.
    project = TESTS.parent
    packages = {p.parent.name for p in project.glob("*/__init__.py")}
    assert {"haagent", "fencing", "policies"} <= packages
    clashing = sorted(str(d.relative_to(TESTS)) for d in TESTS.rglob("*") if d.is_dir() and d.name in packages)
    assert not clashing, f"rename: {clashing}"
