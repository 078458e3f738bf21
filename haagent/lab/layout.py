"""Names, addresses, paths and generated files of a lab: pure functions of the prefix and host.

Everything a lab creates is named from its prefix, so two labs with different prefixes coexist:
namespaces ``<prefix>-h1``, ``<prefix>-br``, ``<prefix>-mgmt``; the directory
``$HAAGENT_LAB_ROOT/<prefix>`` (default /var/lib/haagent/lab). Addresses and ports are the same
in every lab because each lab's networks live in namespaces of their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from xml.sax.saxutils import escape

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
DEFAULT_PREFIX = "hal"
MIN_HOSTS, MAX_HOSTS = 2, 6
MAX_VMS = 60

CLUSTER_NET = "10.99.0"  # host hN is .10+N on the cluster network
MGMT_NET = "10.98.0"  # host hN's management NIC is .10+N, its BMC .100+N
NETMASK = 24
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# etcd's raft heartbeat and election timeout (its defaults: 100 and 1000 ms); see docs/timings.md
ETCD_HEARTBEAT_MS = 50
ETCD_ELECTION_MS = 500
LIBVIRT_TCP_PORT = 16509
LIBVIRT_TLS_PORT = 16514
# Inside a host: its own /etc/libvirt (LIBVIRT_BINDS), so each host has its own certificates.
LIBVIRT_PKI = "/etc/libvirt/pki"
METRICS_PORT = 9464
# `lab up --monitoring`: Prometheus and Alertmanager on the cluster network, in the bridge's
# namespace (the one network every agent's metrics endpoint is on), at this address.
MONITOR_ADDRESS = f"{CLUSTER_NET}.2"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
# Short so a lab test sees an alert within seconds: Prometheus scrapes and evaluates every
# second, and the leader checks every fence path every FENCE_CHECK_INTERVAL seconds.
SCRAPE_INTERVAL = 1
EVALUATION_INTERVAL = 1
FENCE_CHECK_INTERVAL = 5
# Host hN's BMC listens on UDP 6230+N, not 623: the lab's BMCs share one process, and pyghmi's
# server files its sessions under the client's address and the BMC's port, so a leader logging in
# to two BMCs of the same port at once had one login answered by the other BMC's session (a
# "wrong password" from a healthy BMC, and a fence retried).
BMC_PORT_BASE = 6230
BMC_USER = "admin"
VM_MEMORY_MIB = 64
# A Linux guest's kernel keeps ~60 MiB to itself: 192 MiB leave ~100 MiB for `lab load --mem`.
GUEST_MEMORY_MIB = 192
MIN_GUEST_MEMORY_MIB = 128
MAX_MEMORY_MIB = 4096
MAX_VCPUS = 4
GUESTS = ("none", "linux")
DISK_SIZE = "64M"
# Inside every host: the directory of the Linux guests' load-channel sockets (libvirt's own tree,
# bind-mounted per host, so a migrated guest's socket appears in the destination host's copy).
GUEST_SOCKET_DIR = "/var/lib/libvirt/haagent-guest"

# Per-host directory -> the path it is bind-mounted over inside the host's mount namespace.
LIBVIRT_BINDS = (
    ("etc-libvirt", "/etc/libvirt"),
    ("run-libvirt", "/run/libvirt"),
    ("var-lib-libvirt", "/var/lib/libvirt"),
    ("var-log-libvirt", "/var/log/libvirt"),
    ("var-cache-libvirt", "/var/cache/libvirt"),
)


# -- NUMA cells the hosts' libvirtds see -------------------------------------------------------
#
# The machine has one real NUMA node. Each host's libvirtd reads a fake
# /sys/devices/system/node (written by ``numa_tree`` and bind-mounted in the host's mount
# namespace), so libvirt's capabilities, getCellsFreeMemory and getFreePages report the cells
# below. Only node 0 is real: QEMU's memory always comes from it (see docs/lab.md).

SYS_NODE = "/sys/devices/system/node"
HUGEPAGE_KIB = 2048
DEFAULT_CELL_MIB = 4096
DEFAULT_HUGEPAGES = 64  # 2 MiB pages in each cell's pool (128 MiB)
# host index -> (free MiB, free 2 MiB pages) per cell: every host differs, and which cell has
# more room alternates, so a strict-NUMA VM fits some hosts' cells and not others.
_DEFAULT_FREE = {
    1: ((512, 8), (3584, 64)),
    2: ((3072, 48), (1024, 16)),
    3: ((2048, 32), (2048, 32)),
    4: ((1024, 64), (3072, 8)),
    5: ((3584, 16), (512, 48)),
    6: ((1536, 24), (2560, 40)),
}


@dataclass(frozen=True)
class LabCell:
    """One NUMA cell of a lab host as its libvirtd will see it."""

    free_mib: int
    memory_mib: int = DEFAULT_CELL_MIB
    hugepages: int = DEFAULT_HUGEPAGES  # 2 MiB pages in the pool
    hugepages_free: int | None = None  # None = the whole pool is free

    def __post_init__(self) -> None:
        if not 0 < self.memory_mib <= 1 << 24:
            raise ValueError(f"cell memory_mib must be 1..{1 << 24} (got {self.memory_mib})")
        if not 0 <= self.free_mib <= self.memory_mib:
            raise ValueError(f"cell free_mib must be 0..memory_mib={self.memory_mib} (got {self.free_mib})")
        pool_mib = self.hugepages * HUGEPAGE_KIB // 1024
        if not 0 <= pool_mib <= self.memory_mib:
            raise ValueError(f"cell hugepages must be 0..{self.memory_mib * 1024 // HUGEPAGE_KIB} "
                             f"(got {self.hugepages})")
        if self.hugepages_free is None:
            object.__setattr__(self, "hugepages_free", self.hugepages)
        elif not 0 <= self.hugepages_free <= self.hugepages:
            raise ValueError(f"cell hugepages_free must be 0..hugepages={self.hugepages} "
                             f"(got {self.hugepages_free})")

    @property
    def free_pages(self) -> int:
        """Free 2 MiB pages (``hugepages_free``, which None made the whole pool)."""
        assert self.hugepages_free is not None
        return self.hugepages_free

    def to_json(self) -> dict[str, int]:
        return {"free_mib": self.free_mib, "memory_mib": self.memory_mib,
                "hugepages": self.hugepages, "hugepages_free": self.free_pages}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> "LabCell":
        return cls(free_mib=int(data["free_mib"]), memory_mib=int(data["memory_mib"]),
                   hugepages=int(data["hugepages"]), hugepages_free=int(data["hugepages_free"]))


def default_cells(host: str) -> tuple[LabCell, ...]:
    """Two cells of 4 GiB with a 64-page 2 MiB pool each; free memory and pages differ by host."""
    return tuple(LabCell(free_mib=free, hugepages_free=pages)
                 for free, pages in _DEFAULT_FREE[host_index(host)])


def parse_numa_option(text: str) -> tuple[str, tuple[LabCell, ...]]:
    """``h1=512,3584`` (free MiB of each cell) or ``h1=512:8,3584:64`` (and free 2 MiB pages)."""
    host, sep, cells = text.partition("=")
    if not sep or not re.fullmatch(r"h[1-9]", host.strip()):
        raise ValueError(f"--numa takes HOST=FREE,FREE[,...] like h1=512,3584 (got {text!r})")
    out = []
    for item in cells.split(","):
        m = re.fullmatch(r"\s*(\d+)(?::(\d+))?\s*", item)
        if not m:
            raise ValueError(f"--numa {host}: a cell is FREE_MIB or FREE_MIB:FREE_HUGEPAGES (got {item!r})")
        free, pages = int(m.group(1)), m.group(2)
        try:
            out.append(LabCell(free_mib=free, memory_mib=max(DEFAULT_CELL_MIB, free),
                               hugepages_free=None if pages is None else int(pages)))
        except ValueError as e:
            raise ValueError(f"--numa {host}: {e}") from None
    if not 1 <= len(out) <= 8:
        raise ValueError(f"--numa {host}: 1 to 8 cells (got {len(out)})")
    return host.strip(), tuple(out)


def split_cpus(cpus: list[int], cells: int) -> list[list[int]]:
    """The machine's CPUs in contiguous runs, one per cell (the first cells get the extra ones)."""
    base, extra = divmod(len(cpus), cells)
    out, start = [], 0
    for i in range(cells):
        n = base + (1 if i < extra else 0)
        out.append(cpus[start:start + n])
        start += n
    return out


def _cpulist(cpus: list[int]) -> str:
    runs: list[str] = []
    for c in cpus:
        if runs and "-" in runs[-1] and int(runs[-1].split("-")[1]) == c - 1:
            runs[-1] = f"{runs[-1].split('-')[0]}-{c}"
        elif runs and "-" not in runs[-1] and int(runs[-1]) == c - 1:
            runs[-1] = f"{runs[-1]}-{c}"
        else:
            runs.append(str(c))
    return ",".join(runs)


def _cpumap(cpus: list[int], nr_cpus: int) -> str:
    """The kernel's bitmap format: 32-bit hex words, most significant first, comma-separated."""
    mask = sum(1 << c for c in cpus)
    words = max(1, (nr_cpus + 31) // 32)
    parts = [f"{(mask >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words))]
    # The kernel prints only as many hex digits as nr_cpus needs in the top word.
    top_bits = nr_cpus - 32 * (words - 1)
    parts[0] = parts[0][-max(1, (top_bits + 3) // 4):]
    return ",".join(parts)


def numa_tree(cells: tuple[LabCell, ...], cpus: list[int],
              node_ids: tuple[int, ...] | None = None) -> dict[str, str]:
    """Files of a fake /sys/devices/system/node (relative path -> content; ``@`` = symlink target).

    Holds what libnuma and libvirt read: ``online``/``possible``/``has_*``, and per node
    ``cpulist``, ``cpumap``, ``cpuN`` links to the real CPUs (libvirt reads their topology),
    ``distance``, ``meminfo`` (MemTotal, MemFree) and the 2 MiB hugepage pool. ``node_ids``
    (default 0..n-1) may leave holes, as a machine with a node offline does.
    """
    if not cells:
        raise ValueError("a lab host has at least one NUMA cell")
    ids = tuple(node_ids) if node_ids is not None else tuple(range(len(cells)))
    if len(ids) != len(cells) or list(ids) != sorted(set(ids)) or ids[0] != 0:
        raise ValueError(f"node ids must rise from 0, one per cell (got {ids})")
    nodes = _cpulist(list(ids))
    nr_cpus = max(cpus) + 1 if cpus else 1
    per_cell = split_cpus(cpus, len(cells))
    files = {"online": nodes, "possible": nodes, "has_memory": nodes, "has_normal_memory": nodes,
             "has_cpu": _cpulist([i for i, c in zip(ids, per_cell) if c]),
             "has_generic_initiator": ""}
    for i, cell, own in zip(ids, cells, per_cell):
        d = f"node{i}"
        files[f"{d}/cpulist"] = _cpulist(own)
        files[f"{d}/cpumap"] = _cpumap(own, nr_cpus)
        for c in own:
            files[f"{d}/cpu{c}"] = f"@/sys/devices/system/cpu/cpu{c}"
        # The kernel lists the distance to every online node, in id order.
        files[f"{d}/distance"] = " ".join("10" if j == i else "20" for j in ids)
        total_kib, free_kib = cell.memory_mib * 1024, cell.free_mib * 1024
        files[f"{d}/meminfo"] = "\n".join(f"Node {i} {k + ':':<16}{v:>9} kB" for k, v in (
            ("MemTotal", total_kib), ("MemFree", free_kib), ("MemUsed", total_kib - free_kib)))
        hp = f"{d}/hugepages/hugepages-{HUGEPAGE_KIB}kB"
        files[f"{hp}/nr_hugepages"] = str(cell.hugepages)
        files[f"{hp}/free_hugepages"] = str(cell.free_pages)
        files[f"{hp}/surplus_hugepages"] = "0"
    return {k: v if v.startswith("@") else v + "\n" for k, v in files.items()}


QEMU = "/usr/bin/qemu-system-x86_64"


def qemu_wrapper(real_qemu: str) -> str:
    """What the host runs as QEMU: the real one, with every memory binding moved to node 0.

    libvirt turns a strict ``<numatune>`` into ``host-nodes``/``policy=bind`` on QEMU's memory
    backends, and the kernel refuses to bind to a node it does not have (only node 0 is real),
    so without this a VM bound to cell 1 of a lab host would never start.
    """
    return f"""#!/bin/sh
# Generated by haagent lab: the machine has one NUMA node, the lab's hosts pretend to have more
# (docs/lab.md, NUMA cells), so memory bound to any cell is bound to node 0.
for a in "$@"; do
  shift
  case $a in
    *host-nodes*) a=$(printf '%s' "$a" | sed -E 's/"host-nodes":\\[[0-9,]*\\]/"host-nodes":[0]/g; s/host-nodes=[0-9-]+/host-nodes=0/g') ;;
  esac
  set -- "$@" "$a"
done
exec {real_qemu} "$@"
"""


def write_numa_tree(root: Path, cells: tuple[LabCell, ...], cpus: list[int],
                    node_ids: tuple[int, ...] | None = None) -> None:
    """Write (or rewrite in place, for a running host) the fake node tree under ``root``."""
    files = numa_tree(cells, cpus, node_ids)
    root.mkdir(parents=True, exist_ok=True)
    for old in sorted(root.glob("node*"), reverse=True):
        if old.name not in {p.split("/")[0] for p in files}:
            shutil.rmtree(old)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("@"):
            if not path.is_symlink():
                path.symlink_to(content[1:])
            continue
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)


def lab_root() -> Path:
    return Path(os.environ.get("HAAGENT_LAB_ROOT", "/var/lib/haagent/lab"))


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix or ""):
        raise ValueError(f"prefix must be 1-8 lowercase letters or digits, starting with a letter "
                         f"(got {prefix!r})")
    return prefix


def host_names(n: int) -> list[str]:
    return [f"h{i}" for i in range(1, n + 1)]


def host_index(host: str) -> int:
    return int(host[1:])


@dataclass(frozen=True)
class Layout:
    """Where everything of one lab lives."""

    prefix: str

    @property
    def dir(self) -> Path:
        return lab_root() / self.prefix

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.dir / "lock"

    @property
    def shared_dir(self) -> Path:
        return self.dir / "shared"

    @property
    def bmc_dir(self) -> Path:
        return self.dir / "bmc"

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    def numa_dir(self, host: str) -> Path:
        """The fake /sys/devices/system/node of the host (bind-mounted by its init)."""
        return self.host_dir(host) / "sys-node"

    def real_qemu(self, host: str) -> Path:
        """Where the host's init bind-mounts the real QEMU (its wrapper takes the usual path)."""
        return self.host_dir(host) / "qemu" / "qemu-system-x86_64"

    def logs_dir(self, host: str) -> Path:
        return self.host_dir(host) / "logs"

    def host_state_file(self, host: str) -> Path:
        return self.host_dir(host) / "host.json"

    def init_pidfile(self, host: str) -> Path:
        return self.host_dir(host) / "init.pid"

    def libvirt_socket(self, host: str) -> Path:
        return self.host_dir(host) / "run-libvirt" / "libvirt-sock"

    def etcd_dir(self, host: str) -> Path:
        return self.host_dir(host) / "etcd"

    def agent_config(self, host: str) -> Path:
        return self.host_dir(host) / "agent.toml"

    @property
    def guest_dir(self) -> Path:
        """The Linux guests' kernel and initramfs, on the shared storage agents accept them from."""
        return self.shared_dir / "guest"

    def guest_console(self, vm: str) -> Path:
        """A Linux guest's console (ttyS0): both QEMUs of a live migration append to this file."""
        return self.shared_dir / "consoles" / f"{vm}.log"

    def guest_socket(self, vm: str) -> str:
        """A Linux guest's load channel (ttyS1) as its host sees it."""
        return f"{GUEST_SOCKET_DIR}/{vm}.sock"

    def guest_socket_on(self, host: str, vm: str) -> Path:
        """The same socket from the root namespace, in the copy of the host that runs the guest."""
        return self.host_dir(host) / "var-lib-libvirt" / GUEST_SOCKET_DIR.removeprefix("/var/lib/libvirt/") / f"{vm}.sock"

    def bmc_fault_file(self, host: str) -> Path:
        return self.bmc_dir / f"{host}.json"

    @property
    def bmc_password_file(self) -> Path:
        return self.bmc_dir / "password"

    @property
    def bmcd_pidfile(self) -> Path:
        return self.bmc_dir / "bmcd.pid"

    @property
    def pki_dir(self) -> Path:
        """The lab's etcd CA and certificates (haagent/store/pki.py); empty with --insecure."""
        return self.dir / "pki"

    @property
    def monitoring_dir(self) -> Path:
        """Prometheus's and Alertmanager's configs, data and logs (`lab up --monitoring`)."""
        return self.dir / "monitoring"

    @property
    def operator_config(self) -> Path:
        """A config for the haagent CLI in the root namespace: the etcd sockets, the operator's cert."""
        return self.dir / "operator.toml"

    @property
    def admin_config(self) -> Path:
        """Like operator_config with etcd's root certificate and [etcd.users]: `haagent etcd setup-rbac`."""
        return self.dir / "admin.toml"

    # -- namespaces (files under /run/netns, created by `ip netns add`) ------------------------

    def netns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @property
    def bridge_netns(self) -> str:
        return f"{self.prefix}-br"

    @property
    def mgmt_netns(self) -> str:
        return f"{self.prefix}-mgmt"

    def owns_netns(self, name: str) -> bool:
        """True for every namespace name this lab could have created (for cleanup of a half lab)."""
        return re.fullmatch(rf"{re.escape(self.prefix)}-(h\d+|br|mgmt)", name) is not None

    def hostname(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def host_uuid(self, host: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"haagent-lab:{self.prefix}:{host}"))

    def vm_uuid(self, vm: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"haagent-lab:{self.prefix}:vm:{vm}"))


def address(host: str) -> str:
    return f"{CLUSTER_NET}.{10 + host_index(host)}"


def mgmt_address(host: str) -> str:
    return f"{MGMT_NET}.{10 + host_index(host)}"


def bmc_address(host: str) -> str:
    return f"{MGMT_NET}.{100 + host_index(host)}"


def bmc_port(host: str) -> int:
    return BMC_PORT_BASE + host_index(host)


def vm_names(m: int) -> list[str]:
    return [f"vm{i}" for i in range(1, m + 1)]


def spread(vms: list[str], hosts: list[str]) -> dict[str, str]:
    """Round-robin: vm1 on h1, vm2 on h2, ..., so every host starts with about the same load."""
    return {vm: hosts[i % len(hosts)] for i, vm in enumerate(vms)}


# -- generated files -----------------------------------------------------------------------------


def libvirtd_conf(host_uuid: str, tls: bool = False) -> str:
    """``tls``: libvirtds talk to each other only over TLS with certificates from the lab's CA
    (docs/hypervisor.md, "Live migration over TLS"); no TCP listener."""
    if tls:
        transport = f"""\
listen_tls = 1
listen_tcp = 0
tls_port = "{LIBVIRT_TLS_PORT}"
ca_file = "{LIBVIRT_PKI}/cacert.pem"
cert_file = "{LIBVIRT_PKI}/servercert.pem"
key_file = "{LIBVIRT_PKI}/serverkey.pem"
tls_no_verify_certificate = 0
"""
    else:
        # NOTE: TCP without auth is only acceptable because this socket lives in a lab namespace
        # nothing outside the lab can reach; it is what p2p migration between lab hosts uses.
        transport = f"""\
listen_tls = 0
listen_tcp = 1
tcp_port = "{LIBVIRT_TCP_PORT}"
"""
    return transport + f"""\
listen_addr = "0.0.0.0"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
host_uuid = "{host_uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


def qemu_conf(migration_host: str, tls: bool = False) -> str:
    # The settings LAB-NOTES found necessary to run QEMU as root without cgroups, mount
    # namespaces or virtlogd; migration_host because lab hostnames resolve nowhere.
    return f"""\
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
remember_owner = 0
migration_host = "{migration_host}"
""" + (f"""\
# the migration data stream (QEMU to QEMU) over TLS too; a migration without --tls is refused
migrate_tls_x509_cert_dir = "{LIBVIRT_PKI}/qemu"
migrate_tls_x509_verify = 1
migrate_tls_force = 1
""" if tls else "")


def libvirt_uri_tls(address: str) -> str:
    """A peer libvirtd over TLS, with the client certificate libvirt should present (pkipath)."""
    return f"qemu+tls://{address}/system?pkipath={LIBVIRT_PKI}"


# The certificate files libvirt (libvirtd and its client side in a p2p migration) and QEMU read,
# by role: (ca, cert, key) -> file names in LIBVIRT_PKI and LIBVIRT_PKI/qemu.
LIBVIRT_PKI_FILES = {
    "": (("ca", "cacert.pem"), ("cert", "servercert.pem"), ("key", "serverkey.pem"),
         ("cert", "clientcert.pem"), ("key", "clientkey.pem")),
    "qemu": (("ca", "ca-cert.pem"), ("cert", "server-cert.pem"), ("key", "server-key.pem"),
             ("cert", "client-cert.pem"), ("key", "client-key.pem")),
}


# The agents' HA mark (haagent/agent/managed.py): VMs carrying it are managed by haagent.
HA_MARK = '<ha:vm xmlns:ha="https://haagent.dev/xmlns/ha/1" policy="restart"/>'


_APOS = {"'": "&apos;"}


@dataclass(frozen=True)
class GuestBoot:
    """What a Linux guest's domain points at: kernel, initramfs, command line, its two serial ports."""

    kernel: str
    initrd: str
    cmdline: str
    console: str  # ttyS0, a file on the shared storage
    socket: str  # ttyS1, a unix socket in the host's libvirt directory


def domain_xml(name: str, vm_uuid: str, prefix: str, kvm: bool, disk: str | None, ha: bool = True,
               memory_mib: int = VM_MEMORY_MIB, vcpus: int = 1, guest: GuestBoot | None = None,
               numa_strict: str | None = None) -> str:
    """A VM with no OS (SeaBIOS finds nothing to boot and idles), or with ``guest`` the lab's
    Linux guest booted directly from its kernel and initramfs (haagent/lab/guest_image.py).

    ``numa_strict`` (a nodeset, e.g. "0") binds its memory strictly to those host cells.
    """
    ha_mark = f"\n    {HA_MARK}" if ha else ""
    numatune = (f"\n  <numatune><memory mode='strict' nodeset='{numa_strict}'/></numatune>"
                if numa_strict is not None else "")
    # /dev/kvm here only works with qemu64 and svm off (LAB-NOTES); TCG needs no CPU element.
    cpu = ("<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>"
           "<feature policy='disable' name='svm'/></cpu>") if kvm else ""
    disk_xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
                f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>") if disk else ""
    if guest is None:
        boot = "<boot dev='hd'/>"
        serials = ""
    else:
        boot = (f"<kernel>{escape(guest.kernel)}</kernel><initrd>{escape(guest.initrd)}</initrd>"
                f"<cmdline>{escape(guest.cmdline)}</cmdline>")
        # append: the destination QEMU of a live migration opens the same file while the source
        # still writes to it; both only ever add lines.
        serials = (f"<serial type='file'><source path='{escape(guest.console, _APOS)}' append='on'/>"
                   f"<target port='0'/></serial>\n    "
                   f"<serial type='unix'><source mode='bind' path='{escape(guest.socket, _APOS)}'/>"
                   f"<target port='1'/></serial>")
    return f"""\
<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{name}</name>
  <uuid>{vm_uuid}</uuid>
  <title>haagent lab {prefix} VM {name}</title>
  <metadata>
    <lab:vm xmlns:lab="https://haagent.dev/xmlns/lab/1" lab="{prefix}"/>{ha_mark}
  </metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  <currentMemory unit='MiB'>{memory_mib}</currentMemory>
  <vcpu>{vcpus}</vcpu>{numatune}
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disk_xml}
    {serials}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


# The lab's etcd users besides the hosts' agents (whose certificate CN is the host's name).
OPERATOR_USER = "operator"
READER_USER = "reader"


def etcd_users(hosts: list[str]) -> dict[str, str]:
    """The lab's etcd users: certificate CN -> role (docs/security.md)."""
    return {**{h: "haagent-agent" for h in hosts}, OPERATOR_USER: "haagent-operator", READER_USER: "haagent-reader"}


def etcd_toml(etcd_endpoints: list[str], tls: tuple[str, str, str] | None) -> str:
    """An [etcd] table; ``tls`` is (ca_cert, cert, key)."""
    endpoints = ", ".join(f'"{e}"' for e in etcd_endpoints)
    lines = ["[etcd]", f"endpoints = [{endpoints}]"]
    if tls is not None:
        lines += [f'ca_cert = "{tls[0]}"', f'cert = "{tls[1]}"', f'key = "{tls[2]}"']
    return "\n".join(lines) + "\n"


def cli_toml(prefix: str, etcd_endpoints: list[str], tls: tuple[str, str, str] | None,
             users: dict[str, str] | None = None) -> str:
    """A config for the haagent CLI in the root namespace (etcd's unix sockets, no lab address)."""
    out = f"""\
# Generated by `haagent lab up` for lab {prefix}: `haagent status --config <this file>`.
cluster = "{prefix}"
host = "cli"

{etcd_toml(etcd_endpoints, tls)}"""
    if users:
        out += "\n[etcd.users]\n" + "".join(f'{u} = "{r}"\n' for u, r in sorted(users.items()))
    return out + '\n[metrics]\nlisten = ""\n\n[libvirt]\nenabled = false\n'


def agent_toml(prefix: str, host: str, etcd_endpoints: list[str], fencing: str, images: str,
               tls: tuple[str, str, str] | None = None, migration: str = "") -> str:
    """The agent's config on one lab host: every address in it is a lab address."""
    return f"""\
# Generated by `haagent lab up` for host {host} of lab {prefix}.
cluster = "{prefix}"
host = "{host}"

{etcd_toml(etcd_endpoints, tls)}
[libvirt]
# The host's own libvirtd, inside the host's mount namespace.
uri = "qemu:///system"

[metrics]
listen = "{address(host)}:{METRICS_PORT}"

[log]
format = "json"

[agent]
# the lab's shared storage: domain specs from etcd may keep their disks only there, and a disk
# there is on every host (the same directory), so it never stops a live migration
image_dirs = ["{images}"]
shared_paths = ["{images}"]
# The lab's hosts share one machine: a host's load is its VMs' (the machine's CPU and memory
# figures are everybody's), smoothed over 15 s so a test sees a burst within seconds.
load_source = "vms"
load_smoothing = 15
{migration}{fencing}"""


# The agent config sections the lab writes itself (``Lab.up(agent_config=...)`` adds to
# [migration] only, and may add any other section).
AGENT_SECTIONS = frozenset({"etcd", "libvirt", "metrics", "log", "agent", "fencing"})


def migration_toml(hosts: list[str], libvirt_tls: bool, extra: Mapping[str, Mapping[str, object]] | None = None) -> str:
    """The agents' [migration] section: the peers' libvirtds at their lab addresses; then the
    ``extra`` config a lab was built with (``Lab.up(agent_config=...)``): more [migration] keys,
    and other sections."""
    extra = extra or {}
    uri = libvirt_uri_tls("{host}") if libvirt_tls else "qemu+tcp://{host}/system"
    out = ["", "[migration]", f'uri = "{uri}"', f"tls = {'true' if libvirt_tls else 'false'}",
           "deadline_floor = 20"]
    out += [f"{k} = {json.dumps(v)}" for k, v in sorted((extra.get("migration") or {}).items())]
    out += ["", "[migration.peers]"]
    out += [f'{h} = "{address(h)}"' for h in hosts]
    for section, values in sorted(extra.items()):
        if section != "migration":
            out += ["", f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in sorted(values.items())]
    return "\n".join(out) + "\n"


def fencing_toml(hosts: list[str], password_file: str, check_interval: float | None = None) -> str:
    """The agents' [fencing] section: one IPMI device per host, its BMC on the mgmt network.

    ``check_interval``: the leader's fence path check (default: the agent's, 300 s)."""
    # Short timeouts: a lab BMC answers in ~50 ms, and the drill measures the failover path.
    out = ["", "[fencing]", "power_timeout = 10", "call_timeout = 5", "retries = 1",
           "poll_interval = 0.5"]
    out += [f"check_interval = {check_interval:g}"] if check_interval is not None else []
    out += [""]
    for h in hosts:
        out += [f"[fencing.devices.ipmi-{h}]", 'plugin = "ipmi"', f'address = "{bmc_address(h)}"',
                f"port = {bmc_port(h)}", f'username = "{BMC_USER}"', f'password_file = "{password_file}"', ""]
    for h in hosts:
        out += [f"[fencing.hosts.{h}]", f'levels = [["ipmi-{h}"]]', ""]
    return "\n".join(out)


def prometheus_url(path: str = "") -> str:
    return f"http://{MONITOR_ADDRESS}:{PROMETHEUS_PORT}{path}"


def alertmanager_url(path: str = "") -> str:
    return f"http://{MONITOR_ADDRESS}:{ALERTMANAGER_PORT}{path}"


def prometheus_yml(prefix: str, hosts: list[str], rules_file: str) -> str:
    """Prometheus's config: every agent's metrics endpoint, haagent's alert rules, the lab's
    Alertmanager. Targets carry ``agent="hN"`` (not ``host``: haagent's metrics have their own)."""
    targets = "\n".join(f"""\
      - targets: ["{address(h)}:{METRICS_PORT}"]
        labels: {{agent: "{h}"}}""" for h in hosts)
    return f"""\
# Generated by `haagent lab up --monitoring` for lab {prefix}.
global:
  scrape_interval: {SCRAPE_INTERVAL}s
  scrape_timeout: {SCRAPE_INTERVAL}s
  evaluation_interval: {EVALUATION_INTERVAL}s
  external_labels: {{lab: "{prefix}"}}
rule_files:
  - "{rules_file}"
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{MONITOR_ADDRESS}:{ALERTMANAGER_PORT}"]
scrape_configs:
  - job_name: haagent
    static_configs:
{targets}
"""


def alertmanager_yml(prefix: str) -> str:
    """Alertmanager's config: one receiver with no integration (the API shows what arrived)."""
    return f"""\
# Generated by `haagent lab up --monitoring` for lab {prefix}: alerts are kept and shown by the
# API (/api/v2/alerts), sent nowhere.
route:
  receiver: lab
  group_by: [alertname, host]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: lab
"""
