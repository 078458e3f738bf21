"""The fence runner: gives every plugin the same semantics, deadlines, retries, logs and metrics.

Per device: read the status first (already off is success), act, then poll the status until off
is confirmed within the device's ``power_timeout``. Every plugin call runs in a worker thread
under a hard deadline (pyghmi can hang forever); a call that overruns is abandoned and counts as
a ``FenceTimeout``. Transient errors (``error.transient``) are retried with tenacity; permanent
ones (wrong password) end the device at once.

Per host: levels are tried in order; a level succeeds only if all its devices confirm, and the
first confirming level ends fencing. A level holding soft fencing (ssh, untrusted) never ends
fencing on its own: the next level's status-first read confirms (or fences) the host.

The failover manager depends on the :class:`Fencer` port, which :class:`FenceRunner` implements.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

import tenacity

from haagent.errors import (FenceAuthError, FenceDeviceError, FenceError, FenceTimeout, FenceUnreachable,
                            HaagentError)
from haagent.log import get_logger

from fencing import metrics
from fencing.config import FenceDevice, FencingConfig
from fencing.plugin import FencePlugin, PluginContext, PowerState, discover_plugins

T = TypeVar("T")
log = get_logger("haagent.fencing")


class Outcome(enum.Enum):
    """How a device, a level or a whole host fence operation ended."""

    CONFIRMED_OFF = "confirmed_off"  # a status read showed the power off
    FAILED = "failed"  # a definite error (auth, unreachable, device error); see reason
    TIMED_OUT = "timed_out"  # power not confirmed off within power_timeout, or a call hung
    UNCONFIRMED = "unconfirmed"  # soft fencing ran its command; power-off is not proven
    SKIPPED = "skipped"  # not tried: an earlier device of the same level failed


class Clock(Protocol):
    """The runner's door to time: a monotonic clock and sleeping."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


@dataclass(frozen=True)
class DeviceResult:
    """One device's part in a fence operation. ``error`` is the error class name, if any."""

    device: str
    plugin: str
    outcome: Outcome
    reason: str = ""
    error: str | None = None
    already_off: bool = False
    attempts: int = 0
    duration: float = 0.0


@dataclass(frozen=True)
class LevelResult:
    """One level: ``number`` counts from 1, as operators say "level 2"."""

    number: int
    outcome: Outcome
    devices: tuple[DeviceResult, ...]
    duration: float = 0.0


@dataclass(frozen=True)
class FenceResult:
    """The whole answer to "is this host off?".

    ``outcome`` is CONFIRMED_OFF only when a level confirmed power-off; then ``level`` names it.
    Otherwise FAILED (reason says why, per level; it starts with "cancelled:" when the fence was
    cancelled) or TIMED_OUT (every level ran out of time).
    """

    host: str
    outcome: Outcome
    reason: str
    level: int | None = None
    levels: tuple[LevelResult, ...] = ()
    duration: float = 0.0

    @property
    def confirmed_off(self) -> bool:
        return self.outcome is Outcome.CONFIRMED_OFF

    @property
    def found_off(self) -> bool:
        """Confirmed by first status reads that found the power already off, before any command:
        the host died by itself (it was not cut off and switched off by us)."""
        return self.confirmed_off and any(lvl.number == self.level and lvl.devices
                                          and all(d.already_off for d in lvl.devices) for lvl in self.levels)


@dataclass(frozen=True)
class DeviceStatus:
    """A status read of one device: ``state`` is None when the read failed (see ``error``)."""

    host: str
    device: str
    plugin: str
    level: int
    state: PowerState | None
    error: str | None = None
    reason: str = ""
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state is not None


def power_verdict(statuses: Sequence[DeviceStatus]) -> tuple[str, str]:
    """What one status read of a host's devices says: ("off" | "on" | "unknown", detail).

    "off" only when every device of one level answered an explicit off, as a fence confirms (both
    outlets of a host with two supplies); "on" when no level is off and a device answered on;
    otherwise "unknown" (no device, errors, timeouts, replies without a power state). The detail
    names each device's answer, never its reply text.
    """
    levels: dict[int, list[DeviceStatus]] = {}
    for s in statuses:
        levels.setdefault(s.level, []).append(s)
    detail = " ".join(f"{s.device}:{s.state.value if isinstance(s.state, PowerState) else s.error or 'no-state'}"
                      for s in statuses)
    if any(all(s.state is PowerState.OFF for s in level) for level in levels.values()):
        return "off", detail
    if any(s.state is PowerState.ON for s in statuses):
        return "on", detail
    return "unknown", detail or "no fence device"


class Fencer(Protocol):
    """The port the failover manager fences through."""

    def fence_host(self, host: str, cancel: threading.Event | None = None) -> FenceResult: ...

    def status(self, host: str) -> tuple[DeviceStatus, ...]: ...


def run_with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` in a daemon thread; raise FenceTimeout if it has not returned within ``timeout``.

    NOTE: a call that overruns is abandoned, not killed (Python cannot kill a thread); plugins
    give their backend a timeout below the deadline so abandoned threads end on their own.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"fence-call:{what}", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout))
    if worker.is_alive():
        raise FenceTimeout(f"{what}: no answer within the {timeout:.1f}s call deadline")
    if "error" in box:
        raise box["error"]
    return box["value"]


class PowerTimeout(Exception):
    """The device's power_timeout ran out (status still on, or no time left for another call)."""


class Cancelled(FenceError):
    """The fence was cancelled (its leader stopped leading): no further power command is sent."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled: the leader that started this fence no longer leads")


def _classify(exc: BaseException) -> tuple[Outcome, str]:
    if isinstance(exc, (FenceTimeout, PowerTimeout)):
        return Outcome.TIMED_OUT, str(exc)
    if isinstance(exc, FenceError):
        return Outcome.FAILED, str(exc)
    if isinstance(exc, HaagentError):
        return Outcome.FAILED, str(exc)
    # A plugin bug or an untranslated backend error: report the class only (its text may hold anything).
    return Outcome.FAILED, f"unexpected {type(exc).__name__} from the plugin"


class FenceRunner:
    """Fences hosts through their configured levels; implements :class:`Fencer`.

    ``plugins`` maps plugin names to classes (default: the ``haagent.fencing`` entry points);
    ``context`` lends plugins their services (the manual plugin's ack source).
    """

    def __init__(self, config: FencingConfig, plugins: Mapping[str, type[FencePlugin]] | None = None,
                 context: PluginContext | None = None, clock: Clock | None = None):
        self.config = config
        self.plugins = dict(discover_plugins() if plugins is None else plugins)
        self.context = context or PluginContext()
        self.clock = clock or SystemClock()

    # -- the Fencer port -----------------------------------------------------------------------

    def fence_host(self, host: str, cancel: threading.Event | None = None) -> FenceResult:
        """Power ``host`` off through its levels and confirm it; never raises for device failures.

        Once ``cancel`` is set no further power command or status poll is sent: the result is
        FAILED with a reason starting "cancelled".
        """
        return self.run_levels(host, self.config.levels_for(host), cancel)

    def status(self, host: str) -> tuple[DeviceStatus, ...]:
        """Read every device of every level of ``host`` once (no action taken)."""
        out = []
        for number, level in enumerate(self.config.levels_for(host), start=1):
            for device in level:
                out.append(self.device_status(host, device, number))
        return tuple(out)

    # -- levels --------------------------------------------------------------------------------

    def run_levels(self, host: str, levels: Sequence[Sequence[FenceDevice]],
                   cancel: threading.Event | None = None) -> FenceResult:
        """Walk ``levels`` in order until one confirms ``host`` off."""
        t0 = self.clock.monotonic()
        results: list[LevelResult] = []
        if not levels:
            result = FenceResult(host, Outcome.FAILED, "no fencing levels configured for this host")
            self._record_host(result)
            return result
        log.info("fence.start", host=host, levels=len(levels))
        for number, level in enumerate(levels, start=1):
            lr = self.run_level(host, number, level, cancel)
            results.append(lr)
            log.info("fence.level", host=host, level=number, outcome=lr.outcome.value,
                     devices={d.device: d.outcome.value for d in lr.devices}, seconds=round(lr.duration, 3))
            if lr.outcome is Outcome.CONFIRMED_OFF:
                result = FenceResult(host, Outcome.CONFIRMED_OFF,
                                     f"level {number} confirmed power off", number, tuple(results),
                                     self.clock.monotonic() - t0)
                self._record_host(result)
                return result
        timed_out = all(lr.outcome is Outcome.TIMED_OUT for lr in results)
        details = "; ".join(
            f"level {lr.number}: " + ", ".join(f"{d.device} {d.outcome.value}" + (f" ({d.reason})" if d.reason else "")
                                               for d in lr.devices)
            for lr in results)
        if cancel is not None and cancel.is_set():
            # The caller (a deposed leader) reads the reason's first word: say it first.
            outcome, reason = Outcome.FAILED, f"cancelled: no level confirmed power off: {details}"
        else:
            outcome = Outcome.TIMED_OUT if timed_out else Outcome.FAILED
            reason = "no level confirmed power off: " + details
        result = FenceResult(host, outcome, reason, None, tuple(results), self.clock.monotonic() - t0)
        self._record_host(result)
        return result

    def run_level(self, host: str, number: int, level: Sequence[FenceDevice],
                  cancel: threading.Event | None = None) -> LevelResult:
        """All devices in order; the first failure fails the level and skips the rest."""
        t0 = self.clock.monotonic()
        devices: list[DeviceResult] = []
        failed: DeviceResult | None = None
        for device in level:
            if failed is not None:
                devices.append(DeviceResult(device.name, device.plugin, Outcome.SKIPPED,
                                            f"not tried: {failed.device} failed first"))
                continue
            dr = self.fence_device(host, device, cancel)
            devices.append(dr)
            if dr.outcome not in (Outcome.CONFIRMED_OFF, Outcome.UNCONFIRMED):
                failed = dr
        if failed is not None:
            outcome = Outcome.TIMED_OUT if failed.outcome is Outcome.TIMED_OUT else Outcome.FAILED
        elif any(d.outcome is Outcome.UNCONFIRMED for d in devices):
            outcome = Outcome.UNCONFIRMED
        else:
            outcome = Outcome.CONFIRMED_OFF
        return LevelResult(number, outcome, tuple(devices), self.clock.monotonic() - t0)

    # -- one device ----------------------------------------------------------------------------

    def fence_device(self, host: str, device: FenceDevice, cancel: threading.Event | None = None) -> DeviceResult:
        """Status first, act, poll until off; bounded by the device's power_timeout."""
        t0 = self.clock.monotonic()
        deadline = t0 + device.power_timeout
        attempts = [0]
        plugin = None
        already_off = False
        try:
            _check(cancel)
            plugin = self._plugin(host, device)
            if plugin.confirms_power:
                state = self._call(plugin, device, "status", lambda t: plugin.status(t), deadline, attempts,
                                   cancel)
                if state is PowerState.OFF:
                    already_off = True
                    return self._device_done(host, device, Outcome.CONFIRMED_OFF, "already off", None,
                                             True, attempts[0], t0)
            _check(cancel)
            log.info("fence.act", host=host, device=device.name, command=plugin.describe("off"))
            self._call(plugin, device, "set_power", lambda t: plugin.set_power(False, t), deadline, attempts,
                       cancel)
            if not plugin.confirms_power:
                return self._confirm_soft(host, device, plugin, deadline, attempts, t0, cancel)
            while True:
                _check(cancel)
                state = self._call(plugin, device, "status", lambda t: plugin.status(t), deadline, attempts,
                                   cancel)
                if state is PowerState.OFF:
                    return self._device_done(host, device, Outcome.CONFIRMED_OFF, "power off confirmed", None,
                                             False, attempts[0], t0)
                remaining = deadline - self.clock.monotonic()
                if remaining <= self.config.poll_interval:
                    raise PowerTimeout(f"still on {device.power_timeout:g}s after power off was accepted")
                self.clock.sleep(self.config.poll_interval)
        except Exception as exc:
            outcome, reason = _classify(exc)
            return self._device_done(host, device, outcome, reason, type(exc).__name__, already_off,
                                     attempts[0], t0)
        finally:
            if plugin is not None:
                try:
                    plugin.close()
                except Exception:  # closing must never change the result
                    pass

    def _confirm_soft(self, host: str, device: FenceDevice, plugin: FencePlugin, deadline: float,
                      attempts: list[int], t0: float, cancel: threading.Event | None = None) -> DeviceResult:
        """Soft fencing ran its command: a trusted device waits for the host to stop answering."""
        if not device.trusted:
            return self._device_done(host, device, Outcome.UNCONFIRMED,
                                     "command ran; soft fencing cannot confirm power off", None, False,
                                     attempts[0], t0)
        while True:
            _check(cancel)
            try:
                attempts[0] += 1
                remaining = deadline - self.clock.monotonic()
                run_with_deadline(lambda: plugin.status(max(0.1, min(device.call_timeout, remaining))),
                                  min(device.call_timeout, max(0.1, remaining)), f"{device.name} status")
            except (FenceUnreachable, FenceTimeout):
                return self._device_done(host, device, Outcome.CONFIRMED_OFF,
                                         "trusted soft fencing: the host stopped answering", None, False,
                                         attempts[0], t0)
            if deadline - self.clock.monotonic() <= self.config.poll_interval:
                return self._device_done(host, device, Outcome.TIMED_OUT,
                                         f"host still answers {device.power_timeout:g}s after the command",
                                         None, False, attempts[0], t0)
            self.clock.sleep(self.config.poll_interval)

    def device_status(self, host: str, device: FenceDevice, level: int = 1) -> DeviceStatus:
        """One status read with the device's retries and deadline; failures are returned, not raised."""
        t0 = self.clock.monotonic()
        plugin = None
        try:
            plugin = self._plugin(host, device)
            state = self._call(plugin, device, "status", lambda t: plugin.status(t),
                               t0 + min(device.power_timeout, device.call_timeout * (device.retries + 1)), [0])
            return DeviceStatus(host, device.name, device.plugin, level, state,
                                duration=self.clock.monotonic() - t0)
        except Exception as exc:
            _, reason = _classify(exc)
            return DeviceStatus(host, device.name, device.plugin, level, None, type(exc).__name__, reason,
                                self.clock.monotonic() - t0)
        finally:
            if plugin is not None:
                try:
                    plugin.close()
                except Exception:
                    pass

    # -- plumbing ------------------------------------------------------------------------------

    def _plugin(self, host: str, device: FenceDevice) -> FencePlugin:
        cls = self.plugins.get(device.plugin)
        if cls is None:
            raise FenceDeviceError(f"device {device.name}: plugin '{device.plugin}' is not installed")
        return cls(device.name, host, device.options, self.context)

    def _call(self, plugin: FencePlugin, device: FenceDevice, call: str, fn: Callable[[float], T],
              deadline: float, attempts: list[int], cancel: threading.Event | None = None) -> T:
        """One plugin call under a hard deadline, retried on transient errors while time remains.

        ``cancel`` is checked before every attempt: a retry is one more command to the device.
        """

        def attempt() -> T:
            _check(cancel)  # Cancelled is permanent: never retried
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise PowerTimeout(f"power_timeout of {device.power_timeout:g}s ran out")
            limit = min(device.call_timeout, remaining)
            attempts[0] += 1
            t0 = self.clock.monotonic()
            result = "ok"
            try:
                return run_with_deadline(lambda: fn(limit), limit, f"{device.name} {call}")
            except Exception as exc:
                result = type(exc).__name__
                log.warning("fence.call_failed", host=plugin.host, device=device.name, call=call,
                            error=result, reason=_classify(exc)[1], attempt=attempts[0])
                raise
            finally:
                metrics.FENCE_CALL_SECONDS.labels(device.plugin, call, result).observe(self.clock.monotonic() - t0)

        def out_of_time(retry_state: tenacity.RetryCallState) -> bool:
            return self.clock.monotonic() + 0.05 >= deadline

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, HaagentError) and e.transient),
            stop=tenacity.stop_after_attempt(device.retries + 1) | out_of_time,
            wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
            sleep=self.clock.sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _device_done(self, host: str, device: FenceDevice, outcome: Outcome, reason: str, error: str | None,
                     already_off: bool, attempts: int, t0: float) -> DeviceResult:
        duration = self.clock.monotonic() - t0
        metrics.FENCE_DEVICE_SECONDS.labels(device.plugin, device.name, outcome.value).observe(duration)
        metrics.FENCE_DEVICE_RESULTS.labels(device.plugin, device.name, outcome.value).inc()
        level = log.info if outcome in (Outcome.CONFIRMED_OFF, Outcome.UNCONFIRMED) else log.error
        level("fence.device", host=host, device=device.name, plugin=device.plugin, outcome=outcome.value,
              reason=reason, error=error, attempts=attempts, seconds=round(duration, 3))
        return DeviceResult(device.name, device.plugin, outcome, reason, error, already_off, attempts, duration)

    def _record_host(self, result: FenceResult) -> None:
        metrics.FENCE_HOST_RESULTS.labels(result.outcome.value).inc()
        metrics.FENCE_HOST_SECONDS.labels(result.outcome.value).observe(result.duration)
        (log.info if result.confirmed_off else log.error)(
            "fence.done", host=result.host, outcome=result.outcome.value, level=result.level,
            reason=result.reason, seconds=round(result.duration, 3))
