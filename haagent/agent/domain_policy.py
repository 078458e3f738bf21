"""What a domain definition read from etcd may ask of this hypervisor, before the agent defines it.

Write access to ``vms/<uuid>/spec`` must not be root on every host: QEMU pass-through arguments,
host devices, another emulator binary, an unconfined security label, or a disk that is the host's
own block device would all be "just XML". The agent defines a spec only if every part of it is on
this allowlist; otherwise it refuses with the rule that failed (``vm_spec_rejected`` in the log, a
metric, and the VM stays down where it would have started). docs/hypervisor.md lists the rules.

Two layers: rules per element (disks, character devices, firmware...), and a backstop over the
whole document that refuses any host path outside the directories a domain may use, wherever it
appears - libvirt has many more elements that name host files than this module lists.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from typing import Iterable

from haagent.agent.managed import NS as HA_NS

EMULATOR_RE = re.compile(r"^/usr/(bin|libexec)/(qemu-system-[a-z0-9_]+|qemu-kvm|kvm)$")
# Read-only firmware and libvirt's own per-domain NVRAM store, besides the configured image dirs.
FIRMWARE_DIRS = ("/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/qemu", "/usr/share/seabios",
                 "/var/lib/libvirt/qemu/nvram")
# Where character devices may put sockets or files libvirt manages.
RUNTIME_DIRS = ("/var/lib/libvirt", "/run/libvirt", "/var/log/libvirt")
RNG_DEVICES = ("/dev/urandom", "/dev/random", "/dev/hwrng")
NET_DEVICES = ("/dev/net/tun", "/dev/vhost-net")  # an <interface>'s <backend tap= vhost=> defaults
FORBIDDEN_DEVICES = ("hostdev", "redirdev", "smartcard", "filesystem", "shmem")
CHAR_DEVICES = ("serial", "console", "channel", "parallel")
CHAR_TYPES = ("pty", "unix", "file", "null", "spicevmc", "spiceport", "qemu-vdagent", "vc")
# Metadata namespaces always allowed: haagent's own HA mark and its lab's mark. Nothing on a host
# but haagent reads them. Others only if the config lists them (agent.metadata_namespaces).
HAAGENT_NAMESPACES = (HA_NS, "https://haagent.dev/xmlns/lab/1")
# libosinfo's OS id, which virt-install and virt-manager put in every domain they create.
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
DEFAULT_METADATA_NAMESPACES = (LIBOSINFO_NS,)
# Attributes that name a host file or device wherever they appear; "dev" also names a NIC
# (<source dev='eth0'>) or a guest disk (<target dev='vda'>), so it counts only with a '/'.
PATH_ATTRS = ("file", "path", "socket", "template", "tap", "vhost", "evdev", "tty", "dir", "rendernode")
# Elements whose text is free prose or a label, never opened as a host path by libvirt or QEMU
# (<partition> is a cgroup name such as /machine; <blkiotune> paths only weigh I/O on a device).
FREE_TEXT = ("title", "description", "cmdline", "label", "imagelabel", "baselabel", "entry", "partition")


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
                 network_protocols: Iterable[str] = (),
                 metadata_namespaces: Iterable[str] = DEFAULT_METADATA_NAMESPACES) -> None:
    """Raise SpecRejected unless ``xml`` keeps to the allowlist.

    Disks: files under ``image_dirs``; block devices only under ``block_dirs`` (e.g. /dev/mapper
    for multipath shared storage); network disks only with a protocol in ``network_protocols``
    (e.g. rbd). ``<metadata>`` may hold haagent's marks and the ``metadata_namespaces`` listed.
    All four come from ``[agent]`` in the config; by default only files are allowed.
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
    inert = _metadata(root, HAAGENT_NAMESPACES + tuple(metadata_namespaces))
    for el in root.iter():
        if el in inert:
            continue
        if el.tag.startswith("{") or any(name.startswith("{") for name in el.attrib):
            raise SpecRejected("namespace", f"<{el.tag}> outside <metadata> (e.g. qemu:commandline pass-through)")
    for el in root.iter("seclabel"):
        _seclabel(el)
    pty_paths: set[ET.Element] = set()  # elements whose path or tty is a pty libvirt allocates anew
    # libvirt reads every <devices> and <os> element there is, so check them all
    for devices in root.findall("devices"):
        for el in devices:
            _device(el, images, blocks, protocols)
            if el.tag in CHAR_DEVICES and el.get("type", "pty") == "pty":
                pty_paths.update((el, *el.findall("source")))
    os_els = root.findall("os")
    for tag in ("kernel", "initrd", "dtb"):
        for el in (e for o in os_els for e in o.findall(tag)):
            if not _under((el.text or "").strip(), images):
                raise SpecRejected("os-path", f"<{tag}> {el.text!r} is outside {', '.join(images)}")
    for tag in ("loader", "nvram"):
        for el in (e for o in os_els for e in o.findall(tag)):
            # <nvram template=> is copied into the guest's NVRAM: a host file the guest could read
            paths = [(el.text or "").strip(), el.get("template", "")]
            paths += [s.get("file", "") or s.get("dev", "") for s in el.findall("source")]
            if tag == "nvram" and el.get("type") not in (None, "file"):
                raise SpecRejected("os-path", f"<nvram type={el.get('type')!r}> (files only)")
            for path in (p for p in paths if p):
                if not _under(path, images + FIRMWARE_DIRS):
                    raise SpecRejected("os-path", f"<{tag}> {path!r} is outside the firmware and image directories")
    for el in root.iter("script"):
        raise SpecRejected("script", f"<script path={el.get('path')!r}> would run a program on the host")
    _host_paths(root, inert, pty_paths, images + blocks + FIRMWARE_DIRS + RUNTIME_DIRS + NET_DEVICES)


def _metadata(root: ET.Element, allowed: tuple[str, ...]) -> set[ET.Element]:
    """The elements of <metadata>, which libvirt keeps and never acts on - but hooks and other
    tools on the host may read, so only namespaces known to be harmless are let through."""
    inert: set[ET.Element] = set()
    for metadata in root.findall("metadata"):
        for el in metadata:
            ns = el.tag[1:].partition("}")[0] if el.tag.startswith("{") else ""
            if ns not in allowed:
                raise SpecRejected("namespace", f"<metadata> holds <{el.tag}>: only haagent's marks and "
                                                "agent.metadata_namespaces are allowed there")
        inert.update(metadata.iter())
    return inert


def _seclabel(el: ET.Element) -> None:
    """Only labels libvirt generates: no unconfined domain, no label of the spec's choosing."""
    kind, relabel = el.get("type"), el.get("relabel")
    if kind in ("none", "static"):
        raise SpecRejected("seclabel", f"<seclabel type={kind!r}> (an unconfined or chosen security label)")
    if relabel == "no":
        raise SpecRejected("seclabel", "<seclabel relabel='no'>")
    if el.find("baselabel") is not None:
        raise SpecRejected("seclabel", "<seclabel> with a <baselabel> of the spec's choosing")


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
            return  # checked above; the backstop checks any other host path in it
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
    pty = tag in CHAR_DEVICES and el.get("type", "pty") == "pty"
    runtime = images + RUNTIME_DIRS
    for sub in el.iter():
        if sub.tag == "source":
            if sub.get("protocol") or sub.get("pool") or sub.get("volume") or sub.get("dir"):
                raise SpecRejected("disk", f"<{tag}> <source> on a network, pool or directory")
            if sub.get("file") is not None and not _under(sub.get("file", ""), images):
                raise SpecRejected("path", f"<{tag}> file {sub.get('file')!r} is outside {', '.join(images)}")
            if "/" in (sub.get("dev") or ""):
                raise SpecRejected("host-device", f"<{tag}> uses the host device {sub.get('dev')!r}")
            if sub.get("path") is not None and not pty and not _under(sub.get("path", ""), runtime):
                raise SpecRejected("path", f"<{tag}> path {sub.get('path')!r} is outside the image and libvirt directories")
        if sub.tag == "log" and sub.get("file") is not None and not _under(sub.get("file", ""), runtime):
            raise SpecRejected("path", f"<{tag}> log {sub.get('file')!r} is outside the image and libvirt directories")


def _host_paths(root: ET.Element, inert: set[ET.Element], pty_paths: set[ET.Element],
                allowed: tuple[str, ...]) -> None:
    """The backstop: any host path, in any element the rules above do not know, must lie in a
    directory a domain may use (an nvdimm's backing file, an audio file, an ACPI table...)."""
    skip = set(inert)
    for el in root.iter("blkiotune"):
        skip.update(el.iter())
    for el in root.iter():
        if el in skip:
            continue
        # A pty's path is the one libvirt allocated where the XML was read; a define ignores it.
        ok = allowed + (("/dev/pts",) if el in pty_paths else ())
        values = [(f"{name}=", v) for name, v in el.attrib.items()
                  if (name in PATH_ATTRS and v) or (name == "dev" and "/" in v) or v.startswith("/")]
        text = (el.text or "").strip()
        if el.tag not in FREE_TEXT and el.tag not in ("emulator", "backend") and (
                text.startswith("/") or (el.tag in ("path", "table", "shim") and text)):
            values.append(("", text))
        for what, value in values:
            if not _under(value, ok):
                raise SpecRejected("path", f"<{el.tag} {what}{value!r}> is a host path outside the image, "
                                           "firmware and libvirt directories")
