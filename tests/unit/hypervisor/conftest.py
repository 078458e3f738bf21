"""Fixtures for hypervisor unit tests: canned XML under data/, libvirt's test:///default driver."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data() -> Path:
    return DATA


@pytest.fixture
def testdriver() -> Iterator[object]:
    """A LibvirtHypervisor on libvirt's in-process test driver (two NUMA cells, one VM 'test')."""
    pytest.importorskip("libvirt")
    from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
    hv = LibvirtHypervisor("test:///default")
    try:
        yield hv
    finally:
        for v in hv.list_vms():
            if v.name.startswith("hvt-u"):
                try:
                    hv.destroy(v.uuid)
                    hv.undefine(v.uuid)
                except Exception:
                    pass
        hv.close()
