"""The fence plugin contract: metadata (name, options) plus ``status()`` and ``set_power()``.

A plugin only talks to its device. The runner (:mod:`fencing.runner`) owns the semantics:
status first, act, poll until off, deadlines, retries, logging and metrics. Plugins translate
every backend error into :mod:`haagent.errors` (``FenceAuthError``, ``FenceUnreachable``,
``FenceTimeout``, ``FenceDeviceError``) with ``raise ... from e``, and never put a secret into an
exception message, a log line or a child process's command line.

Plugins are found through the ``haagent.fencing`` entry-point group. Plugin modules import their
backend library (pyghmi, pysnmp, paramiko) inside methods, so validating a config never pays for it.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar, Mapping, Protocol

from haagent.config import secret_file_ok  # noqa: F401  (re-exported: the one rule for secret files)
from haagent.errors import FenceDeviceError

ENTRY_POINT_GROUP = "haagent.fencing"
OPTION_TYPES = ("string", "int", "float", "bool", "path", "choice", "string_list")


class FenceBadReply(FenceDeviceError):
    """The device answered a status read, but not with a power state we can read (no data, too
    short, an error code, a value that is neither on nor off). Transient: the runner retries it
    within ``power_timeout``; it is never read as "off"."""

    # NOTE: FenceDeviceError is permanent; a garbled answer from a busy BMC may well heal.
    transient = True


class PowerState(enum.Enum):
    """What a device says about the host's power."""

    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class Option:
    """One configurable option of a plugin.

    ``secret``: the option names a file whose *content* is a secret (e.g. ``password_file``);
    secrets are never accepted inline. ``per_host``: may be set per host in a level entry
    (e.g. a PDU ``outlet``), so one device definition serves many hosts.
    """

    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    secret: bool = False
    per_host: bool = False
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: unknown type {self.type!r}")
        if self.secret and self.type != "path":
            raise ValueError(f"option {self.name}: secrets must be files (type path)")


class AckSource(Protocol):
    """Where operator acknowledgements (``haagent fence ack HOST``) are found."""

    def acked(self, host: str, since: float) -> bool:
        """True if an operator acknowledged ``host`` as off at or after wall-clock ``since``."""
        ...


@dataclass(frozen=True)
class PluginContext:
    """Services the runner lends to plugins (the manual plugin's ack source, a wall clock)."""

    ack_source: AckSource | None = None
    wall_time: Callable[[], float] = time.time


class FencePlugin(ABC):
    """Base of every fence plugin: class metadata plus two power functions.

    ``confirms_power``: False for soft fencing (ssh), whose ``status()`` can only say the host
    still answers; the runner then never treats it as a confirmed power-off unless trusted.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    confirms_power: ClassVar[bool] = True

    def __init__(self, device: str, host: str, options: Mapping[str, Any],
                 context: PluginContext | None = None):
        self.device = device
        self.host = host
        self.opts = dict(options)
        self.context = context or PluginContext()

    @abstractmethod
    def status(self, timeout: float) -> PowerState:
        """Read the power state, finishing within ``timeout`` seconds where the backend allows."""

    @abstractmethod
    def set_power(self, on: bool, timeout: float) -> None:
        """Ask the device to switch power; returns once the device accepted the request."""

    def describe(self, action: str) -> str:
        """A masked, loggable form of what ``action`` sends (no secret, ever)."""
        shown = " ".join(f"{o.name}={'***' if o.secret else self.opts.get(o.name)}"
                         for o in self.options if self.opts.get(o.name) is not None)
        return f"{self.name} {action} {shown}".strip()

    def close(self) -> None:
        """Release connections; called once per fence operation."""

    def secret(self, option: str) -> str:
        """Read a secret option's file; the path may appear in errors, the content never."""
        path = self.opts.get(option)
        if not path:
            raise FenceDeviceError(f"device {self.device}: {option} is not set")
        try:
            with open(path) as f:
                value = f.read().rstrip("\r\n")
        except OSError as exc:
            raise FenceDeviceError(f"device {self.device}: cannot read {option} {path}: {exc.strerror}") from None
        if not value:
            raise FenceDeviceError(f"device {self.device}: {option} {path} is empty")
        return value

    @classmethod
    def check_option(cls, name: str, value: Any) -> str | None:
        """A plugin's own rule for one option value, beyond its type; a problem text or None."""
        return None

    @classmethod
    def option(cls, name: str) -> Option | None:
        return next((o for o in cls.options if o.name == name), None)


def discover_plugins() -> dict[str, type[FencePlugin]]:
    """Load every plugin class declared in the ``haagent.fencing`` entry-point group."""
    plugins: dict[str, type[FencePlugin]] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception:  # a broken third-party plugin must not stop the others loading
            continue
        if isinstance(cls, type) and issubclass(cls, FencePlugin):
            plugins[ep.name] = cls
    return plugins
