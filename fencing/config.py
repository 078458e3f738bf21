"""The ``[fencing]`` config section -> a frozen, validated :class:`FencingConfig`.

Schema (docs/fencing.md has the annotated example)::

    [fencing]                      # global defaults
    power_timeout = 30             # s to confirm off, per device (status + act + poll)
    call_timeout = 10              # s, hard deadline on one plugin call
    retries = 2                    # extra attempts on transient errors only
    poll_interval = 1              # s between status polls
    check_interval = 300           # s between the leader's fence path checks (0 = off)

    [fencing.devices.<name>]       # one per BMC, PDU, agent...
    plugin = "ipmi"                # an entry point of the haagent.fencing group
    ...plugin options...           # secrets only as *_file paths
    power_timeout/call_timeout/retries = per-device overrides
    trusted = false                # soft fencing (ssh) counts as confirmed only if true

    [fencing.hosts.<host>]
    levels = [["ipmi-kvm01"], [{device = "pdu-a", outlet = 3}, {device = "pdu-b", outlet = 3}]]

Every problem is one line naming the field, e.g. ``fencing.devices.ipmi-kvm01.password_file: is
required`` or ``fencing.hosts.kvm01.levels[1].pdu-a: unknown plugin 'apc_snmpp'`` (level
indexes count from 0, like every list index in these messages).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from haagent.config import Reader
from haagent.fields import Fields
from haagent.log import is_secret_key

from fencing.plugin import FencePlugin, Option, discover_plugins, secret_file_ok

_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_DEVICE_COMMON = ("plugin", "power_timeout", "call_timeout", "retries", "trusted")


@dataclass(frozen=True)
class FenceDevice:
    """One device as one host uses it: the device's options merged with the host's overrides."""

    name: str
    plugin: str
    options: Mapping[str, Any]
    power_timeout: float
    call_timeout: float
    retries: int
    trusted: bool = False
    confirms_power: bool = True

    @property
    def confirming(self) -> bool:
        """True if this device's success proves power-off (hard fencing, or trusted soft fencing)."""
        return self.confirms_power or self.trusted


@dataclass(frozen=True)
class DeviceConfig:
    """A device as defined under ``[fencing.devices.<name>]``."""

    name: str
    plugin: str
    options: Mapping[str, Any]
    power_timeout: float
    call_timeout: float
    retries: int
    trusted: bool = False


@dataclass(frozen=True)
class HostFencing:
    """A host's ordered fencing levels; each level is a tuple of devices that must all succeed."""

    host: str
    levels: tuple[tuple[FenceDevice, ...], ...]


@dataclass(frozen=True)
class FencingConfig:
    power_timeout: float = 30.0
    call_timeout: float = 10.0
    retries: int = 2
    poll_interval: float = 1.0
    check_interval: float = 300.0
    devices: Mapping[str, DeviceConfig] = field(default_factory=lambda: MappingProxyType({}))
    hosts: Mapping[str, HostFencing] = field(default_factory=lambda: MappingProxyType({}))

    def levels_for(self, host: str) -> tuple[tuple[FenceDevice, ...], ...]:
        """The host's levels; empty if the host has no fencing configured."""
        entry = self.hosts.get(host)
        return entry.levels if entry else ()


def _check_value(opt: Option, value: Any) -> tuple[Any, str | None]:
    """Coerce one option value through the one field reader; return (value, problem)."""
    problems: list[str] = []
    f = Fields({opt.name: value}, "", problems)
    t = opt.type
    if t in ("string", "path", "choice"):
        checked = f.string(opt.name, non_empty=t != "choice", choices=opt.choices if t == "choice" else None,
                           fallback=False)
        if checked is not None and t == "path":
            if opt.secret:
                problem = secret_file_ok(checked)
                if problem:
                    return None, problem
            elif not os.path.isabs(checked):
                return None, f"must be an absolute path (got {checked!r})"
    elif t == "bool":
        checked = f.boolean(opt.name, None)
    elif t in ("int", "float"):
        checked = f.number(opt.name, minimum=opt.minimum, maximum=opt.maximum, integer=t == "int",
                           choices=tuple(opt.choices) if opt.choices else None, fallback=False)
    elif t == "string_list":
        checked = f.string_list(opt.name)
    else:  # pragma: no cover - Option validates types
        return None, f"unsupported option type {t}"
    if problems:
        return None, problems[0].split(": ", 1)[1]
    return checked, None


def _read_options(cls: type[FencePlugin], table: Mapping[str, Any], path: str, problems: list[str],
                  *, skip: tuple[str, ...], per_host_only: bool, device_path: str = "") -> dict[str, Any]:
    """Validate a table's keys against a plugin's options (a device definition or a host's overrides)."""
    out: dict[str, Any] = {}
    for key in sorted(table):
        if key in skip:
            continue
        value = table[key]
        opt = cls.option(key)
        if opt is None:
            secret_twin = cls.option(f"{key}_file")
            if secret_twin is not None and secret_twin.secret:
                problems.append(f"{path}.{key}: secrets are not accepted inline; put it in a file "
                                f"and set {key}_file")
            else:
                known = ", ".join(o.name for o in cls.options) or "none"
                problems.append(f"{path}.{key}: unknown option for plugin '{cls.name}' (known: {known})")
            continue
        if per_host_only and not opt.per_host:
            problems.append(f"{path}.{key}: cannot be set per host; set it in [{device_path}]")
            continue
        checked, problem = _check_value(opt, value)
        problem = problem or cls.check_option(key, checked)
        if problem:
            problems.append(f"{path}.{key}: {problem}")
        else:
            out[key] = checked
    return out


def _parse_device(name: str, raw: Any, defaults: FencingConfig, plugins: Mapping[str, type[FencePlugin]],
                  problems: list[str]) -> tuple[DeviceConfig | None, str | None]:
    """Parse one device; return (device or None, the reason host references should repeat)."""
    path = f"fencing.devices.{name}"
    if not _NAME_RE.match(name):
        problems.append(f"{path}: device names are letters, digits, '.', '_' or '-'")
    r = Reader(raw, path, problems)
    before = len(problems)
    plugin = r.string("plugin")
    power_timeout = r.number("power_timeout", defaults.power_timeout, positive=True, maximum=86400)
    call_timeout = r.number("call_timeout", defaults.call_timeout, positive=True, maximum=3600)
    retries = r.number("retries", defaults.retries, minimum=0, maximum=20, integer=True)
    trusted = r.boolean("trusted", False)
    if plugin is None:
        return None, "device has no plugin"
    cls = plugins.get(plugin)
    if cls is None:
        known = ", ".join(sorted(plugins)) or "none installed"
        problems.append(f"{path}.plugin: unknown plugin '{plugin}' (known: {known})")
        return None, f"unknown plugin '{plugin}'"
    options = _read_options(cls, r.table, path, problems, skip=_DEVICE_COMMON, per_host_only=False)
    for opt in cls.options:
        if opt.name in options:
            continue
        if opt.required and not opt.per_host:
            problems.append(f"{path}.{opt.name}: is required")
        elif opt.default is not None:
            options[opt.name] = opt.default
    if trusted and cls.confirms_power:
        problems.append(f"{path}.trusted: only applies to soft fencing; '{plugin}' confirms power by itself")
    if len(problems) > before:
        return None, f"device has errors (see {path})"
    return DeviceConfig(name, plugin, MappingProxyType(options), power_timeout, call_timeout, retries,
                        trusted), None


def _parse_host(host: str, raw: Any, devices: dict[str, DeviceConfig], broken: dict[str, str],
                plugins: Mapping[str, type[FencePlugin]], problems: list[str]) -> HostFencing | None:
    path = f"fencing.hosts.{host}"
    r = Reader(raw, path, problems)
    raw_levels = r.raw("levels")
    r.finish()
    if not isinstance(raw_levels, list) or not raw_levels:
        problems.append(f"{path}.levels: is required: a list of levels, each a list of devices")
        return None
    before = len(problems)
    levels: list[tuple[FenceDevice, ...]] = []
    for i, raw_level in enumerate(raw_levels):
        lpath = f"{path}.levels[{i}]"
        if not isinstance(raw_level, list) or not raw_level:
            problems.append(f"{lpath}: must be a non-empty list of devices (names or {{device = ...}} tables)")
            continue
        level: list[FenceDevice] = []
        seen: set[str] = set()
        for entry in raw_level:
            overrides: dict[str, Any] = {}
            if isinstance(entry, str):
                name = entry
            elif isinstance(entry, dict) and isinstance(entry.get("device"), str):
                name = entry["device"]
                overrides = {k: v for k, v in entry.items() if k != "device"}
            else:
                problems.append(f"{lpath}: each entry is a device name or a table with device = NAME (got {entry!r})")
                continue
            epath = f"{lpath}.{name}"
            if name in seen:
                problems.append(f"{epath}: listed twice in one level")
                continue
            seen.add(name)
            if name in broken:
                problems.append(f"{epath}: {broken[name]}")
                continue
            dev = devices.get(name)
            if dev is None:
                problems.append(f"{epath}: no such device (define [fencing.devices.{name}])")
                continue
            cls = plugins[dev.plugin]
            merged = dict(dev.options)
            merged.update(_read_options(cls, overrides, epath, problems, skip=(), per_host_only=True,
                                        device_path=f"fencing.devices.{name}"))
            for opt in cls.options:
                if opt.required and opt.per_host and opt.name not in merged:
                    problems.append(f"{epath}.{opt.name}: is required (set it here or in [fencing.devices.{name}])")
            level.append(FenceDevice(name, dev.plugin, MappingProxyType(merged), dev.power_timeout,
                                     dev.call_timeout, dev.retries, dev.trusted, cls.confirms_power))
        levels.append(tuple(level))
    if len(problems) > before:
        return None
    last = levels[-1]
    soft = [d.name for d in last if not d.confirming]
    if soft:
        problems.append(f"{path}.levels[{len(levels) - 1}]: {', '.join(soft)} cannot confirm power-off "
                        f"(soft fencing); add a confirming level after it or set trusted = true on the device")
        return None
    return HostFencing(host, tuple(levels))


def parse_fencing_section(raw: Any, path: str, problems: list[str],
                          plugins: Mapping[str, type[FencePlugin]] | None = None) -> FencingConfig:
    """Validate ``[fencing]`` (``raw`` is None when absent); append one line per problem."""
    if raw is None:
        return FencingConfig()
    plugins = discover_plugins() if plugins is None else plugins
    r = Reader(raw, path, problems)
    defaults = FencingConfig(
        power_timeout=r.number("power_timeout", FencingConfig.power_timeout, positive=True, maximum=86400),
        call_timeout=r.number("call_timeout", FencingConfig.call_timeout, positive=True, maximum=3600),
        retries=r.number("retries", FencingConfig.retries, minimum=0, maximum=20, integer=True),
        poll_interval=r.number("poll_interval", FencingConfig.poll_interval, positive=True, maximum=60),
        check_interval=r.number("check_interval", FencingConfig.check_interval, minimum=0, maximum=86400),
    )
    for key in list(r.table):
        if key not in ("devices", "hosts") and is_secret_key(key) and not key.endswith("_file"):
            r.seen.add(key)
            r.problem(key, "secrets are not accepted inline; use a *_file option on a device")
    r.seen.update(("devices", "hosts"))
    raw_devices = r.table.get("devices")
    raw_hosts = r.table.get("hosts")
    r.finish()
    devices: dict[str, DeviceConfig] = {}
    broken: dict[str, str] = {}
    if isinstance(raw_devices, dict):
        for name in sorted(raw_devices):
            dev, why = _parse_device(name, raw_devices[name], defaults, plugins, problems)
            if dev is not None:
                devices[name] = dev
            else:
                broken[name] = why or "device has errors"
    elif raw_devices is not None:
        problems.append(f"{path}.devices: must be a table of devices")
    hosts: dict[str, HostFencing] = {}
    if isinstance(raw_hosts, dict):
        for host in sorted(raw_hosts):
            entry = _parse_host(host, raw_hosts[host], devices, broken, plugins, problems)
            if entry is not None:
                hosts[host] = entry
    elif raw_hosts is not None:
        problems.append(f"{path}.hosts: must be a table of hosts")
    return FencingConfig(defaults.power_timeout, defaults.call_timeout, defaults.retries,
                         defaults.poll_interval, defaults.check_interval,
                         MappingProxyType(devices), MappingProxyType(hosts))
