"""Tearing down whatever is left: after a failing test, after an `up` killed half way."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from haagent.lab.cli import lab as lab_cli
from haagent.lab.lab import Lab
from lab_helpers import eventually, lab_traces, netns_inodes

pytestmark = [pytest.mark.lab, pytest.mark.slow]
HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root: they create namespaces and run libvirtd (CI runs them as root)")


def test_a_failing_lab_test_still_tears_its_lab_down(tmp_path: Path) -> None:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(HERE / "lab_helpers.py", tmp_path / "lab_helpers.py")
    seen = tmp_path / "seen"
    (tmp_path / "test_fails.py").write_text(textwrap.dedent(f"""
        import json, os
        def test_fails(make_lab):
            lab = make_lab("lbf", 2, 1)
            with open({str(seen)!r}, "w") as f:
                json.dump(sorted(os.listdir("/run/netns")), f)
            assert lab.running_vms("h1") == ["vm1"]
            raise AssertionError("this test fails on purpose, with its lab up")
    """))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "fails on purpose" in res.stdout
    assert "lbf-h1" in seen.read_text()  # the lab really was up while the test ran
    assert lab_traces("lbf", Lab("lbf").dir) == []


def test_down_after_up_was_killed_half_way() -> None:
    lab = Lab("lbk")
    lab.down()
    up = subprocess.Popen([sys.executable, "-c", "from haagent.cli import main; main()",
                           "lab", "up", "--prefix", "lbk", "--hosts", "2", "--vms", "2"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it once the hosts exist but before the VMs do.
        eventually(lambda: lab.hosts() and all(lab.init_pid(h) for h in lab.hosts()), 30,
                   interval=0.02, what="hosts powered on")
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        inodes = netns_inodes("lbk")
        assert inodes and lab.state.get("phase") == "building"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        res = CliRunner().invoke(lab_cli, ["down", "--prefix", "lbk"])
    assert res.exit_code == 0, res.output
    assert lab_traces("lbk", lab.dir, inodes) == []
    res = CliRunner().invoke(lab_cli, ["down", "--prefix", "lbk"])  # idempotent
    assert res.exit_code == 0, res.output


def test_cli_refuses_bad_sizes_and_unknown_labs() -> None:
    runner = CliRunner()
    res = runner.invoke(lab_cli, ["up", "--prefix", "lbx", "--hosts", "7"])
    assert res.exit_code == 1 and "between 2 and 6" in res.output
    res = runner.invoke(lab_cli, ["status", "--prefix", "lbx"])
    assert res.exit_code == 1 and "no lab 'lbx'" in res.output
    res = runner.invoke(lab_cli, ["crash", "--prefix", "lbx", "h1"])
    assert res.exit_code == 1 and "no lab" in res.output
    res = runner.invoke(lab_cli, ["up", "--prefix", "Bad-Prefix"])
    assert res.exit_code == 2 and "prefix must be" in res.output
    assert not Lab("lbx").exists()


def test_status_json_and_bmc_faults(make_lab) -> None:
    lab = make_lab("lbs", 2, 2)
    runner = CliRunner()
    res = runner.invoke(lab_cli, ["bmc", "--prefix", "lbs", "h2", "hang"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(lab_cli, ["bmc", "--prefix", "lbs", "h2", "off-delay", "2.5"])
    assert res.exit_code == 0, res.output
    import json
    st = json.loads(runner.invoke(lab_cli, ["status", "--prefix", "lbs", "--json"]).output)
    h1, h2 = st["hosts"]
    assert h1["vms"] == ["vm1"] and h2["vms"] == ["vm2"]
    assert h1["power"] == "on" and h1["libvirtd"]["running"] and h1["etcd"]["running"]
    assert h2["bmc"]["mode"] == "hang" and h2["bmc"]["off_delay"] == 2.5 and h2["bmc"]["serving"]
    # A hung BMC answers nothing: ipmitool gives up (bounded by -N/-R).
    env = dict(os.environ, IPMI_PASSWORD=lab.bmc_password_file.read_text().strip())
    t0 = time.monotonic()
    res = lab.exec("h1", ["ipmitool", "-I", "lanplus", "-C", "3", "-H", lab.bmc_address("h2"), "-U",
                          lab.bmc_user, "-E", "-N", "1", "-R", "1", "chassis", "power", "status"], env=env)
    assert res.returncode != 0 and time.monotonic() - t0 < 20
    lab.bmc("h2", "ok")
    # stop/start libvirtd: the VM keeps running through it.
    lab.stop_libvirtd("h2")
    assert not lab.libvirtd_running("h2") and lab.running_vms("h2") is None
    lab.start_libvirtd("h2")
    assert lab.running_vms("h2") == ["vm2"]
