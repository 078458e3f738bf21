"""One contract suite for the Hypervisor port, run on every implementation.

``env`` is parametrised: ``fake`` (FakeHypervisor, always) and ``lab`` (LibvirtHypervisor on two
real libvirtd hosts of a lab with prefix ``hvt``, root only). Each env gives a source and a
destination hypervisor, the migration target, and the faults the suite injects.
"""

from __future__ import annotations

import itertools
import os
import queue
import struct
import time
from typing import Iterator

import pytest

from haagent.errors import HaagentError
from haagent.hypervisor.fake import FakeCluster, FakeHypervisor
from haagent.hypervisor.port import EventKind, Hypervisor, MigrationTarget, VmEvent
from haagent.lab import layout as L
from haagent.model import HostCell

LAB_PREFIX = "hvt"
_names = itertools.count(1)


def small_vm_xml(name: str, domain_type: str = "qemu", boot: str = "", extra: str = "") -> str:
    """A 64 MiB diskless VM with no OS: it idles in the BIOS, ignores ACPI shutdown."""
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>{extra}
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


def multiboot_halt_stub() -> bytes:
    """A multiboot kernel (a.out kludge, loaded at 1 MiB) whose only code is ``cli; hlt; jmp``."""
    magic, flags, load = 0x1BADB002, 0x00010000, 0x100000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                         load, load, 0, 0, load + 32)
    return header + bytes([0xFA, 0xF4, 0xEB, 0xFD])


class Events:
    """Collects one hypervisor's events; ``wait_for`` blocks until a matching one arrives."""

    def __init__(self, hv: Hypervisor):
        self.q: queue.Queue[VmEvent] = queue.Queue()
        self.seen: list[VmEvent] = []
        self.sub = hv.subscribe(self.q.put)

    def wait_for(self, kind: EventKind, uuid: str | None = None, timeout: float = 5.0) -> VmEvent:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind.value} event for {uuid} within {timeout}s; "
                                     f"saw {[(e.kind.value, e.name, e.reason) for e in self.seen]}")
            try:
                ev = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if ev.kind is kind and (uuid is None or ev.uuid == uuid):
                return ev

    def close(self) -> None:
        self.sub.cancel()


def fake_cells(cells: tuple[L.LabCell, ...], cpus_per_cell: int = 2) -> tuple[HostCell, ...]:
    """The fake host's cells for the NUMA layout a lab host has."""
    return tuple(HostCell(id=i, cpus=tuple(range(i * cpus_per_cell, (i + 1) * cpus_per_cell)),
                          memory_mib=c.memory_mib, free_mib=c.free_mib,
                          hugepages={L.HUGEPAGE_KIB: (c.hugepages, c.free_pages)})
                 for i, c in enumerate(cells))


class Env:
    """What the contract suite needs from one implementation."""

    name: str
    src: Hypervisor
    dst: Hypervisor
    target: MigrationTarget
    real: bool
    # The NUMA cells the source host reports while nothing runs on it (the lab layout's h1).
    src_cells: tuple[L.LabCell, ...] = L.default_cells("h1")

    def vm_xml(self, extra: str = "") -> str:
        return small_vm_xml(f"hvt-c{os.getpid() % 1000}-{next(_names)}", extra=extra)

    def set_src_cells(self, cells: tuple[L.LabCell, ...]) -> None:
        """Make the source host report other free memory and free hugepages per cell."""
        raise NotImplementedError

    def heavy_vm_xml(self) -> str:
        """A VM whose memory does not compress away, so a bandwidth limit really slows it."""
        return self.vm_xml()

    def kill_qemu(self, vm_name: str) -> None:
        raise NotImplementedError

    def make_guest_ignore_shutdown(self, vm_name: str) -> None:
        raise NotImplementedError

    def partition_dst(self) -> None:
        raise NotImplementedError

    def heal_dst(self) -> None:
        raise NotImplementedError

    def restart_src_daemon(self) -> None:
        raise NotImplementedError

    def wait_source_job_gone(self, uuid: str, timeout: float) -> None:
        """Wait until the source has no job on the VM (an abandoned migration call has ended)."""

    def cleanup(self) -> None:
        """Destroy and undefine every test VM on both hosts (best effort, never raises)."""
        for hv in (self.src, self.dst):
            try:
                vms = hv.list_vms()
            except HaagentError:
                continue
            for v in vms:
                if not v.name.startswith("hvt-c"):
                    continue
                for action in (hv.destroy, hv.undefine):
                    try:
                        action(v.uuid)
                    except HaagentError:
                        pass


class FakeEnv(Env):
    name = "fake"
    real = False

    def __init__(self) -> None:
        self.cluster = FakeCluster(clock=time.monotonic)
        self.src = FakeHypervisor("fake://h1", cluster=self.cluster, numa=fake_cells(self.src_cells))
        self.dst = FakeHypervisor("fake://h2", cluster=self.cluster,
                                  numa=fake_cells(L.default_cells("h2")))
        self.target = MigrationTarget(uri="fake://h2")

    def set_src_cells(self, cells: tuple[L.LabCell, ...]) -> None:
        assert isinstance(self.src, FakeHypervisor)
        self.src.numa = fake_cells(cells)

    def kill_qemu(self, vm_name: str) -> None:
        self.cluster.kill_qemu("fake://h1", vm_name)

    def make_guest_ignore_shutdown(self, vm_name: str) -> None:
        self.cluster.ignore_shutdown("fake://h1", vm_name)

    def partition_dst(self) -> None:
        self.cluster.partition("fake://h2")

    def heal_dst(self) -> None:
        self.cluster.heal("fake://h2")

    def restart_src_daemon(self) -> None:
        self.cluster.restart_daemon("fake://h1")


class LabEnv(Env):
    name = "lab"
    real = True

    def __init__(self, lab: object) -> None:
        from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
        self.lab = lab
        shared = (str(lab.shared_dir),)  # type: ignore[attr-defined]
        self.src = LibvirtHypervisor(lab.libvirt_uri("h1"), shared_paths=shared)  # type: ignore[attr-defined]
        self.dst = LibvirtHypervisor(lab.libvirt_uri("h2"), shared_paths=shared)  # type: ignore[attr-defined]
        assert self.src.wait_connected(15) and self.dst.wait_connected(15)
        # p2p: the source libvirtd resolves the lab address; we check through the unix socket.
        self.target = MigrationTarget(uri=lab.migration_uri("h2"),  # type: ignore[attr-defined]
                                      client_uri=lab.libvirt_uri("h2"))  # type: ignore[attr-defined]

    def heavy_vm_xml(self) -> str:
        # A VM with no OS migrates almost nothing: QEMU sends zero pages as flags, so 64 MiB
        # move in ~1 s even at 1 MiB/s. Boot a halting multiboot stub with 40 MiB of random
        # "module" instead: QEMU copies it into guest RAM, which then takes ~40 s at 1 MiB/s.
        shared = self.lab.shared_dir  # type: ignore[attr-defined]
        kernel, blob = shared / "hvt-halt.mb", shared / "hvt-random.bin"
        if not blob.exists():
            kernel.write_bytes(multiboot_halt_stub())
            blob.write_bytes(os.urandom(40 * 2**20))
        return small_vm_xml(f"hvt-c{os.getpid() % 1000}-{next(_names)}",
                            boot=f"<kernel>{kernel}</kernel><initrd>{blob}</initrd>")

    def kill_qemu(self, vm_name: str) -> None:
        # The pid file holds the PID as seen inside the host's PID namespace: kill it there.
        self.lab.exec("h1", ["sh", "-c", f"kill -9 $(cat /run/libvirt/qemu/{vm_name}.pid)"],  # type: ignore[attr-defined]
                      check=True, timeout=10)

    def make_guest_ignore_shutdown(self, vm_name: str) -> None:
        pass  # the lab's VMs have no OS: nothing answers ACPI

    def set_src_cells(self, cells: tuple[L.LabCell, ...]) -> None:
        self.lab.set_numa("h1", cells)  # type: ignore[attr-defined]

    def partition_dst(self) -> None:
        self.lab.partition("h2")  # type: ignore[attr-defined]

    def heal_dst(self) -> None:
        self.lab.heal("h2")  # type: ignore[attr-defined]

    def wait_source_job_gone(self, uuid: str, timeout: float) -> None:
        import libvirt
        conn = libvirt.open(self.lab.libvirt_uri("h1"))  # type: ignore[attr-defined]
        try:
            dom = conn.lookupByUUIDString(uuid)
            end = time.monotonic() + timeout
            while dom.jobStats(0).get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE:
                if time.monotonic() > end:
                    raise AssertionError(f"migration job still on the source after {timeout}s")
                time.sleep(0.2)
        finally:
            conn.close()

    def restart_src_daemon(self) -> None:
        self.lab.stop_libvirtd("h1")  # type: ignore[attr-defined]
        self.lab.start_libvirtd("h1")  # type: ignore[attr-defined]


def _lab_or_skip() -> object:
    if os.geteuid() != 0:
        pytest.skip("lab contract tests need root (namespaces, libvirtd, QEMU)")
    try:
        from haagent.lab.lab import Lab
    except ImportError as e:
        pytest.skip(f"the lab code is not available: {e}")
    lab = Lab(LAB_PREFIX)
    if lab.exists():
        lab.down()  # a previous run died before its teardown
    return lab


@pytest.fixture(scope="session")
def hv_lab() -> Iterator[object]:
    lab = _lab_or_skip()
    try:
        lab.up(hosts=2, vms=0)  # type: ignore[attr-defined]
        yield lab
    finally:
        lab.down()  # type: ignore[attr-defined]


@pytest.fixture(params=["fake", pytest.param("lab", marks=[pytest.mark.lab, pytest.mark.slow])])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    if request.param == "fake":
        e: Env = FakeEnv()
    else:
        e = LabEnv(request.getfixturevalue("hv_lab"))
    try:
        yield e
    finally:
        try:
            e.heal_dst()
        except Exception:
            pass
        e.cleanup()
        e.src.close()
        e.dst.close()


@pytest.fixture
def events_factory() -> Iterator[object]:
    made: list[Events] = []

    def make(hv: Hypervisor) -> Events:
        ev = Events(hv)
        made.append(ev)
        return ev

    yield make
    for ev in made:
        ev.close()
