"""Real etcd for integration tests: Debian's binary on free loopback ports, SIGKILL teardown."""

from __future__ import annotations

import shutil

import pytest

from haagent.store.etcd_server import EtcdCluster


def _require_etcd() -> None:
    if shutil.which("etcd") is None:
        pytest.skip("etcd binary not installed (make test installs etcd-server)")


@pytest.fixture
def etcd1(tmp_path):
    """A fresh single-member etcd."""
    _require_etcd()
    cluster = EtcdCluster(1, tmp_path / "etcd")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def etcd3(tmp_path):
    """A fresh 3-member etcd cluster."""
    _require_etcd()
    cluster = EtcdCluster(3, tmp_path / "etcd")
    try:
        yield cluster.start(timeout=30)
    finally:
        cluster.stop()
