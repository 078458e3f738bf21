"""What a domain definition read from etcd may ask of this hypervisor, before the agent defines it.

Write access to ``vms/<uuid>/spec`` must not be root on every host: QEMU pass-through arguments,
host devices, another emulator binary or a disk that is the host's own block device would all be
"just XML". The agent defines a spec only if every part of it is on this allowlist; otherwise it
refuses with the rule that failed (``vm_spec_rejected`` in the log, a metric, and the VM stays
down where it would have started). docs/hypervisor.md lists the rules.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from typing import Iterable

EMULATOR_RE = re.compile(r"^/usr/(bin|libexec)/(qemu-system-[a-z0-9_]+|qemu-kvm|kvm)$")
# Read-only firmware and libvirt's own per-domain NVRAM store, besides the configured image dirs.
FIRMWARE_DIRS = ("/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/qemu", "/usr/share/seabios",
                 "/var/lib/libvirt/qemu/nvram")
# Where character devices may put sockets or files libvirt manages.
RUNTIME_DIRS = ("/var/lib/libvirt", "/run/libvirt", "/var/log/libvirt")
RNG_DEVICES = ("/dev/urandom", "/dev/random", "/dev/hwrng")
FORBIDDEN_DEVICES = ("hostdev", "redirdev", "smartcard", "filesystem", "shmem")
CHAR_DEVICES = ("serial", "console", "channel", "parallel")
CHAR_TYPES = ("pty", "unix", "file", "null", "spicevmc", "spiceport", "qemu-vdagent", "vc")


class SpecRejected(ValueError):
    """A domain definition broke a rule; ``rule`` is a short name (for the metric)."""

    def __init__(self, rule: str, detail: str):
        super().__init__(f"{rule}: {detail}")
        self.rule = rule


def _under(path: str, dirs: Iterable[str]) -> bool:
    real = os.path.normpath(path)
    return os.path.isabs(path) and ".." not in path.split("/") and any(
        real == d or real.startswith(d.rstrip("/") + "/") for d in dirs)


def check_domain(xml: str, image_dirs: Iterable[str], block_dirs: Iterable[str] = (),
                 network_protocols: Iterable[str] = ()) -> None:
    """Raise SpecRejected unless ``xml`` keeps to the allowlist.

    Disks: files under ``image_dirs``; block devices only under ``block_dirs`` (e.g. /dev/mapper
    for multipath shared storage); network disks only with a protocol in ``network_protocols``
    (e.g. rbd). All three come from ``[agent]`` in the config; by default only files are allowed.
    """
    images = tuple(os.path.normpath(d) for d in image_dirs)
    blocks = tuple(os.path.normpath(d) for d in block_dirs)
    protocols = tuple(network_protocols)
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise SpecRejected("doctype", "a DOCTYPE or entity declaration")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SpecRejected("xml", f"not well-formed ({exc})") from None
    if root.tag != "domain":
        raise SpecRejected("xml", f"the root element is <{root.tag}>, not <domain>")
    if root.get("type") not in ("kvm", "qemu"):
        raise SpecRejected("domain-type", f"type={root.get('type')!r} (kvm or qemu only)")
    metadata = root.find("metadata")
    inert = set(metadata.iter()) if metadata is not None else set()
    for el in root.iter():
        if el in inert:
            continue  # metadata is data libvirt keeps, never acts on
        if el.tag.startswith("{"):
            raise SpecRejected("namespace", f"<{el.tag}> outside <metadata> (e.g. qemu:commandline pass-through)")
    devices = root.find("devices")
    for el in (devices if devices is not None else ()):
        _device(el, images, blocks, protocols)
    os_els = root.findall("os")
    for tag in ("kernel", "initrd", "dtb"):
        for el in (e for o in os_els for e in o.findall(tag)):
            if not _under((el.text or "").strip(), images):
                raise SpecRejected("os-path", f"<{tag}> {el.text!r} is outside {', '.join(images)}")
    for tag in ("loader", "nvram"):
        for el in (e for o in os_els for e in o.findall(tag)):
            path = (el.text or "").strip()
            if path and not _under(path, images + FIRMWARE_DIRS):
                raise SpecRejected("os-path", f"<{tag}> {path!r} is outside the firmware and image directories")
    for el in root.iter("script"):
        raise SpecRejected("script", f"<script path={el.get('path')!r}> would run a program on the host")


def _device(el: ET.Element, images: tuple[str, ...], blocks: tuple[str, ...], protocols: tuple[str, ...]) -> None:
    tag = el.tag
    if tag in FORBIDDEN_DEVICES:
        raise SpecRejected("host-device", f"<{tag}> gives the guest a piece of the host")
    if tag == "emulator":
        if not EMULATOR_RE.match((el.text or "").strip()):
            raise SpecRejected("emulator", f"<emulator> {el.text!r} is not a packaged QEMU binary")
        return
    if tag == "disk":
        kind = el.get("type", "file")
        allowed = ("file",) + (("block",) if blocks else ()) + (("network",) if protocols else ())
        if kind not in allowed:
            raise SpecRejected("disk", f"<disk type={kind!r}> (allowed here: {', '.join(allowed)}; see "
                                       "agent.block_device_dirs and agent.network_disk_protocols)")
        source = el.find("source")
        if kind == "block" and source is not None and not _under(source.get("dev", ""), blocks):
            raise SpecRejected("host-device", f"<disk> block device {source.get('dev')!r} is outside {', '.join(blocks)}")
        if kind == "network" and source is not None and source.get("protocol") not in protocols:
            raise SpecRejected("disk", f"<disk> protocol {source.get('protocol')!r} (allowed: {', '.join(protocols)})")
        if kind in ("block", "network"):
            return  # checked above; its <source> carries no host path beyond that
    if tag == "interface" and el.get("type") in ("ethernet", "hostdev", "vhostuser"):
        raise SpecRejected("interface", f"<interface type={el.get('type')!r}>")
    if tag in CHAR_DEVICES and el.get("type", "pty") not in CHAR_TYPES:
        raise SpecRejected("char-device", f"<{tag} type={el.get('type')!r}> (a host device or pipe)")
    if tag == "tpm" and el.find("backend") is not None and el.find("backend").get("type") == "passthrough":
        raise SpecRejected("host-device", "<tpm> passthrough of the host's TPM")
    if tag == "input" and el.get("type") in ("passthrough", "evdev"):
        raise SpecRejected("host-device", f"<input type={el.get('type')!r}> reads a host input device")
    if tag == "rng":
        for backend in el.iter("backend"):
            if backend.get("model", "random") == "random" and (backend.text or "").strip() not in RNG_DEVICES + ("",):
                raise SpecRejected("host-device", f"<rng> backend {backend.text!r}")
    runtime = images + RUNTIME_DIRS
    for sub in el.iter():
        if sub.tag == "source":
            if sub.get("protocol") or sub.get("pool") or sub.get("volume") or sub.get("dir"):
                raise SpecRejected("disk", f"<{tag}> <source> on a network, pool or directory")
            if sub.get("file") is not None and not _under(sub.get("file", ""), images):
                raise SpecRejected("path", f"<{tag}> file {sub.get('file')!r} is outside {', '.join(images)}")
            if "/" in (sub.get("dev") or ""):
                raise SpecRejected("host-device", f"<{tag}> uses the host device {sub.get('dev')!r}")
            if sub.get("path") is not None and not _under(sub.get("path", ""), runtime):
                raise SpecRejected("path", f"<{tag}> path {sub.get('path')!r} is outside the image and libvirt directories")
        if sub.tag == "log" and sub.get("file") is not None and not _under(sub.get("file", ""), runtime):
            raise SpecRejected("path", f"<{tag}> log {sub.get('file')!r} is outside the image and libvirt directories")
