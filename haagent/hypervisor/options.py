"""Live-migration options that map 1:1 to ``virsh migrate`` flags.

An operator who knows ``virsh migrate --live --p2p --persistent --undefinesource`` reads these
fields without a glossary; ``to_virsh_args()`` prints the equivalent command line for logs and
``haagent explain``. No libvirt import here: the flag table names libvirt's constants.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Iterable

from haagent.errors import InvalidDomain

# field -> (virsh flag, libvirt VIR_MIGRATE_* flag)
BOOL_FLAGS: dict[str, tuple[str, str]] = {
    "live": ("--live", "VIR_MIGRATE_LIVE"),
    "p2p": ("--p2p", "VIR_MIGRATE_PEER2PEER"),
    "tunnelled": ("--tunnelled", "VIR_MIGRATE_TUNNELLED"),
    "persistent": ("--persistent", "VIR_MIGRATE_PERSIST_DEST"),
    "undefinesource": ("--undefinesource", "VIR_MIGRATE_UNDEFINE_SOURCE"),
    "suspend": ("--suspend", "VIR_MIGRATE_PAUSED"),
    "copy_storage_all": ("--copy-storage-all", "VIR_MIGRATE_NON_SHARED_DISK"),
    "copy_storage_inc": ("--copy-storage-inc", "VIR_MIGRATE_NON_SHARED_INC"),
    "change_protection": ("--change-protection", "VIR_MIGRATE_CHANGE_PROTECTION"),
    "unsafe": ("--unsafe", "VIR_MIGRATE_UNSAFE"),
    "offline": ("--offline", "VIR_MIGRATE_OFFLINE"),
    "compressed": ("--compressed", "VIR_MIGRATE_COMPRESSED"),
    "abort_on_error": ("--abort-on-error", "VIR_MIGRATE_ABORT_ON_ERROR"),
    "auto_converge": ("--auto-converge", "VIR_MIGRATE_AUTO_CONVERGE"),
    "postcopy": ("--postcopy", "VIR_MIGRATE_POSTCOPY"),
    "tls": ("--tls", "VIR_MIGRATE_TLS"),
    "parallel": ("--parallel", "VIR_MIGRATE_PARALLEL"),
}

# field -> (virsh option, libvirt VIR_MIGRATE_PARAM_*)
VALUE_PARAMS: dict[str, tuple[str, str]] = {
    "bandwidth": ("--bandwidth", "VIR_MIGRATE_PARAM_BANDWIDTH"),  # MiB/s
    "postcopy_bandwidth": ("--postcopy-bandwidth", "VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY"),
    "migrateuri": ("--migrateuri", "VIR_MIGRATE_PARAM_URI"),
    "listen_address": ("--listen-address", "VIR_MIGRATE_PARAM_LISTEN_ADDRESS"),
    "dname": ("--dname", "VIR_MIGRATE_PARAM_DEST_NAME"),
    "parallel_connections": ("--parallel-connections", "VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS"),
    "comp_methods": ("--comp-methods", "VIR_MIGRATE_PARAM_COMPRESSION"),
}


@dataclass(frozen=True)
class MigrationOptions:
    """One field per ``virsh migrate`` flag; defaults are haagent's usual live p2p move."""

    live: bool = True
    p2p: bool = True
    tunnelled: bool = False
    persistent: bool = True  # PERSIST_DEST: the destination keeps the definition
    undefinesource: bool = True  # UNDEFINE_SOURCE: the source forgets it, so it is never run twice
    suspend: bool = False
    copy_storage_all: bool = False
    copy_storage_inc: bool = False
    change_protection: bool = False
    unsafe: bool = False  # needed for disks on a shared directory libvirt cannot prove shared
    offline: bool = False
    compressed: bool = False
    abort_on_error: bool = False
    auto_converge: bool = False
    postcopy: bool = False  # allow post-copy ...
    postcopy_after_precopy: bool = False  # ... and switch to it after the first pre-copy pass
    tls: bool = False
    parallel: bool = False
    bandwidth: int | None = None  # MiB/s
    postcopy_bandwidth: int | None = None  # MiB/s
    max_downtime_ms: int | None = None  # virsh migrate-setmaxdowntime, applied before starting
    migrateuri: str | None = None  # where QEMU sends the data (the migration network)
    listen_address: str | None = None
    dname: str | None = None
    parallel_connections: int | None = None
    comp_methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.postcopy_after_precopy and not self.postcopy:
            problems.append("postcopy_after_precopy needs postcopy")
        if self.copy_storage_all and self.copy_storage_inc:
            problems.append("copy_storage_all and copy_storage_inc exclude each other")
        if self.tunnelled and not self.p2p:
            problems.append("tunnelled needs p2p")
        if self.offline and self.live:
            problems.append("offline and live exclude each other")
        for name in ("bandwidth", "postcopy_bandwidth", "max_downtime_ms", "parallel_connections"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                problems.append(f"{name}: must be a positive integer, got {v!r}")
        if problems:
            raise InvalidDomain("invalid migration options: " + "; ".join(problems))

    def tuned(self, tuning: Iterable[tuple[str, Any]]) -> "MigrationOptions":
        """These options with the leader's tuning of one migration applied (``[migration]``
        bandwidth_cap, max_downtime_ms, auto_converge, postcopy, postcopy_after_precopy, as
        ``MigrationSection.tuning`` resolved them; 0 means unset)."""
        t = dict(tuning)
        if not t:
            return self
        return replace(self, bandwidth=int(t.get("bandwidth_cap") or 0) or None,
                       max_downtime_ms=int(t.get("max_downtime_ms") or 0) or None,
                       auto_converge=bool(t.get("auto_converge")), postcopy=bool(t.get("postcopy")),
                       postcopy_after_precopy=bool(t.get("postcopy_after_precopy") and t.get("postcopy")))

    def flag_names(self) -> list[str]:
        """libvirt VIR_MIGRATE_* flag names this set of options turns on."""
        return [BOOL_FLAGS[f.name][1] for f in fields(self)
                if f.name in BOOL_FLAGS and getattr(self, f.name)]

    def param_values(self) -> dict[str, object]:
        """libvirt VIR_MIGRATE_PARAM_* name -> value, for the set value options."""
        out: dict[str, object] = {}
        for name, (_, param) in VALUE_PARAMS.items():
            v = getattr(self, name)
            if v is None or v == ():
                continue
            out[param] = list(v) if isinstance(v, tuple) else v
        return out

    def to_virsh_args(self, vm: str = "VM", dest_uri: str = "DEST") -> list[str]:
        """The equivalent ``virsh migrate`` command line (max downtime is a separate command)."""
        args = ["virsh", "migrate"]
        for f in fields(self):
            if f.name in BOOL_FLAGS and getattr(self, f.name):
                args.append(BOOL_FLAGS[f.name][0])
        if self.postcopy_after_precopy:
            args.append("--postcopy-after-precopy")
        for name, (opt, _) in VALUE_PARAMS.items():
            v = getattr(self, name)
            if v is None or v == ():
                continue
            args += [opt, ",".join(v) if isinstance(v, tuple) else str(v)]
        return args + [vm, dest_uri]
