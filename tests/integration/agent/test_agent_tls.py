"""Real agents against an etcd that requires client certificates and has haagent's roles on:
with an agent certificate they heartbeat, elect and lead; with a reader's they refuse in one line."""

from __future__ import annotations

import signal
import subprocess

import pytest
from agent_helpers import spawn_agent as spawn, wait_for

from haagent.store.client import EtcdStore
from haagent.store.election import read_leader
from haagent.store.keys import Keys

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

K = Keys("it")


def _tls(etcd_tls, cn):
    return etcd_tls.tls_kwargs(etcd_tls.client_cert(cn))


def test_agents_with_agent_certificates_heartbeat_and_lead(etcd_tls, tmp_path):
    root = EtcdStore(etcd_tls.endpoints, 1.0, **etcd_tls.tls_kwargs())
    procs = {h: spawn(tmp_path, h, etcd_tls.endpoints, etcd_tls=_tls(etcd_tls, h)) for h in ("h1", "h2")}
    try:
        lead = wait_for(lambda: all(root.get(K.host_alive(h)) for h in procs) and read_leader(root, K), 20,
                        "both agents alive and a leader")
        # the leader decides from the cache and writes host states: all within the agent role
        wait_for(lambda: all(root.get(K.host_state(h)) for h in procs), 10, "the leader's host states")
        procs[lead.host].send_signal(signal.SIGTERM)
        assert procs[lead.host].wait(10) == 0
        assert root.get(K.host_alive(lead.host)) is None
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        root.close()
    logs = "".join((tmp_path / f"{h}.log").read_text() for h in procs)
    assert "permission denied" not in logs, logs


def test_an_agent_with_a_reader_certificate_refuses_in_one_line(etcd_tls, tmp_path):
    proc = spawn(tmp_path, "h2", etcd_tls.endpoints, etcd_tls=_tls(etcd_tls, "graf"), stderr=subprocess.PIPE)
    try:
        assert proc.wait(20) == 2
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert err.count("\n") == 1, err
    assert err.startswith("haagent: refusing to run: ") and "permission denied: etcd user 'graf'" in err, err
