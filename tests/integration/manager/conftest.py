"""The operator commands against a real etcd: one config they all read."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def cli_config(etcd1, tmp_path):
    """A config file for host h1 of cluster "it" on ``etcd1``, as the CLI commands are given it."""
    cfg = tmp_path / "haagent.toml"
    cfg.write_text(f'cluster = "it"\nhost = "h1"\n[etcd]\nendpoints = {json.dumps(etcd1.endpoints)}\n'
                   'timeout = 0.5\n[metrics]\nlisten = ""\n[libvirt]\nenabled = false\n')
    return str(cfg)
