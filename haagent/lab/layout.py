"""Names, addresses, paths and generated files of a lab: pure functions of the prefix and host.

Everything a lab creates is named from its prefix, so two labs with different prefixes coexist:
namespaces ``<prefix>-h1``, ``<prefix>-br``, ``<prefix>-mgmt``; the directory
``$HAAGENT_LAB_ROOT/<prefix>`` (default /var/lib/haagent/lab). Addresses and ports are the same
in every lab because each lab's networks live in namespaces of their own.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
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
LIBVIRT_TCP_PORT = 16509
LIBVIRT_TLS_PORT = 16514
# Inside a host: its own /etc/libvirt (LIBVIRT_BINDS), so each host has its own certificates.
LIBVIRT_PKI = "/etc/libvirt/pki"
METRICS_PORT = 9464
BMC_PORT = 623
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
               memory_mib: int = VM_MEMORY_MIB, vcpus: int = 1, guest: GuestBoot | None = None) -> str:
    """A VM with no OS (SeaBIOS finds nothing to boot and idles), or with ``guest`` the lab's
    Linux guest booted directly from its kernel and initramfs (haagent/lab/guest_image.py)."""
    ha_mark = f"\n    {HA_MARK}" if ha else ""
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
  <vcpu>{vcpus}</vcpu>
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
    lines = ["[etcd]", f"endpoints = [{endpoints}]", "timeout = 1.0"]
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
               tls: tuple[str, str, str] | None = None) -> str:
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
# the lab's shared storage: domain specs from etcd may keep their disks only there
image_dirs = ["{images}"]
{fencing}"""


def fencing_toml(hosts: list[str], password_file: str) -> str:
    """The agents' [fencing] section: one IPMI device per host, its BMC on the mgmt network."""
    # Short timeouts: a lab BMC answers in ~50 ms, and the drill measures the failover path.
    out = ["", "[fencing]", "power_timeout = 10", "call_timeout = 5", "retries = 1",
           "poll_interval = 0.5", ""]
    for h in hosts:
        out += [f"[fencing.devices.ipmi-{h}]", 'plugin = "ipmi"', f'address = "{bmc_address(h)}"',
                f"port = {BMC_PORT}", f'username = "{BMC_USER}"', f'password_file = "{password_file}"', ""]
    for h in hosts:
        out += [f"[fencing.hosts.{h}]", f'levels = [["ipmi-{h}"]]', ""]
    return "\n".join(out)
