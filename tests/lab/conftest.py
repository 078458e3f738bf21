"""Lab fixtures: a real multi-host lab in namespaces, always torn down, skipped when not root.

``running_lab(prefix, hosts, vms)`` is the reusable piece: it removes a lab left by a killed
run, builds a fresh one and takes it down again whatever the test did. Other suites can use
``haagent.lab.Lab(prefix).running(...)`` the same way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from haagent.lab.lab import Lab

ROOT_REASON = ("lab tests need root: they create network/mount/PID namespaces, bridges and run "
               "libvirtd, QEMU and etcd (CI runs them as root)")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(ROOT_REASON)


@contextlib.contextmanager
def running_lab(prefix: str, hosts: int = 3, vms: int = 6, **kw: object) -> Iterator[Lab]:
    require_root()
    # The daemons' logs outlive the lab, for reading after a failure.
    kw.setdefault("keep_logs", Path(tempfile.gettempdir()) / "haagent-lab-logs" / prefix)
    with Lab(prefix).running(hosts, vms, **kw) as lab:  # type: ignore[arg-type]
        yield lab


@pytest.fixture(scope="module")
def lab3() -> Iterator[Lab]:
    """3 hosts, 6 VMs, prefix ``lbt``; shared by one test module, torn down after it.

    Its VMs carry no HA mark: these tests move and kill VMs by hand, which on HA VMs would race
    the leader and agents doing their job (failover of HA VMs is `haagent drill`'s test).
    """
    with running_lab("lbt", 3, 6, ha=False) as lab:
        yield lab


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Factory ``make_lab(prefix, hosts, vms)``; every lab it made is down after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda prefix, hosts=2, vms=0, **kw: stack.enter_context(running_lab(prefix, hosts, vms, **kw))
