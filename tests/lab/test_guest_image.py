"""The Linux guest's image, domain XML and tick analysis (no root, no VM)."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from haagent.agent.domain_policy import check_domain
from haagent.errors import LabError
from haagent.lab import guest_image as G
from haagent.lab import layout as L
from haagent.lab.guest import Tick, largest_gap, parse_ticks
from haagent.lab.lab import Lab

ELF = b"\x7fELF" + bytes(range(256)) * 64


def fake_bzimage(payload: bytes = ELF) -> bytes:
    """A setup header, then the payload compressed, as a bzImage carries its kernel."""
    return b"MZ" + b"\0" * 1000 + lzma.compress(payload, format=lzma.FORMAT_XZ) + b"\0" * 64


def test_cpio_archive_unpacks_with_gnu_cpio(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed (scripts/install-system-deps.sh)")
    busybox = b"\x7fELF pretend busybox" * 7
    archive = G.cpio_newc(G.initramfs_entries(busybox, init="#!/bin/sh\necho hi\n"))
    listing = subprocess.run(["cpio", "-t", "-v"], input=archive, capture_output=True, check=True).stdout.decode()
    assert "crw-------" in listing and "5,   1" in listing and "dev/console" in listing
    out = tmp_path / "root"
    out.mkdir()
    subprocess.run(["cpio", "-i", "--no-absolute-filenames"], input=archive, cwd=out, check=True,
                   capture_output=True, env={**os.environ, "LC_ALL": "C"})
    assert (out / "bin/busybox").read_bytes() == busybox
    assert os.readlink(out / "bin/sh") == "busybox"
    assert (out / "init").read_text() == "#!/bin/sh\necho hi\n" and os.access(out / "init", os.X_OK)


def test_init_script_parses_in_busybox_sh() -> None:
    if not G.BUSYBOX.exists():
        pytest.skip("busybox-static not installed (scripts/install-system-deps.sh)")
    res = subprocess.run([str(G.BUSYBOX), "sh", "-n", "-c", G.INIT_SCRIPT], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert G.READY_LINE in G.INIT_SCRIPT


def test_kernel_is_unpacked_from_its_bzimage() -> None:
    assert G.uncompressed_kernel(fake_bzimage()) == ELF
    gz = b"MZ" + b"\0" * 100 + gzip.compress(ELF)
    assert G.uncompressed_kernel(gz) == ELF
    assert G.uncompressed_kernel(b"MZ no payload here") is None
    assert G.uncompressed_kernel(fake_bzimage(b"not an elf")) is None


def test_newest_kernel_is_chosen(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="linux-image-amd64"):
        G.find_kernel(tmp_path)
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-28-amd64"):
        (tmp_path / f"vmlinuz-{v}").write_bytes(b"k")
    assert G.find_kernel(tmp_path).name == "vmlinuz-6.1.0-10-amd64"


def test_build_is_cached_by_its_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busybox, kernel, cache = tmp_path / "busybox", tmp_path / "vmlinuz-1", tmp_path / "cache"
    busybox.write_bytes(b"\x7fELF busybox one")
    kernel.write_bytes(fake_bzimage())
    first = G.build(cache, busybox=busybox, kernel=kernel)
    assert first.kernel.read_bytes() == ELF
    with gzip.open(first.initrd) as f:
        assert b"busybox one" in f.read()
    stamp = first.initrd.stat().st_mtime_ns
    assert G.build(cache, busybox=busybox, kernel=kernel) == first
    assert first.initrd.stat().st_mtime_ns == stamp, "unchanged inputs: nothing rebuilt"
    busybox.write_bytes(b"\x7fELF busybox two")
    assert G.build(cache, busybox=busybox, kernel=kernel).initrd != first.initrd
    assert first.initrd.exists(), "a fresh file of other inputs stays (another checkout may use it)"
    os.utime(first.initrd, (0, 0))
    G.build(cache, busybox=busybox, kernel=kernel)
    assert not first.initrd.exists() and first.kernel.exists(), "a day-old file of other inputs goes"
    monkeypatch.setattr(G, "INIT_SCRIPT", G.INIT_SCRIPT + "# changed\n")
    assert G.build(cache, busybox=busybox, kernel=kernel).initrd != first.initrd
    busybox.write_bytes(b"#!/bin/sh not busybox")
    with pytest.raises(LabError, match="busybox-static"):
        G.build(cache, busybox=busybox, kernel=kernel)


def test_guest_domain_xml_passes_the_agents_policy(tmp_path: Path) -> None:
    lay = L.Layout("gx")
    shared = str(lay.shared_dir)
    boot = L.GuestBoot(kernel=f"{shared}/guest/vmlinux-1", initrd=f"{shared}/guest/initramfs-1.cpio.gz",
                       cmdline=G.KERNEL_CMDLINE, console=str(lay.guest_console("vm1")),
                       socket=lay.guest_socket("vm1"))
    xml = L.domain_xml("vm1", "0b0c0d0e-0000-0000-0000-000000000001", "gx", False, None,
                       memory_mib=384, vcpus=2, guest=boot)
    dom = ET.fromstring(xml)
    assert dom.findtext("memory") == "384" and dom.findtext("vcpu") == "2"
    assert dom.findtext("os/kernel") == boot.kernel and dom.findtext("os/cmdline") == G.KERNEL_CMDLINE
    assert dom.find("os/boot") is None
    console, load = dom.findall("devices/serial")
    assert (console.get("type"), console.find("source").get("append")) == ("file", "on")
    assert load.get("type") == "unix" and load.find("source").get("path") == "/var/lib/libvirt/haagent-guest/vm1.sock"
    # After a failover the agent defines this XML from etcd: the lab's guests must pass its rules.
    check_domain(xml, [shared])
    assert lay.guest_socket_on("h2", "vm1") == lay.host_dir("h2") / "var-lib-libvirt/haagent-guest/vm1.sock"


def test_tick_lines_and_the_largest_gap() -> None:
    text = "[    1.2] kernel says hi\r\nhaagent-guest ready\r\nT 7 100.000000\r\nT 8 100.010000\r\nT x 1\r\n"
    assert parse_ticks(text) == [Tick(7, 100.0), Tick(8, 100.01)]
    ticks = [Tick(1, 10.00, 0.00), Tick(2, 10.01, 0.01), Tick(3, 10.03, 0.25), Tick(5, 10.05, 0.26)]
    gap = largest_gap(ticks)
    assert gap is not None and round(gap.seen_ms) == 240 and round(gap.guest_ms) == 20 and gap.lost == 0
    late = largest_gap(ticks, start=0.255)
    assert late is not None and late.lost == 1 and late.before.seq == 3
    assert largest_gap(ticks[:1]) is None


def test_guest_api_refuses_a_lab_without_guests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAAGENT_LAB_ROOT", str(tmp_path))
    lab = Lab("unit")
    lab.layout.dir.mkdir()
    lab.layout.state_file.write_text('{"hosts": ["h1", "h2"], "vms": {"vm1": {"home": "h1"}}}')
    with pytest.raises(LabError, match="--guest linux"):
        lab.guest("vm1")
    with pytest.raises(LabError, match="no VM 'vm9'"):
        lab.guest("vm9")
