"""Helpers for the store tests that run against a real etcd cluster."""

from __future__ import annotations

from haagent.errors import StoreError
from haagent.store.client import EtcdStore


def raft_leader(cluster):
    """The member that is etcd's raft leader right now (None if no running member says so)."""
    from etcd3 import etcdrpc

    for m in cluster.members:
        if not m.running:
            continue
        store = EtcdStore([m.endpoint], timeout=1)
        try:
            resp = store.call("status", lambda c: c.maintenancestub.Status(etcdrpc.StatusRequest(), 1))
        except StoreError:
            continue
        finally:
            store.close()
        if resp.leader == resp.header.member_id:
            return m
    return None
