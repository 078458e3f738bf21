"""The runner and the native plugins against the fake BMC and PDU, over UDP on loopback."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from fence_helpers import BMC_PASSWORD, ipmitool
from fencing.config import parse_fencing_section
from fencing.plugin import PluginContext
from fencing.plugins.manual import MemoryAckSource
from fencing.runner import FenceRunner, Outcome
from fencing.fakes.faults import write_fault_file
from fencing.fakes.pdu import FakePdu
from haagent import log


def make_runner(devices: dict, levels: list, *, host: str = "kvm01", poll: float = 0.1, **kw) -> FenceRunner:
    problems: list[str] = []
    cfg = parse_fencing_section({"poll_interval": poll, "devices": devices, "hosts": {host: {"levels": levels}}},
                                "fencing", problems)
    assert problems == []
    return FenceRunner(cfg, **kw)


def ipmi_dev(port: int, password_file, **extra) -> dict:
    return {"plugin": "ipmi", "address": "127.0.0.1", "port": port, "username": "admin",
            "password_file": str(password_file), "power_timeout": 4, "call_timeout": 2, "retries": 1,
            "probe_timeout": 0.3, **extra}


@pytest.fixture
def bmc_proc(sim_daemon, bmc_password_file):
    """A fake BMC in its own process: pyghmi's client and server share global state in one process."""

    def start(*flags: str):
        return sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                          "--password-file", str(bmc_password_file), *flags)

    return start


def power_is_on(port: int, password_file) -> bool:
    r = ipmitool(port, password_file, "chassis", "power", "status")
    assert r.returncode == 0, r.stderr
    return "is on" in r.stdout


@pytest.fixture
def pdu():
    started = []

    def start(**kw):
        p = FakePdu(address="127.0.0.1", port=0, **kw).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def community_file(secret_dir):
    path = secret_dir / "community"
    path.write_text("private\n")
    path.chmod(0o600)
    return path


def test_ipmi_confirms_off(bmc_proc, bmc_password_file):
    bmc = bmc_proc("--off-delay", "0.3")
    result = make_runner({"bmc": ipmi_dev(bmc.port, bmc_password_file)}, [["bmc"]]).fence_host("kvm01")
    assert result.outcome is Outcome.CONFIRMED_OFF, result.reason
    assert result.level == 1 and not power_is_on(bmc.port, bmc_password_file)
    dev = result.levels[0].devices[0]
    assert not dev.already_off and dev.attempts >= 3  # status, off, then polls until the delayed off


def test_already_off_is_success_without_acting(bmc_proc, bmc_password_file):
    bmc = bmc_proc("--off")
    result = make_runner({"bmc": ipmi_dev(bmc.port, bmc_password_file)}, [["bmc"]]).fence_host("kvm01")
    dev = result.levels[0].devices[0]
    assert result.confirmed_off and dev.already_off
    assert dev.attempts == 1  # one status read, no power command


@pytest.mark.parametrize("case", ["wrong_password", "unknown_user", "nothing_listening", "silent", "never_off"])
def test_ipmi_failures_are_classified_and_bounded(case, bmc_proc, bmc_password_file, secret_dir, tmp_path):
    faults = tmp_path / "faults.json"
    bmc = bmc_proc("--fault-file", str(faults), *(["--never-off"] if case == "never_off" else []))
    extra = {}
    pwfile = bmc_password_file
    port = bmc.port
    if case == "wrong_password":
        pwfile = secret_dir / "wrong"
        pwfile.write_text("wrong-password")
        pwfile.chmod(0o600)
    elif case == "unknown_user":
        extra["username"] = "mallory"
    elif case == "nothing_listening":
        bmc.stop()  # the port is now closed: ICMP port unreachable
    elif case == "silent":
        write_fault_file(str(faults), "hang")
    dev = ipmi_dev(port, pwfile)
    dev.update(extra)
    runner = make_runner({"bmc": dev}, [["bmc"]])
    t0 = time.monotonic()
    result = runner.fence_host("kvm01")
    elapsed = time.monotonic() - t0
    d = result.levels[0].devices[0]
    expected = {
        "wrong_password": (Outcome.FAILED, "FenceAuthError", "wrong password"),
        "unknown_user": (Outcome.FAILED, "FenceAuthError", "unknown user"),
        "nothing_listening": (Outcome.FAILED, "FenceUnreachable", "nothing listening"),
        "silent": (Outcome.FAILED, "FenceUnreachable", "no answer"),
        "never_off": (Outcome.TIMED_OUT, "PowerTimeout", "still on"),
    }[case]
    if case == "never_off" and d.error == "FenceTimeout":
        expected = (Outcome.TIMED_OUT, "FenceTimeout", "call deadline")  # a pyghmi stall ate the last poll
    assert (d.outcome, d.error) == expected[:2], d
    assert expected[2] in d.reason
    assert not result.confirmed_off
    assert elapsed <= dev["power_timeout"] + 1.0  # the bound: within the configured timeout
    if case in ("wrong_password", "unknown_user"):
        assert d.attempts == 1  # permanent errors are not retried
    if case in ("silent",):
        assert d.attempts == 2  # transient: retried once (retries = 1)
    if case != "nothing_listening":
        write_fault_file(str(faults), "ok")
        assert power_is_on(bmc.port, bmc_password_file)


def test_two_outlet_level_fails_when_one_fails_then_next_level_confirms(pdu, community_file, bmc_proc,
                                                                         bmc_password_file, tmp_path):
    faults = tmp_path / "pdu-b.json"
    pdu_a, pdu_b = pdu(outlets=4), pdu(outlets=4, fault_file=str(faults))
    write_fault_file(str(faults), "fail")
    bmc = bmc_proc()
    snmp = {"plugin": "apc_snmp", "address": "127.0.0.1", "community_file": str(community_file),
            "power_timeout": 3, "call_timeout": 1.5, "retries": 0, "snmp_timeout": 0.5}
    runner = make_runner(
        {"pdu-a": {**snmp, "port": pdu_a.port}, "pdu-b": {**snmp, "port": pdu_b.port},
         "bmc": ipmi_dev(bmc.port, bmc_password_file)},
        [[{"device": "pdu-a", "outlet": 3}, {"device": "pdu-b", "outlet": 3}], ["bmc"]])
    result = runner.fence_host("kvm01")
    assert result.confirmed_off and result.level == 2, result.reason
    first = result.levels[0]
    assert first.outcome is Outcome.FAILED
    assert [(d.device, d.outcome) for d in first.devices] == [("pdu-a", Outcome.CONFIRMED_OFF),
                                                              ("pdu-b", Outcome.FAILED)]
    assert first.devices[1].error == "FenceDeviceError" and "genErr" in first.devices[1].reason
    assert not pdu_a.outlet_on(3) and pdu_b.outlet_on(3) and not power_is_on(bmc.port, bmc_password_file)


def test_pdu_level_of_two_outlets_confirms(pdu, community_file):
    a, b = pdu(outlets=8, delay=0.2), pdu(outlets=8)
    snmp = {"plugin": "apc_snmp", "address": "127.0.0.1", "community_file": str(community_file),
            "power_timeout": 3, "snmp_timeout": 0.5}
    runner = make_runner({"pdu-a": {**snmp, "port": a.port}, "pdu-b": {**snmp, "port": b.port}},
                         [[{"device": "pdu-a", "outlet": 5}, {"device": "pdu-b", "outlet": 5}]])
    result = runner.fence_host("kvm01")
    assert result.confirmed_off, result.reason
    assert not a.outlet_on(5) and not b.outlet_on(5) and a.outlet_on(4)


def test_pdu_read_only_community_is_an_auth_failure(pdu, secret_dir):
    ro = secret_dir / "ro"
    ro.write_text("public\n")
    ro.chmod(0o600)
    p = pdu(outlets=2)
    runner = make_runner({"pdu": {"plugin": "apc_snmp", "address": "127.0.0.1", "port": p.port,
                                  "community_file": str(ro), "outlet": 1, "power_timeout": 3}}, [["pdu"]])
    d = runner.fence_host("kvm01").levels[0].devices[0]
    assert (d.outcome, d.error) == (Outcome.FAILED, "FenceAuthError") and p.outlet_on(1)


def test_manual_waits_for_the_operator_ack():
    acks = MemoryAckSource()
    runner = make_runner({"hands": {"plugin": "manual", "ack_max_age": 0, "power_timeout": 5}}, [["hands"]],
                         context=PluginContext(ack_source=acks))
    timer = threading.Timer(0.5, lambda: acks.ack("kvm01", time.time()))
    timer.start()
    t0 = time.monotonic()
    result = runner.fence_host("kvm01")
    timer.join()
    assert result.confirmed_off and time.monotonic() - t0 >= 0.45


def test_manual_without_ack_times_out():
    runner = make_runner({"hands": {"plugin": "manual", "power_timeout": 0.6}}, [["hands"]],
                         context=PluginContext(ack_source=MemoryAckSource()))
    assert runner.fence_host("kvm01").outcome is Outcome.TIMED_OUT


def test_no_secret_in_logs_or_results(bmc_proc, bmc_password_file, secret_dir):
    """Run failing and succeeding fences with logging captured: the password never shows."""
    buf = io.StringIO()
    log.configure("json", "debug", stream=buf)
    wrong = secret_dir / "wrong"
    wrong.write_text("Wrong-pw-99182\n")
    wrong.chmod(0o600)
    bmc = bmc_proc()
    for pw in (wrong, bmc_password_file):
        result = make_runner({"bmc": ipmi_dev(bmc.port, pw)}, [["bmc"]]).fence_host("kvm01")
        text = buf.getvalue() + repr(result)
        for secret in (BMC_PASSWORD, "Wrong-pw-99182"):
            assert secret not in text
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert any(e.get("event") == "fence.act" and "password=***" in e["command"] for e in lines)


def test_cancel_stops_the_runner_before_its_next_power_command(bmc_proc, bmc_password_file):
    """A leader deposed mid-fence sets the cancel event: the runner sends nothing more."""
    slow = bmc_proc("--never-off")  # accepts off, never switches: the runner polls until cancelled
    second = bmc_proc()
    runner = make_runner({"slow": ipmi_dev(slow.port, bmc_password_file, power_timeout=8),
                          "next": ipmi_dev(second.port, bmc_password_file)}, [["slow"], ["next"]])
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    result = runner.fence_host("kvm01", cancel=cancel)
    assert result.outcome is Outcome.FAILED and result.reason.startswith("cancelled"), result.reason
    level1, level2 = result.levels
    assert level1.devices[0].reason.startswith("cancelled") and level1.devices[0].duration < 4
    assert level2.devices[0].reason.startswith("cancelled")  # level 2 was never asked to act
    assert power_is_on(second.port, bmc_password_file)


def test_cancel_during_a_slow_device_spares_the_next_device_of_the_level(bmc_proc, bmc_password_file, tmp_path):
    """The first BMC's off takes 5 s (a delay fault); cancelled after 1 s, the second BMC is never switched."""
    faults = tmp_path / "slow.json"
    write_fault_file(str(faults), "ok", off_delay=5.0)
    slow = bmc_proc("--fault-file", str(faults))
    second = bmc_proc()
    runner = make_runner({"slow": ipmi_dev(slow.port, bmc_password_file, power_timeout=8),
                          "second": ipmi_dev(second.port, bmc_password_file)}, [["slow", "second"]])
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    t0 = time.monotonic()
    result = runner.fence_host("kvm01", cancel=cancel)
    timer.join()
    assert time.monotonic() - t0 < 4, "the runner stopped polling once cancelled"
    assert result.outcome is Outcome.FAILED and result.reason.startswith("cancelled"), result.reason
    first, rest = result.levels[0].devices
    assert first.reason.startswith("cancelled") and rest.outcome is Outcome.SKIPPED
    assert power_is_on(second.port, bmc_password_file)


@pytest.mark.parametrize("mode, why", [
    ("empty", "no power state"),  # success, no data bytes
    ("garbled", "too short"),  # one byte 0x00: the power bit reads "off" to a careless parser
    ("fail", "completion code 0xff"),  # the status request itself refused
])
def test_a_status_reply_that_does_not_say_off_is_never_off(mode, why, bmc_proc, bmc_password_file, tmp_path):
    """Only an explicit "off" confirms: anything else is a transient device error, retried within power_timeout."""
    faults = tmp_path / "faults.json"
    write_fault_file(str(faults), mode)
    bmc = bmc_proc("--fault-file", str(faults))
    dev = ipmi_dev(bmc.port, bmc_password_file, retries=2)
    t0 = time.monotonic()
    result = make_runner({"bmc": dev}, [["bmc"]]).fence_host("kvm01")
    assert time.monotonic() - t0 <= dev["power_timeout"] + 1.0
    assert not result.confirmed_off, result.reason
    d = result.levels[0].devices[0]
    assert d.outcome is Outcome.FAILED and why in d.reason, d
    assert d.attempts == 3, "a bad reply is transient: retried (retries = 2)"
    write_fault_file(str(faults), "ok")
    assert power_is_on(bmc.port, bmc_password_file)  # and no off was ever sent


@pytest.mark.parametrize("mode, outlet, why", [
    ("empty", 2, "not an outlet state"),  # an empty OCTET STRING
    ("garbled", 2, "unexpected outlet state 0"),  # an INTEGER that is neither on (1) nor off (2)
    ("ok", 9, "no such outlet"),  # noSuchInstance: the PDU has 4 outlets
])
def test_a_pdu_answer_that_does_not_say_off_is_never_off(mode, outlet, why, pdu, community_file, tmp_path):
    faults = tmp_path / "faults.json"
    write_fault_file(str(faults), mode)
    p = pdu(outlets=4, fault_file=str(faults))
    runner = make_runner({"pdu": {"plugin": "apc_snmp", "address": "127.0.0.1", "port": p.port,
                                  "community_file": str(community_file), "outlet": outlet, "power_timeout": 3,
                                  "retries": 1, "snmp_timeout": 0.5}}, [["pdu"]])
    result = runner.fence_host("kvm01")
    assert not result.confirmed_off, result.reason
    d = result.levels[0].devices[0]
    assert d.outcome is Outcome.FAILED and why in d.reason, d
    assert p.sets == 0 and all(p.outlet_on(n) for n in range(1, 5))  # nothing was switched
    # a bad answer may heal (retried); a missing outlet is the config's fault (not retried)
    assert d.attempts == (1 if outlet == 9 else 2)


def test_manual_in_the_cluster_says_what_to_do_at_once():
    """No ack source (the cluster: the leader takes acks itself): no worker is held for power_timeout."""
    runner = make_runner({"by-hand": {"plugin": "manual", "power_timeout": 600, "retries": 5}}, [["by-hand"]])
    t0 = time.monotonic()
    result = runner.fence_host("kvm01")
    assert time.monotonic() - t0 < 2 and not result.confirmed_off
    d = result.levels[0].devices[0]
    assert d.outcome is Outcome.FAILED and d.attempts == 1  # no polling, no retry
    assert "manual fencing: waiting for `haagent fence ack kvm01 --yes`" in d.reason


def test_ipmi_waits_never_run_to_their_timeout(bmc_proc, bmc_password_file):
    """pyghmi loses a wake-up when a reply is read before the caller queues its wait (the caller
    then sits out its 0.5-1 s retransmit timer); the plugin slices every wait (ipmi.WAIT_SLICE)."""
    import time

    from fencing.plugins import ipmi
    from fencing.plugins.ipmi import IpmiPlugin
    from pyghmi.ipmi.private import session as ipmisession

    bmc = bmc_proc()
    plugin = IpmiPlugin("bmc", "kvm01", ipmi_dev(bmc.port, bmc_password_file))
    assert plugin.status(5).value == "on"  # a session: pyghmi's I/O thread now runs
    ipmi._session_class(3)  # making the class again must not wrap the wrapper
    assert ipmisession._io_wait.haagent_bounded
    assert not getattr(ipmisession._io_wait.__closure__[0].cell_contents, "haagent_bounded", False)
    started = time.monotonic()
    ipmisession._io_wait(3.0)  # nothing will wake it: unsliced, it lasts its 3 s
    assert time.monotonic() - started < 1.5
