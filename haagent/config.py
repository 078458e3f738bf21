"""TOML configuration -> frozen, validated config objects.

Every problem is collected (not just the first) and reported as one line naming the field,
e.g. ``timing.lease_ttl: must be greater than 2 x heartbeat_interval (got 1.0)``.
Sections owned by other packages (``[fencing]``, ``[policy]``) are validated by those packages'
own parsers through the same problem list, so one run of ``haagent check-config`` shows all.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from datetime import datetime, timezone
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from haagent.errors import ConfigError
from haagent.fields import MISSING, Fields

if TYPE_CHECKING:  # names only: the sections' packages register their parsers, never imported here
    from fencing.config import FencingConfig
    from haagent.notify.config import NotifyConfig
    from policies.config import PolicyConfig

DEFAULT_PATH = "/etc/haagent/haagent.toml"

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_MISSING = MISSING


def secret_file_ok(path: str) -> str | None:
    """The one rule for secret files (fence passwords and keys, the etcd client key): None if ``path`` is a readable, non-empty file only its owner can read or write (0600 or
    0400); else a problem text naming the file and the fix (never the content)."""
    if not os.path.isabs(path):
        return f"must be an absolute path (got {path!r})"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path} does not exist (create it with the secret and run: chmod 600 {path})"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    mode = st.st_mode & 0o777
    if mode & 0o077:
        access = " and ".join(word for word, bits in (("readable", 0o044), ("writable", 0o022)) if mode & bits) \
            or "executable"
        return f"{path} is {access} by group or others (mode {mode:04o}); run: chmod 600 {path}"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by this user (uid {os.geteuid()})"
    if st.st_size == 0:
        return f"file is empty: {path}"
    return None


def certificate_problem(path: str, now: datetime | None = None) -> str | None:
    """Why a PEM certificate file cannot be used (unreadable, not PEM, expired, not yet valid); None if fine."""
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return f"{path} is not a PEM certificate"
    now = now or datetime.now(timezone.utc)
    if cert.not_valid_after_utc < now:
        return f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        return f"certificate {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


class Reader(Fields):
    """Reads typed fields out of one TOML table (``haagent.fields.Fields``), plus files."""

    def certificate(self, key: str) -> str | None:
        """An optional path to a PEM certificate that is valid now (``certificate_problem``)."""
        value = self.file(key)
        if value is not None and (problem := certificate_problem(value)) is not None:
            self.problem(key, problem)
            return None
        return value

    def file(self, key: str, secret: bool = False) -> str | None:
        """An optional path to a readable file; a ``secret`` one must be private (``secret_file_ok``)."""
        value = self.string(key, None)
        if value is None:
            return None
        if secret:
            problem = secret_file_ok(value)
            if problem:
                self.problem(key, problem)
                return None
            return value
        if not os.path.isabs(value):
            self.problem(key, f"must be an absolute path (got {value!r})")
            return None
        if not os.access(value, os.R_OK):
            self.problem(key, f"file not found or not readable: {value}")
            return None
        return value


@dataclass(frozen=True)
class EtcdEndpoint:
    """One etcd client endpoint. ``host`` may be a python3-etcd3 ``unix:/dir/name`` form."""

    url: str
    scheme: str  # http, https, unix or unixs (TLS over etcd's unix socket)
    host: str
    port: int

    def __str__(self) -> str:
        return self.url


def parse_endpoint(url: str) -> EtcdEndpoint:
    """Parse ``http://h:p``, ``https://h:p`` or ``unix[s]:///abs/dir/name:port`` (etcd's socket form)."""
    if url.startswith(("unix://", "unixs://")):
        scheme, _, rest = url.partition("://")
        base, sep, port = rest.rpartition(":")
        if not sep or not base.startswith("/") or not port.isdigit():
            raise ValueError(f"{scheme} endpoints look like {scheme}:///abs/dir/localhost:23997")
        return EtcdEndpoint(url, scheme, "unix:" + base, int(port))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http://, https://, unix:// or unixs://")
    if not parts.hostname or parts.port is None:
        raise ValueError("must name a host and a port, like http://10.0.0.1:2379")
    return EtcdEndpoint(url, parts.scheme, parts.hostname, parts.port)


# The etcd roles `haagent etcd setup-rbac` creates (their permissions: haagent/store/rbac.py).
ETCD_ROLES = ("haagent-agent", "haagent-operator", "haagent-reader")


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[EtcdEndpoint, ...]
    timeout: float = 1.0  # at most lease_ttl / 3 (check-config says why)
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    # [etcd.users]: certificate CN -> role, for `haagent etcd setup-rbac` (an admin's config)
    users: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TimingConfig:
    """Failure-detection timings, in seconds: the ``default`` preset unless ``[timing] preset``
    names another. docs/timings.md gives the measurements behind each preset."""

    heartbeat_interval: float = 0.5
    lease_ttl: int = 2
    fence_delay: float = 0.0
    new_leader_grace: float = 0.0
    report_interval: float = 5.0
    preset: str = "default"


# ``[timing] preset``: a named set of failure-detection timings; a key given beside it wins.
# fast needs etcd's election timeout at 500 ms or less (etcd rounds a shorter lease up to 1.5 x
# its election timeout); conservative trades detection time for tolerance of stalled hosts and
# etcd. docs/timings.md has the figures behind each (failover drills and the stress bench).
TIMING_PRESETS: dict[str, dict[str, float]] = {
    "fast": {"heartbeat_interval": 0.25, "lease_ttl": 1, "fence_delay": 0.0, "new_leader_grace": 0.0},
    "default": {"heartbeat_interval": TimingConfig.heartbeat_interval, "lease_ttl": TimingConfig.lease_ttl,
                "fence_delay": TimingConfig.fence_delay, "new_leader_grace": TimingConfig.new_leader_grace},
    "conservative": {"heartbeat_interval": 1.0, "lease_ttl": 5, "fence_delay": 2.0, "new_leader_grace": 5.0},
}


@dataclass(frozen=True)
class LogConfig:
    format: str = "auto"  # auto: console on a TTY, JSON otherwise
    level: str = "info"


@dataclass(frozen=True)
class AgentSection:
    """[agent]: VM-level HA and self-fencing on this host."""

    max_restart: int = 3
    restart_window: float = 600.0
    watchdog: bool = False
    self_fence_timeout: float = 5.0
    watchdog_device: str | None = None
    shutdown_policy: str = "freeze"  # a clean stop: keep VMs running, never fence (docs/design.md)
    # where domain specs from etcd may keep disks, kernels and the like (haagent/agent/domain_policy.py)
    image_dirs: tuple[str, ...] = ("/var/lib/libvirt/images",)
    block_device_dirs: tuple[str, ...] = ()  # e.g. ("/dev/mapper",) for multipath shared storage
    network_disk_protocols: tuple[str, ...] = ()  # e.g. ("rbd",) for Ceph
    # Directories (and block device dirs) on storage every host reaches at the same path (NFS,
    # CephFS, a SAN's /dev/mapper): a VM with a disk anywhere else has local disks, which a live
    # migration cannot take along (docs/design.md, "Local disks"). Network disks are always shared.
    shared_paths: tuple[str, ...] = ()
    # namespaces a spec's <metadata> may use besides haagent's own (libosinfo: virt-install's OS id)
    metadata_namespaces: tuple[str, ...] = ("http://libosinfo.org/xmlns/libvirt/domain/1.0",)
    # The load the host reports: its time constant, and whether the host's own CPU and memory
    # figures count ("host") or only its VMs' ("vms": for hosts that share a machine, as the lab's).
    load_smoothing: float = 60.0
    load_source: str = "host"


SHUTDOWN_POLICIES = ("freeze",)  # "migrate" comes with host drain


@dataclass(frozen=True)
class ManagerSection:
    """[manager]: the leader's failover guards."""

    storm_threshold: float = 0.5
    storm_window: float = 30.0
    storm_read_timeout: float = 5.0
    fence_retry_interval: float = 10.0
    watchdog_margin: float = 2.0
    auto_return_after: float | None = None


@dataclass(frozen=True)
class MigrationSection:
    """[migration]: the leader's live-migration executor (drain, undrain, vm migrate).

    A migration's deadline is ``deadline_floor`` or the time ``deadline_factor`` passes over the
    VM's memory take at ``bandwidth``, whichever is longer; past it the source aborts the job.
    """

    max_outgoing: int = 2  # migrations out of one host at once
    max_incoming: int = 2  # migrations into one host at once
    max_cluster: int = 8  # migrations in the whole cluster at once
    max_attempts: int = 3  # per VM and operation, each on another target; then the drain pauses
    deadline_floor: float = 30.0  # seconds
    deadline_factor: float = 3.0  # memory passes allowed before the deadline
    bandwidth: float = 100.0  # MiB/s expected between hosts (the deadline's yardstick)
    order: str = "largest"  # largest | name: which VMs of a host leave first
    uri: str = "qemu+tls://{host}/system"  # the destination as the source libvirtd reaches it
    # host -> the address put in ``uri`` for it, where its name does not resolve ([migration.peers])
    peers: tuple[tuple[str, str], ...] = ()
    tls: bool = False  # --tls: QEMU's migration stream over TLS too (libvirt's migrate_tls_x509 set up)
    # The libvirt tuning of each migration (a VM's HA mark may override each, see ``tuning``):
    bandwidth_cap: int = 0  # MiB/s one migration may use (virsh migrate --bandwidth); 0: no cap
    max_downtime_ms: int = 0  # the pause allowed at switch-over (virsh migrate-setmaxdowntime); 0: libvirt's
    auto_converge: bool = False  # throttle the guest's vCPUs while it dirties memory faster than it moves
    postcopy: bool = False  # allow post-copy (the guest runs on the target while memory follows)
    postcopy_after_precopy: bool = False  # switch to post-copy after the first pre-copy pass
    # --cold-ok: seconds a guest has to shut down on ACPI before it is destroyed (then started on the target)
    cold_shutdown_timeout: float = 120.0
    # --cold-ok: seconds the target has to start it (its agent gives up after that, and the leader
    # tries another target); at least COLD_START_FLOOR
    cold_start_timeout: float = 60.0

    def target_uri(self, host: str) -> str:
        """The URI the source libvirtd migrates ``host``'s VMs to."""
        return self.uri.format(host=dict(self.peers).get(host, host))

    def deadline(self, memory_mib: int, bandwidth_cap: int = 0) -> float:
        """Seconds a migration of a VM of this size may take before it is aborted (at the cap
        when it is below the expected ``bandwidth``)."""
        speed = min(self.bandwidth, bandwidth_cap) if bandwidth_cap else self.bandwidth
        return round(max(self.deadline_floor, self.deadline_factor * memory_mib / speed), 1)

    def cold_start_deadline(self) -> float:
        """Seconds a cold move's target has to start the VM, from when its agent sees the order:
        ``cold_start_timeout``, never under ``COLD_START_FLOOR`` (a start needs a few agent rounds,
        and an agent restart on the target must not use it all up)."""
        return max(COLD_START_FLOOR, self.cold_start_timeout)

    def tuning(self, overrides: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> tuple[tuple[str, Any], ...]:
        """The effective libvirt tuning of one VM's migration: this section's values, each
        replaced by the VM's own where its HA mark sets one. The one place they are resolved (the
        leader writes the result into the migration order; the source applies exactly that).
        Post-copy after pre-copy needs post-copy: a VM that turns post-copy off turns both off."""
        own = dict(overrides)
        out = {k: own.get(k, getattr(self, k)) for k in MIGRATION_TUNING}
        out["postcopy_after_precopy"] = bool(out["postcopy_after_precopy"] and out["postcopy"])
        return tuple(sorted(out.items()))


COLD_START_FLOOR = 10.0  # seconds: the least a cold move's target is given to start the VM

# The [migration] keys a VM may override (its HA mark's ``migration`` attribute), and their kind.
MIGRATION_TUNING: dict[str, type] = {"bandwidth_cap": int, "max_downtime_ms": int, "auto_converge": bool,
                                     "postcopy": bool, "postcopy_after_precopy": bool}


def check_tuning(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for each bad migration tuning value: an unknown key, a wrong kind, a
    number out of range. Shared by [migration], the HA mark and the migration order's decoder."""
    problems = []
    for key, value in sorted(values.items()):
        kind = MIGRATION_TUNING.get(key)
        if kind is None:
            problems.append((key, f"unknown migration option (known: {', '.join(MIGRATION_TUNING)})"))
        elif kind is bool and not isinstance(value, bool):
            problems.append((key, f"must be true or false (got {value!r})"))
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append((key, f"must be a whole number (got {value!r})"))
        elif kind is int and not 0 <= value <= (100_000 if key == "bandwidth_cap" else 3_600_000):
            problems.append((key, f"must be between 0 and {100_000 if key == 'bandwidth_cap' else 3_600_000} "
                                  f"(0: {'no cap' if key == 'bandwidth_cap' else 'libvirt default'}; got {value!r})"))
    return problems


MIGRATION_ORDERS = ("largest", "name")

REBALANCE_MODES = ("off", "advise", "auto")


@dataclass(frozen=True)
class RebalanceSection:
    """[rebalance]: the leader's scheduled load rebalancing (docs/rebalance.md).

    Every ``interval`` seconds while the wall clock is inside ``window`` (a cron expression whose
    matching minutes are open, evaluated in ``timezone``; "always": no window), the leader plans a
    round from the live inventory when the imbalance score is above ``threshold``: ``advise``
    writes the plan as an event, ``auto`` migrates it, ``off`` plans nothing on its own.
    """

    mode: str = "advise"
    interval: float = 300.0  # seconds between rounds
    window: str = "always"
    timezone: str = "UTC"  # the window's time zone (an IANA name)
    threshold: float = 0.05  # a round plans nothing while the score is at or below this
    min_gain: float = 0.01  # each move must lower the score by at least this (hysteresis)
    max_moves_per_round: int = 4
    max_gib_per_round: float = 64.0
    vm_cooldown: float = 3600.0  # seconds a VM a rebalance moved is not moved again by one
    cpu_weight: float | None = None  # the score's weights; None: [policy.rebalance]'s (default 1)
    memory_weight: float | None = None


def window_problem(window: str, timezone: str = "UTC") -> str | None:
    """Why ``window`` (a 5-field cron expression, or "always") or ``timezone`` cannot be used; None if fine."""
    if window != "always":
        from croniter import croniter

        if len(window.split()) != 5 or not croniter.is_valid(window):
            return (f"window: must be a cron expression of 5 fields (minute hour day month weekday), "
                    f"like \"* 22-23,0-5 * * *\", or \"always\" (got {window!r})")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(timezone)
    except (ValueError, KeyError, OSError):
        return f"timezone: unknown time zone {timezone!r} (an IANA name like UTC or Europe/Paris)"
    return None


@dataclass(frozen=True)
class Config:
    cluster: str
    host: str
    etcd: EtcdConfig
    timing: TimingConfig = field(default_factory=TimingConfig)
    libvirt_uri: str = "qemu:///system"
    libvirt_enabled: bool = True
    agent: AgentSection = field(default_factory=AgentSection)
    manager: ManagerSection = field(default_factory=ManagerSection)
    migration: MigrationSection = field(default_factory=MigrationSection)
    rebalance: RebalanceSection = field(default_factory=RebalanceSection)
    metrics_listen: str | None = "127.0.0.1:9464"
    log: LogConfig = field(default_factory=LogConfig)
    # Filled by the fencing and policies packages' own parsers (entry points, see _section_parsers).
    fencing: FencingConfig | None = None
    policy: PolicyConfig | None = None
    notify: NotifyConfig | None = None  # [notify]: the leader's events as webhooks (None: none sent)
    source: str | None = None
    tags: tuple[str, ...] = ()  # this host's tags, that placement rules may require (ssd, rack-a, gpu...)


def _parse_listen(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, like 127.0.0.1:9464")
    host = host.strip("[]")
    if host not in ("", "localhost"):
        ipaddress.ip_address(host)


# Section parsers other packages register: name -> fn(raw_table, path, problems) -> object.
SectionParser = Callable[[Any, str, list[str]], Any]


def _section_parsers() -> dict[str, SectionParser]:
    """The sections other packages own ([fencing], [policy]...), registered as entry points in the
    ``haagent.config_sections`` group: the loader never imports them by name, so they may use
    this module without an import circle."""
    from importlib.metadata import entry_points

    return {ep.name: ep.load() for ep in sorted(entry_points(group="haagent.config_sections"), key=lambda e: e.name)}


def parse_config(data: Mapping[str, Any], source: str | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    top = Reader(dict(data), "", problems)

    cluster = top.string("cluster", pattern=_NAME_RE,
                         pattern_hint="must be lowercase letters, digits, '.', '_' or '-'")
    host = top.string("host", pattern=_NAME_RE,
                      pattern_hint="must be lowercase letters, digits, '.', '_' or '-'")

    e = top.sub("etcd")
    endpoints: list[EtcdEndpoint] = []
    for i, url in enumerate(e.string_list("endpoints")):
        try:
            endpoints.append(parse_endpoint(url))
        except ValueError as exc:
            problems.append(f"etcd.endpoints[{i}]: {exc} (got {url!r})")
    if e.table.get("endpoints") == []:
        e.problem("endpoints", "must list at least one endpoint")
    urls = [ep.url for ep in endpoints]
    if len(set(urls)) != len(urls):
        e.problem("endpoints", "lists the same endpoint twice")
    etcd_timeout = e.number("timeout", EtcdConfig.timeout, positive=True, maximum=60)
    ca_cert, cert, key = e.certificate("ca_cert"), e.certificate("cert"), e.file("key", secret=True)
    if (e.table.get("cert") is None) != (e.table.get("key") is None):
        e.problem("cert", "cert and key must be given together")
    if any(ep.scheme in ("https", "unixs") for ep in endpoints) and "ca_cert" not in e.table:
        e.problem("ca_cert", "is required when an endpoint uses https:// or unixs://")
    users: list[tuple[str, str]] = []
    raw_users = e.raw("users")
    raw_users = {} if raw_users is MISSING else raw_users
    if not isinstance(raw_users, dict):
        e.problem("users", "must be a table of certificate CN = role")
    else:
        for user, role in sorted(raw_users.items()):
            if role not in ETCD_ROLES:
                problems.append(f"etcd.users.{user}: unknown role {role!r} (roles: {', '.join(ETCD_ROLES)})")
            elif user == "root":
                problems.append("etcd.users.root: is etcd's own root user, created by setup-rbac; use another CN")
            else:
                users.append((user, role))
    e.finish()

    t = top.sub("timing")
    preset = t.string("preset", TimingConfig.preset, choices=tuple(TIMING_PRESETS))
    base = TIMING_PRESETS.get(preset or TimingConfig.preset, TIMING_PRESETS[TimingConfig.preset])
    heartbeat = t.number("heartbeat_interval", base["heartbeat_interval"], positive=True, maximum=60)
    ttl = t.number("lease_ttl", base["lease_ttl"], positive=True, maximum=600)
    if ttl is not None and ttl != int(ttl):
        t.problem("lease_ttl", f"must be a whole number of seconds: etcd leases are whole seconds (got {ttl!r})")
        ttl = None
    elif ttl is not None and heartbeat is not None and ttl <= 2 * heartbeat:
        t.problem("lease_ttl", f"must be greater than 2 x heartbeat_interval (got {t.table.get('lease_ttl', ttl)!r})")
        ttl = None
    fence_delay = t.number("fence_delay", base["fence_delay"], minimum=0, maximum=3600)
    grace = t.number("new_leader_grace", base["new_leader_grace"], minimum=0, maximum=3600)
    report_interval = t.number("report_interval", TimingConfig.report_interval, positive=True, maximum=3600)
    if ttl is not None and etcd_timeout is not None and "timeout" not in e.table:
        etcd_timeout = min(etcd_timeout, int(ttl / 3 * 1000) / 1000)  # the default follows a short TTL
    if ttl is not None and etcd_timeout is not None and etcd_timeout > ttl / 3:
        # The keepalive runs every TTL/3: a refresh must be able to time out and be retried (on
        # another endpoint) before the lease expires, or one slow member costs the host its lease.
        problems.append(f"etcd.timeout: must be at most timing.lease_ttl / 3 ({ttl / 3:.2f}s), so a stuck "
                        f"refresh is retried before the lease expires (got {etcd_timeout!r})")
    t.finish()

    lv = top.sub("libvirt")
    libvirt_uri = lv.string("uri", "qemu:///system")
    if libvirt_uri is not None and "://" not in libvirt_uri:
        lv.problem("uri", f"must be a libvirt URI like qemu:///system (got {libvirt_uri!r})")
    libvirt_enabled = lv.boolean("enabled", True)
    lv.finish()

    a = top.sub("agent")
    agent = AgentSection(
        max_restart=a.number("max_restart", AgentSection.max_restart, minimum=0, maximum=100, integer=True),
        restart_window=a.number("restart_window", AgentSection.restart_window, positive=True, maximum=86400),
        watchdog=a.boolean("watchdog", False),
        self_fence_timeout=a.number("self_fence_timeout", AgentSection.self_fence_timeout, positive=True, maximum=600),
        watchdog_device=a.string("watchdog_device", None),
        shutdown_policy=a.string("shutdown_policy", AgentSection.shutdown_policy, choices=SHUTDOWN_POLICIES),
        image_dirs=tuple(a.string_list("image_dirs", list(AgentSection.image_dirs))),
        block_device_dirs=tuple(a.string_list("block_device_dirs", [])),
        network_disk_protocols=tuple(a.string_list("network_disk_protocols", [])),
        shared_paths=tuple(a.string_list("shared_paths", [])),
        metadata_namespaces=tuple(a.string_list("metadata_namespaces", list(AgentSection.metadata_namespaces))),
        load_smoothing=a.number("load_smoothing", AgentSection.load_smoothing, positive=True, maximum=3600),
        load_source=a.string("load_source", AgentSection.load_source, choices=("host", "vms")),
    )
    if agent.watchdog_device is not None and not os.path.isabs(agent.watchdog_device):
        a.problem("watchdog_device", f"must be an absolute path (got {agent.watchdog_device!r})")
    if agent.watchdog and agent.watchdog_device is None:
        a.problem("watchdog_device", "is required when watchdog = true (e.g. /dev/watchdog): without a "
                                     "device nothing resets this host, and the leader would wrongly presume it did")
    if agent.watchdog and agent.self_fence_timeout is not None and agent.self_fence_timeout != int(agent.self_fence_timeout):
        a.problem("self_fence_timeout", "must be a whole number of seconds with watchdog = true: the device "
                                        f"is set to it (got {agent.self_fence_timeout!r})")
    elif agent.watchdog and agent.self_fence_timeout is not None and ttl is not None and agent.self_fence_timeout < ttl:
        # The device is fed on each lease renewal: shorter than the TTL, it resets hosts whose
        # leases are alive whenever renewals stall (every host at once on an etcd leader change).
        a.problem("self_fence_timeout", f"must be at least timing.lease_ttl ({int(ttl)}) with watchdog = true: "
                                        "the device is fed on each lease renewal, so a shorter timeout resets a "
                                        "healthy host whenever etcd stalls although its lease is still alive "
                                        f"(got {a.table.get('self_fence_timeout', agent.self_fence_timeout)!r})")
    for name in ("image_dirs", "block_device_dirs", "shared_paths"):
        for i, d in enumerate(getattr(agent, name)):
            if not os.path.isabs(d):
                problems.append(f"agent.{name}[{i}]: must be an absolute path (got {d!r})")
            elif os.path.normpath(d) == "/":
                problems.append(f"agent.{name}[{i}]: must not be / (every host file would be allowed)")
    for i, ns in enumerate(agent.metadata_namespaces):
        if "://" not in ns:
            problems.append(f"agent.metadata_namespaces[{i}]: must be an XML namespace URI like "
                            f"http://libosinfo.org/xmlns/libvirt/domain/1.0 (got {ns!r})")
    a.finish()

    mg = top.sub("manager")
    auto_return = mg.number("auto_return_after", 0, minimum=0, maximum=30 * 86400)
    manager = ManagerSection(
        storm_threshold=mg.number("storm_threshold", ManagerSection.storm_threshold, positive=True, maximum=1),
        storm_window=mg.number("storm_window", ManagerSection.storm_window, positive=True, maximum=3600),
        storm_read_timeout=mg.number("storm_read_timeout", ManagerSection.storm_read_timeout, positive=True,
                                     maximum=600),
        fence_retry_interval=mg.number("fence_retry_interval", ManagerSection.fence_retry_interval, positive=True, maximum=3600),
        watchdog_margin=mg.number("watchdog_margin", ManagerSection.watchdog_margin, minimum=0, maximum=600),
        auto_return_after=auto_return or None,
    )
    mg.finish()

    mi = top.sub("migration")
    migration = MigrationSection(
        max_outgoing=mi.number("max_outgoing", MigrationSection.max_outgoing, minimum=1, maximum=64, integer=True),
        max_incoming=mi.number("max_incoming", MigrationSection.max_incoming, minimum=1, maximum=64, integer=True),
        max_cluster=mi.number("max_cluster", MigrationSection.max_cluster, minimum=1, maximum=1024, integer=True),
        max_attempts=mi.number("max_attempts", MigrationSection.max_attempts, minimum=1, maximum=20, integer=True),
        deadline_floor=mi.number("deadline_floor", MigrationSection.deadline_floor, positive=True, maximum=86400),
        deadline_factor=mi.number("deadline_factor", MigrationSection.deadline_factor, positive=True, maximum=1000),
        bandwidth=mi.number("bandwidth", MigrationSection.bandwidth, positive=True, maximum=1e6),
        order=mi.string("order", MigrationSection.order, choices=MIGRATION_ORDERS),
        uri=mi.string("uri", MigrationSection.uri),
        tls=mi.boolean("tls", False),
        bandwidth_cap=mi.number("bandwidth_cap", 0, minimum=0, maximum=100_000, integer=True),
        max_downtime_ms=mi.number("max_downtime_ms", 0, minimum=0, maximum=3_600_000, integer=True),
        auto_converge=mi.boolean("auto_converge", False),
        postcopy=mi.boolean("postcopy", False),
        postcopy_after_precopy=mi.boolean("postcopy_after_precopy", False),
        cold_shutdown_timeout=mi.number("cold_shutdown_timeout", MigrationSection.cold_shutdown_timeout,
                                        positive=True, maximum=86400),
        cold_start_timeout=mi.number("cold_start_timeout", MigrationSection.cold_start_timeout,
                                     minimum=COLD_START_FLOOR, maximum=86400),
    )
    if migration.postcopy_after_precopy and not migration.postcopy:
        mi.problem("postcopy_after_precopy", "needs postcopy = true (it says when to switch to post-copy)")
    raw_peers = mi.raw("peers")
    if raw_peers is not MISSING:
        if not isinstance(raw_peers, dict) or not all(isinstance(v, str) and v for v in raw_peers.values()):
            mi.problem("peers", "must be a table of host = \"address\"")
        else:
            migration = replace(migration, peers=tuple(sorted(raw_peers.items())))
    if migration.uri is not None and ("{host}" not in migration.uri or "://" not in migration.uri):
        mi.problem("uri", f"must be a libvirt URI naming {{host}}, like qemu+tls://{{host}}/system (got {migration.uri!r})")
    mi.finish()

    rebalance = _rebalance_section(top.sub("rebalance"), data)
    if (rebalance.interval is not None and agent.load_smoothing is not None
            and rebalance.interval < 3 * agent.load_smoothing):
        # A round plans from the smoothed load: right after a round's migrations it still shows
        # the moved VMs on their old hosts, and a round then would move more than it should.
        problems.append(f"rebalance.interval: must be at least 3 x agent.load_smoothing ({3 * agent.load_smoothing:g}s), "
                        f"so the load the hosts report has settled after a round's migrations (got {rebalance.interval:g})")

    m = top.sub("metrics")
    metrics_listen = m.string("listen", "127.0.0.1:9464")
    if metrics_listen:
        try:
            _parse_listen(metrics_listen)
        except ValueError as exc:
            m.problem("listen", f"{exc} (got {metrics_listen!r})" if "HOST:PORT" in str(exc)
                      else f"not an IP address (got {metrics_listen!r})")
    m.finish()

    # This host's tags sit beside its name (``host`` is the name, so there is no [host] table).
    tags = tuple(top.string_list("tags", []))
    for i, tag in enumerate(tags):
        if not _NAME_RE.match(tag):
            problems.append(f"tags[{i}]: must be lowercase letters, digits, '.', '_' or '-' (got {tag!r})")

    lg = top.sub("log")
    log_cfg = LogConfig(format=lg.string("format", "auto", choices=("auto", "json", "console")),
                        level=lg.string("level", "info", choices=("debug", "info", "warning", "error")))
    lg.finish()

    sections: dict[str, Any] = {}
    for name, parser in _section_parsers().items():
        raw = top.raw(name)
        sections[name] = parser(None if raw is _MISSING else raw, name, problems)
    top.finish()

    if problems:
        raise ConfigError(problems, source)
    return Config(
        cluster=cluster, host=host,
        etcd=EtcdConfig(tuple(endpoints), etcd_timeout, ca_cert, cert, key, tuple(users)),
        timing=TimingConfig(heartbeat, int(ttl), fence_delay, grace, report_interval, preset),
        libvirt_uri=libvirt_uri, libvirt_enabled=libvirt_enabled, agent=agent, manager=manager,
        migration=migration, rebalance=rebalance, metrics_listen=metrics_listen or None, log=log_cfg,
        fencing=sections.get("fencing"), policy=_with_weights(sections.get("policy"), rebalance),
        notify=sections.get("notify"),
        source=source, tags=tuple(sorted(set(tags))),
    )


def _rebalance_section(rb: Fields, data: Mapping[str, Any]) -> RebalanceSection:
    d = RebalanceSection
    section = RebalanceSection(
        mode=rb.string("mode", d.mode, choices=REBALANCE_MODES),
        interval=rb.number("interval", d.interval, positive=True, maximum=7 * 86400),
        window=rb.string("window", d.window, non_empty=True),
        timezone=rb.string("timezone", d.timezone, non_empty=True),
        threshold=rb.number("threshold", d.threshold, non_negative=True),
        min_gain=rb.number("min_gain", d.min_gain, non_negative=True),
        max_moves_per_round=rb.number("max_moves_per_round", d.max_moves_per_round, minimum=1, maximum=1000,
                                      integer=True),
        max_gib_per_round=rb.number("max_gib_per_round", d.max_gib_per_round, positive=True),
        vm_cooldown=rb.number("vm_cooldown", d.vm_cooldown, non_negative=True, maximum=30 * 86400),
        cpu_weight=rb.number("cpu_weight", None, non_negative=True),
        memory_weight=rb.number("memory_weight", None, non_negative=True),
    )
    # The window and the time zone each on its own line: one bad field must not hide the other.
    for problem in (window_problem(section.window) if section.window is not None else None,
                    window_problem("always", section.timezone) if section.timezone is not None else None):
        if problem is not None:
            key, _, message = problem.partition(": ")
            rb.problem(key, message)
    if section.cpu_weight == 0 and section.memory_weight == 0:
        rb.problem("cpu_weight", "cpu_weight and memory_weight cannot both be 0")
    # One score for the leader and for `haagent plan`: these weights are [policy.rebalance]'s.
    policy = data.get("policy")
    given = policy.get("rebalance") if isinstance(policy, dict) else None
    for name in ("cpu_weight", "memory_weight"):
        mine = getattr(section, name)
        theirs = given.get(name) if isinstance(given, dict) else None
        if mine is not None and isinstance(theirs, (int, float)) and float(theirs) != mine:
            rb.problem(name, f"is {mine:g} but policy.rebalance.{name} is {theirs:g}: the score has one set of "
                             "weights, set it in one place")
    rb.finish()
    return section


def _with_weights(policy: Any, rebalance: RebalanceSection) -> Any:
    """``[policy]`` with the score weights ``[rebalance]`` sets, so every user of the score agrees."""
    if policy is None or (rebalance.cpu_weight is None and rebalance.memory_weight is None):
        return policy
    base = policy
    return replace(base, imbalance_cpu_weight=base.imbalance_cpu_weight if rebalance.cpu_weight is None
                   else rebalance.cpu_weight,
                   imbalance_memory_weight=base.imbalance_memory_weight if rebalance.memory_weight is None
                   else rebalance.memory_weight)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file (default /etc/haagent/haagent.toml)."""
    path = str(path or DEFAULT_PATH)
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(["file not found"], path) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], path) from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(["not UTF-8 text"], path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"], path) from None
    return parse_config(data, source=path)
