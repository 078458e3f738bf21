"""``haagent fence status|off|test`` through the real CLI against a fake BMC and a dead device."""

from __future__ import annotations

import subprocess

from fence_helpers import BMC_PASSWORD, HAAGENT, ROOT, ipmitool


def write_config(path, bmc_port, password_file, dead_port):
    path.write_text(f"""
cluster = "c1"
host = "kvm01"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[fencing]
poll_interval = 0.1
[fencing.devices.bmc1]
plugin = "ipmi"
address = "127.0.0.1"
port = {bmc_port}
username = "admin"
password_file = "{password_file}"
power_timeout = 5
[fencing.devices.bmc2]
plugin = "ipmi"
address = "127.0.0.1"
port = {dead_port}
username = "admin"
password_file = "{password_file}"
power_timeout = 2
retries = 0
[fencing.hosts.kvm01]
levels = [["bmc1"]]
[fencing.hosts.kvm02]
levels = [["bmc2"]]
""")


def cli(*args):
    return subprocess.run(HAAGENT + list(args), capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_fence_cli(sim_daemon, bmc_password_file, tmp_path):
    bmc = sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                     "--password-file", str(bmc_password_file))
    dead = sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                      "--password-file", str(bmc_password_file))
    dead.stop()
    config = tmp_path / "haagent.toml"
    write_config(config, bmc.port, bmc_password_file, dead.port)

    r = cli("fence", "status", "kvm01", "--config", str(config))
    assert r.returncode == 0 and "on" in r.stdout, r.stderr

    r = cli("fence", "test", "--config", str(config))
    assert r.returncode == 1 and "1/2 fence paths answer" in r.stdout
    assert "FenceUnreachable" in r.stdout

    r = cli("fence", "off", "kvm01", "--config", str(config))
    assert r.returncode == 2 and "--yes" in r.stderr
    assert "is on" in ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status").stdout

    r = cli("fence", "off", "kvm01", "--yes", "--config", str(config))
    assert r.returncode == 0 and "confirmed_off" in r.stdout, r.stdout + r.stderr
    assert "is off" in ipmitool(bmc.port, bmc_password_file, "chassis", "power", "status").stdout
    assert BMC_PASSWORD not in r.stdout + r.stderr

    r = cli("fence", "off", "kvm02", "--yes", "--config", str(config))
    assert r.returncode == 1 and "nothing listening" in r.stdout


def test_health_check_sets_the_broken_path_gauge(sim_daemon, bmc_password_file, tmp_path):
    from fencing.health import FenceHealthCheck
    from fencing.runner import FenceRunner
    from haagent.config import load_config
    from haagent.metrics import REGISTRY

    bmc = sim_daemon("sim", "bmc", "--listen", "127.0.0.1:0", "--user", "admin",
                     "--password-file", str(bmc_password_file))
    config = tmp_path / "haagent.toml"
    write_config(config, bmc.port, bmc_password_file, 1)
    results = FenceHealthCheck(FenceRunner(load_config(config).fencing)).run_once()
    assert {(r.host, r.device, r.ok) for r in results} == {("kvm01", "bmc1", True), ("kvm02", "bmc2", False)}
    gauge = lambda host, dev: REGISTRY.get_sample_value("haagent_fence_path_broken", {"host": host, "device": dev})
    assert gauge("kvm01", "bmc1") == 0 and gauge("kvm02", "bmc2") == 1
