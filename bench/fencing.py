"""Time to confirmed off per plugin against the simulators on loopback (median of 20)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 20
ROOT = Path(__file__).resolve().parent.parent


def _runner(devices: dict):
    from fencing.config import parse_fencing_section
    from fencing.runner import FenceRunner

    problems: list[str] = []
    cfg = parse_fencing_section({"poll_interval": 0.05, "devices": devices,
                                 "hosts": {"h": {"levels": [[next(iter(devices))]]}}}, "fencing", problems)
    assert not problems, problems
    return FenceRunner(cfg)


def _measure(devices: dict, power_on) -> tuple[float, float, int]:
    runner = _runner(devices)
    times, ok = [], 0
    for _ in range(RUNS):
        power_on()
        t0 = time.monotonic()
        result = runner.fence_host("h")
        times.append(time.monotonic() - t0)
        ok += result.confirmed_off
    return statistics.median(times), max(times), ok


def run() -> str:
    from fencing.plugins.apc_snmp import ApcSnmpPlugin
    from fencing.plugins.ipmi import IpmiPlugin
    from fencing.fakes.pdu import FakePdu
    from haagent import log

    log.configure("json", "error", stream=open(os.devnull, "w"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pw = Path(tmp) / "pw"
        pw.write_text("bench-password\n")
        pw.chmod(0o600)
        community = Path(tmp) / "community"
        community.write_text("private\n")
        community.chmod(0o600)
        bmc = subprocess.Popen([sys.executable, "-m", "haagent.cli", "sim", "bmc", "--listen", "127.0.0.1:0",
                                "--user", "admin", "--password-file", str(pw)], stdout=subprocess.PIPE, text=True,
                               cwd=ROOT)
        pdu = FakePdu(address="127.0.0.1", port=0, outlets=4).start()
        try:
            port = int(bmc.stdout.readline().split(" udp ")[1].split()[0].rsplit(":", 1)[1])
            ipmi = {"plugin": "ipmi", "address": "127.0.0.1", "port": port, "username": "admin",
                    "password_file": str(pw)}
            on_ipmi = lambda: IpmiPlugin("b", "h", {**ipmi, "cipher_suite": 3}).set_power(True, 5)
            snmp = {"plugin": "apc_snmp", "address": "127.0.0.1", "port": pdu.port, "outlet": 1,
                    "community_file": str(community)}
            on_pdu = lambda: ApcSnmpPlugin("p", "h", snmp).set_power(True, 5)
            cases = [
                ("ipmi (pyghmi, suite 3)", {"bmc": ipmi}, on_ipmi),
                ("apc_snmp (pysnmp v2c)", {"pdu": snmp}, on_pdu),
                ("fence_agent: fence_ipmilan", {"agent": {"plugin": "fence_agent", "agent": "fence_ipmilan",
                                                          "ip": "127.0.0.1", "ipport": port, "username": "admin",
                                                          "password_file": str(pw),
                                                          "parameters": ["lanplus=1", "cipher=3", "power_wait=0"]}},
                 on_ipmi),
                ("fence_agent: fence_apc_snmp", {"agent": {"plugin": "fence_agent", "agent": "fence_apc_snmp",
                                                           "ip": "127.0.0.1", "ipport": pdu.port, "plug": "1",
                                                           "password_file": str(community), "secret_key": "community",
                                                           "parameters": ["snmp_version=2c", "power_wait=0"]}},
                 on_pdu),
            ]
            for name, devices, power_on in cases:
                median, worst, ok = _measure(devices, power_on)
                rows.append(f"| {name} | {median * 1000:.0f} | {worst * 1000:.0f} | {ok}/{RUNS} |")
        finally:
            pdu.stop()
            bmc.terminate()
            bmc.wait(5)
    return "\n".join([
        "## Fencing: time to confirmed off",
        "",
        f"Whole runner path (status first, off, poll every 50 ms until off) against the simulators on "
        f"loopback, the host on before each run; {RUNS} runs per plugin. The ssh plugin needs a network "
        "namespace and is measured by its tests only; manual depends on a human.",
        "",
        "| plugin | median ms | worst ms | confirmed |",
        "|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    print(run())
