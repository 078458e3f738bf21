"""Real etcd for integration tests: Debian's binary on free loopback ports, SIGKILL teardown."""

from __future__ import annotations

import shutil

import pytest

from haagent.store.etcd_server import EtcdCluster
from webhook_receiver import Receiver


@pytest.fixture
def receiver():
    """A webhook receiver on a free loopback port (``webhook_receiver.Receiver``)."""
    r = Receiver().up()
    try:
        yield r
    finally:
        r.hold.set()
        r.down()


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


# The users of etcd_tls (certificate CN -> role); root is etcd's own.
TLS_USERS = {"h1": "haagent-agent", "h2": "haagent-agent", "alice": "haagent-operator", "graf": "haagent-reader"}


@pytest.fixture(scope="module")
def etcd_tls(tmp_path_factory):
    """A single-member etcd that speaks only TLS and requires client certificates from its own
    CA (``etcd_tls.client_cert(cn)``), with haagent's roles for cluster "it", the TLS_USERS and
    auth on: each client acts as the user its certificate's CN names."""
    from haagent.store.client import EtcdStore
    from haagent.store.rbac import setup_rbac

    _require_etcd()
    cluster = EtcdCluster(1, tmp_path_factory.mktemp("etcd-tls"), tls=True)
    try:
        cluster.start()
        store = EtcdStore(cluster.endpoints, 1.0, **cluster.tls_kwargs())
        try:
            setup_rbac(store, "it", TLS_USERS)
        finally:
            store.close()
        yield cluster
    finally:
        cluster.stop()
