"""The fake BMC against real clients: Debian's ipmitool and pyghmi, over UDP on loopback."""

from __future__ import annotations

import time

import pytest

from fence_helpers import BMC_PASSWORD, ipmitool
from fencing.fakes.faults import write_fault_file
from fencing.fakes.power import InMemoryPower


def test_ipmitool_status_off_on(fake_bmc, bmc_password_file):
    power = InMemoryPower(on=True)
    bmc = fake_bmc(backend=power)
    r = ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status")
    assert r.returncode == 0, r.stderr
    assert "Chassis Power is on" in r.stdout
    r = ipmitool(bmc.port, bmc_password_file, "chassis", "power", "off")
    assert r.returncode == 0, r.stderr
    assert not power.is_on()
    assert "Chassis Power is off" in ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status").stdout
    assert ipmitool(bmc.port, bmc_password_file, "chassis", "power", "on").returncode == 0
    assert power.is_on()


def test_sha256_suite_is_refused_cleanly_not_misanswered(fake_bmc, bmc_password_file):
    bmc = fake_bmc()
    r = ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status", cipher="17")
    assert r.returncode != 0
    assert "no matching cipher suite" in r.stderr.lower()


def test_unknown_user_is_answered_at_once(fake_bmc, bmc_password_file):
    bmc = fake_bmc()
    t0 = time.monotonic()
    r = ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status", user="nobody")
    assert r.returncode != 0
    # Without the RAKP2 0x0d answer ipmitool would wait for its retries to run out.
    assert time.monotonic() - t0 < 1.5


def test_wrong_password_fails(fake_bmc, secret_dir):
    bad = secret_dir / "bad"
    bad.write_text("not-the-password")
    bad.chmod(0o600)
    bmc = fake_bmc()
    r = ipmitool(bmc.port, bad, "chassis", "power", "status")
    assert r.returncode != 0 and "Chassis Power" not in r.stdout


def test_fault_file_changes_behaviour_live(fake_bmc, bmc_password_file, tmp_path):
    faults = tmp_path / "faults.json"
    power = InMemoryPower(on=True)
    bmc = fake_bmc(backend=power, fault_file=str(faults))
    assert ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status").returncode == 0
    write_fault_file(str(faults), "fail")
    r = ipmitool(bmc.port, bmc_password_file, "chassis", "power", "off")
    assert r.returncode != 0 and power.is_on()
    write_fault_file(str(faults), "hang")
    t0 = time.monotonic()
    r = ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status")
    assert r.returncode != 0 and time.monotonic() - t0 >= 0.5  # silence: ipmitool waited and gave up
    write_fault_file(str(faults), "ok", off_delay=0.6)
    assert ipmitool(bmc.port, bmc_password_file, "chassis", "power", "off").returncode == 0
    assert power.is_on(), "off_delay: still on right after the command"
    time.sleep(0.9)
    assert not power.is_on()


def test_never_off(fake_bmc, bmc_password_file):
    power = InMemoryPower(on=True)
    bmc = fake_bmc(backend=power, never_off=True)
    assert ipmitool(bmc.port, bmc_password_file, "chassis", "power", "off").returncode == 0
    assert "is on" in ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status").stdout


def test_cli_bmc_serves_pyghmi_and_ipmitool(sim_daemon, bmc_password_file):
    """``haagent sim bmc`` in its own process, driven by pyghmi's client and by ipmitool."""
    from pyghmi.ipmi import command

    d = sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                   "--password-file", str(bmc_password_file))
    c = command.Command(bmc="127.0.0.1", userid="admin", password=BMC_PASSWORD, port=d.port, keepalive=False)
    try:
        assert c.get_power()["powerstate"] == "on"
        c.set_power("off", wait=False)
        assert c.get_power()["powerstate"] == "off"
    finally:
        c.ipmi_session.logout()
    assert "is off" in ipmitool(d.port, bmc_password_file, "chassis", "power", "status").stdout
    # The password never reaches the simulator's command line.
    assert BMC_PASSWORD not in open(f"/proc/{d.proc.pid}/cmdline").read()
