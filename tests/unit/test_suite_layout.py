"""The suite's own layout: pytest imports test modules by basename (rootdir on sys.path), so two
test files with one name anywhere under tests/ break collection for the whole run."""

from __future__ import annotations

import collections
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_and_helper_module_names_are_unique():
    names = collections.Counter(p.name for p in TESTS.rglob("*.py") if p.name not in ("conftest.py", "__init__.py"))
    assert not [n for n, c in names.items() if c > 1], "rename one of each pair"
