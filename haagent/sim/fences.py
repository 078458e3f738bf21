"""Fencing in the simulator: the real ``FenceRunner``, with simulated devices, on virtual time.

Each fence runs the production runner (status first, act, poll until off, retries, deadlines,
levels, cancel) synchronously when the leader dispatches it, over a ``VirtualClock`` that starts
at the simulation's now: every plugin call and every runner sleep advances that clock instead of
waiting. The fence's result is then delivered when the simulation's own clock reaches the end of
that virtual run, and a device that accepted "off" cuts the host's power at that moment.

A simulated device's behaviour is its mode (``Device.mode``): ``ok`` answers the host's real
power and switches it off; ``fail`` answers every call with a device error; ``hang`` never
answers (each call runs into its deadline); ``never-off`` accepts off and stays on; ``lies``
reports off whatever the power; ``empty`` answers status with no power state (a bad reply, which
the runner retries until ``power_timeout``, as the IPMI plugin reports it). The call costs keep the old figures: an ``ok`` device confirms
in 1 s, a failing one fails in 0.5 s, a device that hangs or never cuts power times out after
``device_timeout``.

The leader's storm-guard power reads (``run_status``) go through the same runner and devices. A
host's ``read_fault`` makes its devices answer those reads, and only those, otherwise: ``lies``
(off, whatever the power), ``hang`` (no answer), ``garbage`` (a reply without a power state):
the faults a status answer the leader trusts can carry, while its fences stay honest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from haagent.errors import FenceDeviceError, FenceTimeout

from fencing.config import FenceDevice
from fencing.plugin import FenceBadReply, FencePlugin, Option, PluginContext, PowerState
from fencing.runner import FenceResult, FenceRunner, FencingConfig, power_verdict

if TYPE_CHECKING:
    from haagent.sim.world import Simulation


class VirtualClock:
    """The runner's Clock port on virtual time: sleeping advances it, nothing waits."""

    def __init__(self, start: float):
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


# Costs of one call, in virtual seconds: an "ok" device's status, off and confirming status add
# up to 1 s (the simulator's device_time), as does one status read of a host already off.
STATUS_ON, SET_OFF, STATUS_OFF, ALREADY_OFF, FAIL = 0.4, 0.2, 0.4, 1.0, 0.5


class SimDevice(FencePlugin):
    """One simulated fence device (a BMC or a PDU outlet) of one simulated host."""

    name = "sim"
    description = "a simulated BMC or PDU outlet"
    options = (Option("device", "string", required=True, help="the device's name on its host"),)
    sim: "Simulation"  # set on the per-simulation subclass
    clock: VirtualClock  # the fence run's clock (one run at a time: fences run synchronously)
    reading: bool = False  # a storm-guard power read, not a fence (the host's read_fault applies)

    def _device(self) -> Any:
        return self.sim.hosts[self.host].device(self.opts["device"])

    def _spend(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    def _broken(self, mode: str, timeout: float) -> None:
        """A failing device errs at once; a hung one runs into the call's deadline."""
        if mode == "fail":
            self._spend(FAIL)
            raise FenceDeviceError(f"{self.device}: device error")
        if mode == "hang":
            self._spend(timeout)
            raise FenceTimeout(f"{self.device}: no answer within the {timeout:.1f}s call deadline")

    def status(self, timeout: float) -> PowerState:
        mode = self._device().mode
        target = self.sim.hosts[self.host]
        if self.reading and target.read_fault != "ok":
            mode = {"garbage": "empty"}.get(target.read_fault, target.read_fault)
        self._broken(mode, timeout)
        if mode == "empty":
            self._spend(FAIL)  # a bad reply, retried within power_timeout as the IPMI plugin's is
            raise FenceBadReply(f"{self.device}: status reply carries no power state")
        if mode == "lies":
            self._spend(ALREADY_OFF)
            return PowerState.OFF
        device = self._device()
        cut_now = self.sim.fence_cut(self.host, device.name)
        if device.name.startswith("pdu"):
            # an outlet reports itself: on until it is switched off, whatever the host does
            on = not (device.switched_off or cut_now)
        else:
            # a BMC reports the chassis (a host resetting after its watchdog is in POST: on)
            on = (target.powered or target.name in self.sim.boots) and not cut_now
        if not on:
            self._spend(STATUS_OFF if cut_now else ALREADY_OFF)
            return PowerState.OFF
        self._spend(STATUS_ON)
        return PowerState.ON

    def set_power(self, on: bool, timeout: float) -> None:
        if on:
            raise FenceDeviceError(f"{self.device}: the simulator never powers a host on through fencing")
        mode = self._device().mode
        self._broken(mode, timeout)
        self._spend(SET_OFF)
        if mode == "ok":
            self.sim.fence_cuts.add((self.host, self.opts["device"]))

    def describe(self, action: str) -> str:
        return f"sim {self.opts['device']} of {self.host}: power {action}"


def _runner(sim: "Simulation", host: str, clock: VirtualClock, reading: bool) -> tuple[FenceRunner, tuple]:
    plugin = type("SimDevice", (SimDevice,), {"sim": sim, "clock": clock, "reading": reading})
    target = sim.hosts.get(host)
    levels = tuple(tuple(FenceDevice(d.name, "sim", {"device": d.name}, sim.cfg.device_timeout,
                                     sim.cfg.device_timeout, FencingConfig.retries) for d in level)
                   for level in (target.levels if target else []))
    runner = FenceRunner(FencingConfig(poll_interval=sim.cfg.tick), plugins={"sim": plugin},
                         context=PluginContext(wall_time=lambda: clock.now), clock=clock)
    return runner, levels


def run_status(sim: "Simulation", host: str, start: float) -> tuple[str, str, float]:
    """Read ``host``'s devices once with the real runner (status only) on virtual time from
    ``start``: (power verdict, detail, seconds it took)."""
    clock = VirtualClock(start)
    runner, levels = _runner(sim, host, clock, reading=True)
    statuses = [runner.device_status(host, d, n) for n, level in enumerate(levels, start=1) for d in level]
    power, detail = power_verdict(statuses)
    return power, detail, clock.now - start


def run_fence(sim: "Simulation", host: str, start: float) -> tuple[FenceResult, float, bool]:
    """Fence ``host`` with the real runner on virtual time from ``start``: (result, seconds it
    took, whether a device switched the power off)."""
    clock = VirtualClock(start)
    runner, levels = _runner(sim, host, clock, reading=False)
    sim.fence_cuts = set()
    result = runner.run_levels(host, levels)
    # The power drops only if every device of the confirming level switched it off (both outlets
    # of a host with two power supplies).
    cut = result.confirmed_off and any(
        lvl.number == result.level and all((host, d.device) in sim.fence_cuts for d in lvl.devices)
        for lvl in result.levels)
    sim.fence_cuts = set()
    return result, clock.now - start, cut
