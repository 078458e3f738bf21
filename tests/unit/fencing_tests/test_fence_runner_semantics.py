"""Runner semantics with in-test plugins: status first, retries only on transient errors, hard deadlines."""

from __future__ import annotations

import threading
import time

from fencing.config import parse_fencing_section
from fencing.plugin import FencePlugin, Option, PowerState
from fencing.runner import FenceRunner, Outcome
from haagent.errors import FenceAuthError, FenceUnreachable

CALLS: list[str] = []


class Scripted(FencePlugin):
    """Plays a script of answers per call kind: PowerState, an exception, or 'hang'."""

    name = "scripted"
    options = (Option("script", "string", default="ok"),)
    scripts: dict[str, list] = {}
    confirms_power = True

    def _next(self, kind: str):
        CALLS.append(f"{self.device}:{kind}")
        queue = self.scripts[self.opts["script"]][kind]
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if item == "hang":
            threading.Event().wait(30)
        if isinstance(item, Exception):
            raise item
        return item

    def status(self, timeout):
        return self._next("status")

    def set_power(self, on, timeout):
        self._next("off")


class Soft(Scripted):
    name = "soft"
    confirms_power = False


def runner(devices, levels):
    problems: list[str] = []
    plugins = {"scripted": Scripted, "soft": Soft}
    cfg = parse_fencing_section({"poll_interval": 0.05, "devices": devices, "hosts": {"h1": {"levels": levels}}},
                                "fencing", problems, plugins=plugins)
    assert problems == []
    CALLS.clear()
    return FenceRunner(cfg, plugins=plugins)


def dev(script, **kw):
    return {"plugin": "scripted", "script": script, "power_timeout": 2, "call_timeout": 0.5, "retries": 2, **kw}


def test_status_first_act_then_poll():
    Scripted.scripts["a"] = {"status": [PowerState.ON, PowerState.ON, PowerState.ON, PowerState.OFF], "off": [None]}
    result = runner({"d": dev("a")}, [["d"]]).fence_host("h1")
    assert result.confirmed_off
    assert CALLS == ["d:status", "d:off", "d:status", "d:status", "d:status"]


def test_transient_errors_retried_permanent_not():
    Scripted.scripts["t"] = {"status": [FenceUnreachable("blip"), PowerState.OFF], "off": [None]}
    assert runner({"d": dev("t")}, [["d"]]).fence_host("h1").confirmed_off
    assert CALLS == ["d:status", "d:status"]
    Scripted.scripts["p"] = {"status": [FenceAuthError("bad password")], "off": [None]}
    result = runner({"d": dev("p")}, [["d"]]).fence_host("h1")
    assert result.outcome is Outcome.FAILED and CALLS == ["d:status"]


def test_a_hanging_call_is_cut_at_its_deadline():
    Scripted.scripts["h"] = {"status": ["hang"], "off": [None]}
    t0 = time.monotonic()
    result = runner({"d": dev("h", retries=0)}, [["d"]]).fence_host("h1")
    assert time.monotonic() - t0 < 1.5
    d = result.levels[0].devices[0]
    assert (d.outcome, d.error) == (Outcome.TIMED_OUT, "FenceTimeout")


def test_retries_never_exceed_power_timeout():
    Scripted.scripts["hh"] = {"status": ["hang"], "off": [None]}
    t0 = time.monotonic()
    runner({"d": dev("hh", retries=10, power_timeout=1.2)}, [["d"]]).fence_host("h1")
    assert time.monotonic() - t0 < 1.2 + 0.5


def test_untrusted_soft_level_hands_over_to_the_next_level():
    Scripted.scripts["s"] = {"status": [PowerState.ON], "off": [None]}
    Scripted.scripts["after"] = {"status": [PowerState.OFF], "off": [None]}
    result = runner({"soft": {**dev("s"), "plugin": "soft"}, "hard": dev("after")}, [["soft"], ["hard"]]).fence_host("h1")
    assert result.confirmed_off and result.level == 2
    assert result.levels[0].outcome is Outcome.UNCONFIRMED
    assert result.levels[1].devices[0].already_off


class CancelOn(Scripted):
    """Like Scripted, but sets ``CANCEL`` during the call named by its ``cancel_on`` option."""

    name = "cancel_on"
    options = Scripted.options + (Option("cancel_on", "string", default="off"),)

    def _next(self, kind):
        if kind == self.opts["cancel_on"]:
            CANCEL.set()
        return super()._next(kind)


class SoftCancelOn(CancelOn):
    name = "soft_cancel_on"
    confirms_power = False


CANCEL = threading.Event()


def cancel_runner(devices, levels):
    problems: list[str] = []
    plugins = {"scripted": Scripted, "cancel_on": CancelOn, "soft_cancel_on": SoftCancelOn}
    cfg = parse_fencing_section({"poll_interval": 0.05, "devices": devices, "hosts": {"h1": {"levels": levels}}},
                                "fencing", problems, plugins=plugins)
    assert problems == []
    CALLS.clear()
    CANCEL.clear()
    return FenceRunner(cfg, plugins=plugins)


def test_cancel_during_a_status_poll_sends_nothing_more_to_any_device():
    Scripted.scripts["slow"] = {"status": [PowerState.ON], "off": [None]}
    Scripted.scripts["next"] = {"status": [PowerState.ON], "off": [None]}
    r = cancel_runner({"a": {**dev("slow"), "plugin": "cancel_on", "cancel_on": "status"},
                       "b": dev("next"), "c": dev("next")}, [["a", "b"], ["c"]])
    result = r.fence_host("h1", cancel=CANCEL)
    assert CALLS == ["a:status"]  # the first status read, then nothing: no off, no poll, no next device
    assert result.outcome is Outcome.FAILED and result.reason.startswith("cancelled"), result.reason
    assert all(d.reason.startswith("cancelled") or d.outcome is Outcome.SKIPPED
               for lvl in result.levels for d in lvl.devices)


def test_cancel_stops_retries_of_a_failed_call():
    """A transient failure would be retried; once cancelled, the retry (another command) is not sent."""
    Scripted.scripts["blip"] = {"status": [PowerState.ON], "off": [FenceUnreachable("blip")]}
    r = cancel_runner({"a": {**dev("blip"), "plugin": "cancel_on", "cancel_on": "off"}}, [["a"]])
    result = r.fence_host("h1", cancel=CANCEL)
    assert CALLS == ["a:status", "a:off"]
    assert result.reason.startswith("cancelled"), result.reason


def test_cancel_stops_the_trusted_soft_fencing_wait():
    Scripted.scripts["soft"] = {"status": [PowerState.ON], "off": [None]}
    r = cancel_runner({"s": {**dev("soft"), "plugin": "soft_cancel_on", "cancel_on": "off", "trusted": True}},
                      [["s"]])
    result = r.fence_host("h1", cancel=CANCEL)
    assert CALLS == ["s:off"]  # soft fencing reads no status first; after the command, no poll
    assert result.outcome is Outcome.FAILED and result.reason.startswith("cancelled"), result.reason


def test_an_uncancelled_event_changes_nothing():
    Scripted.scripts["a2"] = {"status": [PowerState.ON, PowerState.OFF], "off": [None]}
    result = cancel_runner({"d": dev("a2")}, [["d"]]).fence_host("h1", cancel=CANCEL)
    assert result.confirmed_off and CALLS == ["d:status", "d:off", "d:status"]


def test_power_verdict_of_a_status_read_is_off_only_when_a_whole_level_says_off():
    from fencing.runner import power_verdict

    Scripted.scripts = {"off": {"status": [PowerState.OFF]}, "on": {"status": [PowerState.ON]},
                        "bad": {"status": [FenceUnreachable("no route")]}, "junk": {"status": ["0x7f"]}}
    bmc_then_pdus = [["bmc"], ["pdu-a", "pdu-b"]]

    def read(**scripts):
        r = runner({name: dev(scripts[name]) for name in ("bmc", "pdu-a", "pdu-b")}, bmc_then_pdus)
        return power_verdict(r.status("h1"))

    # the BMC says off while the outlets report themselves on (a crashed host): off
    assert read(bmc="off", **{"pdu-a": "on", "pdu-b": "on"})[0] == "off"
    # one outlet of two off is not the host off; the BMC cannot be reached: on, not off
    assert read(bmc="bad", **{"pdu-a": "off", "pdu-b": "on"}) == ("on", "bmc:FenceUnreachable pdu-a:off pdu-b:on")
    assert read(bmc="bad", **{"pdu-a": "off", "pdu-b": "off"})[0] == "off"
    # errors and a reply without a power state say nothing
    assert read(bmc="junk", **{"pdu-a": "bad", "pdu-b": "bad"})[0] == "unknown"
    assert power_verdict(()) == ("unknown", "no fence device")
