"""Pure parsers for libvirt capabilities and domain XML (no libvirt import, no I/O)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from haagent.errors import InvalidDomain
from haagent.hypervisor.port import DiskInfo, NumaTuning
from haagent.model import HostCell

_UNIT_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
             "m": 1024, "mib": 1024, "mb": 1000 ** 2 / 1024, "g": 1024 ** 2, "gib": 1024 ** 2,
             "gb": 1000 ** 3 / 1024, "t": 1024 ** 3, "tib": 1024 ** 3, "tb": 1000 ** 4 / 1024}

# Network disk protocols whose storage every host reaches the same way.
SHARED_PROTOCOLS = frozenset({"rbd", "iscsi", "nbd", "gluster", "sheepdog", "http", "https",
                              "ftp", "ftps", "tftp", "ssh", "vxhs", "nfs"})


def parse_cpuset(text: str | None) -> tuple[int, ...]:
    """``"0-3,^2,8"`` -> (0, 1, 3, 8), libvirt's cpuset syntax."""
    if not text:
        return ()
    on: set[int] = set()
    off: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        target = off if part.startswith("^") else on
        part = part.lstrip("^")
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                target.update(range(int(lo), int(hi) + 1))
            else:
                target.add(int(part))
        except ValueError as e:
            raise InvalidDomain(f"bad cpuset {text!r}") from e
    return tuple(sorted(on - off))


def to_kib(value: str | None, unit: str | None, default_unit: str = "KiB") -> int:
    if value is None or value.strip() == "":
        return 0
    factor = _UNIT_KIB.get((unit or default_unit).lower())
    if factor is None:
        raise InvalidDomain(f"unknown memory unit {unit!r}")
    return int(int(value) * factor)


def _parse(xml: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as e:
        raise InvalidDomain(f"malformed {what} XML: {e}") from e


# -- capabilities ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostTopology:
    uuid: str
    arch: str
    cpu_model: str
    cpu_vendor: str
    cpu_features: tuple[str, ...]
    sockets: int
    cores_per_socket: int
    threads_per_core: int
    page_sizes_kib: tuple[int, ...]
    cells: tuple[HostCell, ...]  # free_mib None and free hugepages unknown: capabilities have neither
    cpu_xml: str


def parse_capabilities(xml: str) -> HostTopology:
    """Host CPU, topology and NUMA cells (with per-size hugepage totals) from capabilities XML."""
    root = _parse(xml, "capabilities")
    host = root.find("host")
    if host is None:
        raise InvalidDomain("capabilities XML has no <host>")
    cpu = host.find("cpu")
    cpu_xml = ET.tostring(cpu, encoding="unicode") if cpu is not None else ""
    topo = cpu.find("topology") if cpu is not None else None
    page_sizes = tuple(sorted(int(to_kib(p.get("size"), p.get("unit")))
                              for p in (cpu.findall("pages") if cpu is not None else [])))
    # The smallest page size is the base page (4 KiB on x86); only larger ones are hugepages.
    base_page = page_sizes[0] if page_sizes else 4
    cells = []
    for cell in host.findall("topology/cells/cell"):
        mem = cell.find("memory")
        mem_kib = to_kib(mem.text, mem.get("unit")) if mem is not None else 0
        huge: dict[int, tuple[int, int]] = {}
        for p in cell.findall("pages"):
            size = to_kib(p.get("size"), p.get("unit"))
            if size > base_page:
                # Free counts are not in capabilities; the adapter fills them in (getFreePages).
                huge[size] = (int(p.text or 0), 0)
        cpus = tuple(sorted(int(c.get("id")) for c in cell.findall("cpus/cpu")))
        cells.append(HostCell(id=int(cell.get("id", len(cells))), cpus=cpus,
                              memory_mib=mem_kib // 1024, free_mib=None, hugepages=huge))
    all_cpus = sum(len(c.cpus) for c in cells)
    sockets = int(topo.get("sockets", 1)) if topo is not None else 1
    cores = int(topo.get("cores", 1)) if topo is not None else max(all_cpus, 1)
    threads = int(topo.get("threads", 1)) if topo is not None else 1
    return HostTopology(
        uuid=(host.findtext("uuid") or "").strip(),
        arch=(cpu.findtext("arch") if cpu is not None else "") or "",
        cpu_model=(cpu.findtext("model") if cpu is not None else "") or "",
        cpu_vendor=(cpu.findtext("vendor") if cpu is not None else "") or "",
        cpu_features=tuple(sorted(f.get("name", "") for f in
                                  (cpu.findall("feature") if cpu is not None else []))),
        sockets=sockets, cores_per_socket=cores, threads_per_core=threads,
        page_sizes_kib=page_sizes, cells=tuple(sorted(cells, key=lambda c: c.id)), cpu_xml=cpu_xml)


# -- domain ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSpec:
    uuid: str
    name: str
    vcpus: int
    memory_mib: int
    max_memory_mib: int
    numa: NumaTuning
    hugepages_kib: tuple[int, ...]
    disks: tuple[DiskInfo, ...]
    cpu_mode: str = ""  # <cpu mode=...>: custom, host-model, host-passthrough, maximum; "" = none
    cpu_model: str = ""  # <cpu><model> of a custom CPU
    # <memoryBacking><hugepages><page nodeset=...>: per-cell page sizes (not modelled by placement)
    hugepage_nodesets: bool = False


def _is_shared(path: str, shared_paths: tuple[str, ...]) -> bool:
    for prefix in shared_paths:
        prefix = prefix.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def parse_domain(xml: str, shared_paths: tuple[str, ...] = ()) -> DomainSpec:
    """Sizes, NUMA tuning, pinning, hugepage backing and disks of one domain XML.

    A disk counts as shared when it is a network disk (rbd, iscsi, ...), is marked <shareable/>,
    or its path lies under one of ``shared_paths`` (the directories the operator declares shared).
    """
    root = _parse(xml, "domain")
    if root.tag != "domain":
        raise InvalidDomain(f"expected a <domain> element, got <{root.tag}>")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InvalidDomain("domain XML has no <name>")
    mem = root.find("currentMemory")
    if mem is None:
        mem = root.find("memory")
    maxmem = root.find("memory")
    memory_kib = to_kib(mem.text, mem.get("unit")) if mem is not None else 0
    max_kib = to_kib(maxmem.text, maxmem.get("unit")) if maxmem is not None else memory_kib
    vcpu = root.find("vcpu")
    vcpus = int(vcpu.get("current") or vcpu.text or 1) if vcpu is not None else 1

    numatune = root.find("numatune")
    mode, nodeset, memnodes = "", (), {}
    if numatune is not None:
        m = numatune.find("memory")
        if m is not None:
            mode, nodeset = m.get("mode", "strict"), parse_cpuset(m.get("nodeset"))
        memnodes = {int(n.get("cellid")): parse_cpuset(n.get("nodeset"))
                    for n in numatune.findall("memnode")}
    guest_cells = {}
    for c in root.findall("cpu/numa/cell"):
        guest_cells[int(c.get("id", len(guest_cells)))] = (
            parse_cpuset(c.get("cpus")), to_kib(c.get("memory"), c.get("unit")) // 1024)
    cputune = root.find("cputune")
    pins, emu = {}, ()
    if cputune is not None:
        pins = {int(p.get("vcpu")): parse_cpuset(p.get("cpuset")) for p in cputune.findall("vcpupin")}
        e = cputune.find("emulatorpin")
        emu = parse_cpuset(e.get("cpuset")) if e is not None else ()
    if not pins and vcpu is not None and vcpu.get("cpuset"):
        # <vcpu cpuset='..'> pins every vCPU to the same set
        allowed = parse_cpuset(vcpu.get("cpuset"))
        pins = {i: allowed for i in range(vcpus)}

    huge: tuple[int, ...] = ()
    hp = root.find("memoryBacking/hugepages")
    hp_nodesets = False
    if hp is not None:
        sizes = [to_kib(p.get("size"), p.get("unit")) for p in hp.findall("page")]
        huge = tuple(sorted(set(sizes))) or (0,)  # (0,) = the host's default hugepage size
        hp_nodesets = any(p.get("nodeset") for p in hp.findall("page"))
    cpu = root.find("cpu")
    cpu_mode = (cpu.get("mode") or ("custom" if cpu.find("model") is not None else "")) if cpu is not None else ""
    cpu_model = ((cpu.findtext("model") or "").strip() if cpu is not None else "")

    disks = []
    for d in root.findall("devices/disk"):
        src = d.find("source")
        stype = d.get("type", "file")
        source = ""
        shared = False
        if src is not None:
            if stype == "network":
                proto = src.get("protocol", "")
                source = f"{proto}:{src.get('name', '')}"
                shared = proto in SHARED_PROTOCOLS
            elif stype == "volume":
                source = f"{src.get('pool', '')}/{src.get('volume', '')}"
            else:
                source = src.get("file") or src.get("dev") or src.get("dir") or ""
                shared = bool(source) and _is_shared(source, shared_paths)
        if d.find("shareable") is not None:
            shared = True
        tgt = d.find("target")
        disks.append(DiskInfo(target=tgt.get("dev", "") if tgt is not None else "",
                              device=d.get("device", "disk"), source=source, source_type=stype,
                              shared=shared, readonly=d.find("readonly") is not None))
    return DomainSpec(
        uuid=(root.findtext("uuid") or "").strip(), name=name, vcpus=vcpus,
        memory_mib=memory_kib // 1024, max_memory_mib=max_kib // 1024,
        numa=NumaTuning(mode=mode, nodeset=nodeset, memnodes=memnodes, guest_cells=guest_cells,
                        vcpu_pins=pins, emulator_pin=emu),
        hugepages_kib=huge, disks=tuple(disks), cpu_mode=cpu_mode, cpu_model=cpu_model,
        hugepage_nodesets=hp_nodesets)
