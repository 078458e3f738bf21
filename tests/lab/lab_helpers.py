"""Helpers for the lab tests: polling with a deadline, the cluster as stored, returning a host to
service, and an independent leftover check."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest


def eventually(fn: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "") -> object:
    """Call ``fn`` until it returns a truthy value or raises nothing falsy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the condition's own errors (etcd timeouts...) mean "not yet"
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"{what or fn}: not true within {timeout:g}s (last: {last!r})")
        time.sleep(interval)


def view(lab, attempts: int = 10):
    """The cluster as stored (a ``ClusterView``). A member a test cut off hangs a read until its
    timeout, and a fresh store may try it first: such a read is tried again (the agents' stores do
    the same)."""
    from haagent.errors import StoreError
    from haagent.state.codec import build_view
    from haagent.store.keys import Keys

    keys = Keys(lab.prefix)
    for attempt in range(attempts):
        store = lab.etcd_store(timeout=1)
        try:
            kvs, _ = store.get_prefix(keys.root)
            return build_view({kv.key: kv for kv in kvs}, keys, 0)
        except StoreError:
            if attempt == attempts - 1:
                raise
        finally:
            store.close()
    raise AssertionError("unreachable")


def return_host(lab, host: str, timeout: float = 60) -> None:
    """Power the host back on and return it to service; wait until it is active again."""
    from haagent.model import HostState
    from haagent.state.codec import build_view
    from haagent.store.keys import Keys

    lab.heal(host)
    lab.revive(host)
    keys = Keys(lab.prefix)
    store = lab.etcd_store(timeout=1)
    try:
        deadline = time.monotonic() + timeout
        asked = False
        while True:
            kvs, _ = store.get_prefix(keys.root)
            view = build_view({kv.key: kv for kv in kvs}, keys, 0)
            hv = view.hosts.get(host)
            if hv is not None and hv.alive and hv.state is HostState.FAILED and not asked:
                store.put(keys.request(f"host_return-{host}-{uuid.uuid4().hex[:6]}"),
                          json.dumps({"kind": "host_return", "host": host, "at": time.time()}))
                asked = True
            if hv is not None and hv.alive and hv.state is HostState.ACTIVE:
                return
            assert time.monotonic() < deadline, f"{host} did not return to service: {hv}"
            time.sleep(0.2)
    finally:
        store.close()


def lab_traces(prefix: str, labdir: Path, netns_inodes: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Everything of a lab that is still on the machine: namespaces, processes, mounts, files."""
    found = []
    netns_dir = Path("/run/netns")
    if netns_dir.exists():
        found += [f"namespace {n}" for n in os.listdir(netns_dir) if n.startswith(prefix + "-")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            net = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if state == "Z":
            continue
        if str(labdir) in cmd or net in netns_inodes or f"--prefix {prefix}" in cmd:
            found.append(f"process {pid}: {cmd[:100]}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if str(labdir) in target or f"/{prefix}-" in target:
            found.append(f"mount {target}")
    if labdir.exists():
        found.append(f"directory {labdir}")
    return found


def netns_inodes(prefix: str) -> set[str]:
    out = set()
    for n in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if n.startswith(prefix + "-"):
            out.add(f"net:[{os.stat(f'/run/netns/{n}').st_ino}]")
    return out
