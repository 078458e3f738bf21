"""fence_agent drives Debian's fence_ipmilan and fence_apc_snmp against the fakes; secrets stay off our ps."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fence_helpers import BMC_PASSWORD, ipmitool
from fencing.config import parse_fencing_section
from fencing.runner import FenceRunner, Outcome
from fencing.fakes.pdu import FakePdu

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/fence_ipmilan"), reason="fence-agents not installed")


def runner_for(device: dict) -> FenceRunner:
    problems: list[str] = []
    cfg = parse_fencing_section({"poll_interval": 0.2, "devices": {"agent": device},
                                 "hosts": {"kvm01": {"levels": [["agent"]]}}}, "fencing", problems)
    assert problems == []
    return FenceRunner(cfg)


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


class CmdlineWatcher:
    """Samples the command lines of every descendant of this process while a fence runs."""

    def __init__(self) -> None:
        # every distinct command line sampled, per pid: a forked child shows its parent's command
        # line until it execs, so one pid can be the agent and then the ipmitool it runs
        self.seen: dict[int, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in descendants(os.getpid()):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        self.seen.setdefault(pid, set()).add(f.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
            time.sleep(0.002)

    def __enter__(self) -> "CmdlineWatcher":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


def test_fence_ipmilan_against_fake_bmc(sim_daemon, bmc_password_file):
    bmc = sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                     "--password-file", str(bmc_password_file), "--off-delay", "0.3")
    runner = runner_for({"plugin": "fence_agent", "agent": "fence_ipmilan", "ip": "127.0.0.1", "ipport": bmc.port,
                         "username": "admin", "password_file": str(bmc_password_file),
                         "parameters": ["lanplus=1", "cipher=3", "power_wait=0"],
                         "power_timeout": 20, "call_timeout": 10})
    with CmdlineWatcher() as watcher:
        result = runner.fence_host("kvm01")
    assert result.confirmed_off, result.reason
    assert "is off" in ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status").stdout
    agents = [c for samples in watcher.seen.values() for c in samples if "fence_ipmilan" in c]
    assert agents, "the watcher saw the agent run"
    for cmdline in agents:  # our direct children: the secret travels only on stdin
        assert BMC_PASSWORD not in cmdline
    # NOTE: fence_ipmilan itself then runs `ipmitool -P <password>`; ipmitool blanks it in its argv
    # within moments of starting, but it is briefly visible. That is the agent's design, outside
    # haagent; the native ipmi plugin starts no process at all. docs/fencing.md says so.


def test_fence_ipmilan_wrong_password_fails(sim_daemon, bmc_password_file, secret_dir):
    bmc = sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                     "--password-file", str(bmc_password_file))
    wrong = secret_dir / "wrong"
    wrong.write_text("nope")
    wrong.chmod(0o600)
    runner = runner_for({"plugin": "fence_agent", "agent": "fence_ipmilan", "ip": "127.0.0.1", "ipport": bmc.port,
                         "username": "admin", "password_file": str(wrong), "retries": 0,
                         "parameters": ["lanplus=1", "cipher=3"], "power_timeout": 15, "call_timeout": 10})
    d = runner.fence_host("kvm01").levels[0].devices[0]
    assert d.outcome is Outcome.FAILED and "nope" not in d.reason


def test_fence_apc_snmp_against_fake_pdu(secret_dir):
    community = secret_dir / "community"
    community.write_text("private\n")
    community.chmod(0o600)
    pdu = FakePdu(address="127.0.0.1", port=0, outlets=4).start()
    try:
        runner = runner_for({"plugin": "fence_agent", "agent": "fence_apc_snmp", "ip": "127.0.0.1",
                             "ipport": pdu.port, "password_file": str(community), "secret_key": "community",
                             "plug": "2", "parameters": ["snmp_version=2c", "power_wait=0"],
                             "power_timeout": 20, "call_timeout": 10})
        status = runner.status("kvm01")
        assert status[0].ok and status[0].state.value == "on"
        result = runner.fence_host("kvm01")
        assert result.confirmed_off, result.reason
        assert not pdu.outlet_on(2) and pdu.outlet_on(1)
    finally:
        pdu.stop()


@pytest.fixture
def dummy_status(tmp_path):
    """fence_dummy's file-backed power: the file holds "on" or "off" (no newline)."""
    path = tmp_path / "power"
    path.write_text("on")
    return path


def dummy_device(status_file, **extra) -> dict:
    return {"plugin": "fence_agent", "agent": "fence_dummy", "power_timeout": 10, "call_timeout": 5, "retries": 1,
            "parameters": ["type=file", f"status_file={status_file}", "power_wait=0"], **extra}


def test_fence_dummy_status_off_is_read_from_its_answer(dummy_status):
    runner = runner_for(dummy_device(dummy_status))
    assert runner.status("kvm01")[0].state.value == "on"
    result = runner.fence_host("kvm01")
    assert result.confirmed_off and not result.found_off, result.reason
    assert dummy_status.read_text() == "off"
    again = runner.fence_host("kvm01")
    assert again.confirmed_off and again.found_off  # exit 2 with "Status: OFF": already off


@pytest.mark.parametrize("script", [
    "#!/bin/sh\nexit 2\n",  # exit 2, says nothing
    "#!/bin/sh\nif then fi\n",  # a shell syntax error: sh exits 2
    "#!/bin/sh\necho 'Status: ON'\nexit 2\n",  # contradicts itself
    "#!/bin/sh\necho 'Status: OFF'\nexit 0\n",  # contradicts itself the other way
])
def test_an_agent_exit_2_is_off_only_with_status_off(tmp_path, script):
    agent = tmp_path / "fence_broken"
    agent.write_text(script)
    agent.chmod(0o755)
    runner = runner_for({"plugin": "fence_agent", "agent": str(agent), "power_timeout": 3, "call_timeout": 2,
                         "retries": 1})
    result = runner.fence_host("kvm01")
    assert not result.confirmed_off, result.reason
    d = result.levels[0].devices[0]
    assert d.error == "FenceBadReply" and "only exit 2 with 'Status: OFF' reads as off" in d.reason, d
    assert d.attempts == 2  # transient: retried


def test_a_smuggled_stdin_line_never_reaches_the_agent(dummy_status):
    """Built around config validation (which refuses it): a status read must not run action=off."""
    from fencing.plugins.fence_agent import FenceAgentPlugin
    from haagent.errors import FenceDeviceError

    opts = {"agent": "fence_dummy", "parameters": ["type=file", f"status_file={dummy_status}\naction=off"]}
    with pytest.raises(FenceDeviceError, match="line break"):
        FenceAgentPlugin("agent", "kvm01", opts).status(5)
    assert dummy_status.read_text() == "on"
    problems: list[str] = []
    parse_fencing_section({"devices": {"agent": dummy_device(dummy_status, parameters=opts["parameters"])}},
                          "fencing", problems)
    assert any(p.startswith("fencing.devices.agent.parameters: status_file: a line break") for p in problems)


def test_a_password_file_of_two_lines_is_refused_not_sent(dummy_status, secret_dir):
    from fencing.plugins.fence_agent import FenceAgentPlugin
    from haagent.errors import FenceDeviceError

    pw = secret_dir / "two-lines"
    pw.write_text("pw\naction=off\n")
    pw.chmod(0o600)
    opts = {"agent": "fence_dummy", "password_file": str(pw),
            "parameters": ["type=file", f"status_file={dummy_status}"]}
    with pytest.raises(FenceDeviceError, match="more than one line") as err:
        FenceAgentPlugin("agent", "kvm01", opts).status(5)
    assert "action=off" not in str(err.value)
    assert dummy_status.read_text() == "on"


def test_what_is_logged_about_the_stdin_is_masked(sim_daemon, bmc_password_file):
    import io
    import json

    from haagent import log

    buf = io.StringIO()
    log.configure("json", "debug", stream=buf)
    bmc = sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                     "--password-file", str(bmc_password_file))
    runner = runner_for({"plugin": "fence_agent", "agent": "fence_ipmilan", "ip": "127.0.0.1", "ipport": bmc.port,
                         "username": "admin", "password_file": str(bmc_password_file),
                         "parameters": ["lanplus=1", "cipher=3", "power_wait=0"],
                         "power_timeout": 20, "call_timeout": 10})
    result = runner.fence_host("kvm01")
    assert result.confirmed_off, result.reason
    text = buf.getvalue()
    assert BMC_PASSWORD not in text + repr(result)
    acts = [json.loads(line) for line in text.splitlines() if '"fence.act"' in line]
    assert acts and all("password=***" in e["command"] and "lanplus=1" in e["command"] for e in acts)
