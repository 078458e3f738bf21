"""docs/security.md matches the code: its etcdctl commands are the ones rbac.etcdctl_commands
gives for its own admin config (an integration test runs them against a real etcd)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from haagent.store.rbac import ROLES, etcdctl_commands

DOC = (Path(__file__).resolve().parents[3] / "docs" / "security.md").read_text()


def _blocks(lang: str) -> list[str]:
    """The fenced blocks whose fence names ``lang`` ("" for bare fences), in order."""
    found, current, fence = [], None, ""
    for line in DOC.splitlines():
        if line.startswith("```"):
            if current is None:
                current, fence = [], line[3:].strip()
            else:
                if fence == lang:
                    found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_etcdctl_commands_are_the_codes():
    [admin] = [b for b in _blocks("toml") if "[etcd.users]" in b]
    config = tomllib.loads(admin)
    [shown] = [b for b in _blocks("") if b.startswith("etcdctl ")]
    assert shown.strip().splitlines() == etcdctl_commands(config["cluster"], config["etcd"]["users"])


def test_every_role_is_in_the_table():
    for role in ROLES:
        assert f"| `{role}` |" in DOC
