"""The ssh plugin against a real sshd in a network namespace this test creates.

The plugin runs in a child process entered into the same namespace (``nsenter --net``), so every
packet stays inside the namespace; the namespace is deleted at teardown even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fence_helpers import ROOT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not os.path.exists("/usr/sbin/sshd"),
    reason="needs root, iproute2 and openssh-server (network namespaces and a real sshd)")

PORT = 2222


@pytest.fixture
def sshd_ns(tmp_path: Path):
    """A fresh namespace with lo up and sshd listening on 127.0.0.1:2222; yields paths and names."""
    ns = f"hafence-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        nsenter = ["nsenter", f"--net=/run/netns/{ns}"]
        subprocess.run(nsenter + ["ip", "link", "set", "lo", "up"], check=True)
        for name in ("hostkey", "otherkey", "clientkey"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
        (tmp_path / "authorized_keys").write_text((tmp_path / "clientkey.pub").read_text())
        config = tmp_path / "sshd_config"
        config.write_text(f"""Port {PORT}
ListenAddress 127.0.0.1
HostKey {tmp_path / 'hostkey'}
AuthorizedKeysFile {tmp_path / 'authorized_keys'}
PidFile {tmp_path / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
""")
        os.makedirs("/run/sshd", exist_ok=True)
        proc = subprocess.Popen(nsenter + ["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-h",
                                           str(tmp_path / "hostkey")], stderr=subprocess.PIPE, text=True)
        host_pub = (tmp_path / "hostkey.pub").read_text().split()
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{PORT} {host_pub[0]} {host_pub[1]}\n")
        other_pub = (tmp_path / "otherkey.pub").read_text().split()
        (tmp_path / "wrong_known_hosts").write_text(f"[127.0.0.1]:{PORT} {other_pub[0]} {other_pub[1]}\n")
        deadline = time.monotonic() + 10
        while not (tmp_path / "sshd.pid").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
        yield {"ns": ns, "dir": tmp_path, "proc": proc}
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        subprocess.run(["ip", "netns", "delete", ns], check=False)


_CHILD = r"""
import json, sys
from fencing.config import parse_fencing_section
from fencing.runner import FenceRunner
from fencing.plugins.ssh import SshPlugin
args = json.loads(sys.argv[1])
out = {}
plugin = SshPlugin("ssh", "kvm01", args["opts"])
for call in args["calls"]:
    try:
        if call == "status":
            out[call] = plugin.status(5).value
        elif call == "off":
            plugin.set_power(False, 5); out[call] = "ok"
        elif call == "fence":
            problems = []
            cfg = parse_fencing_section({"poll_interval": 0.1, "devices": {"ssh": {"plugin": "ssh", "trusted": True,
                "power_timeout": 5, **args["opts"]}}, "hosts": {"kvm01": {"levels": [["ssh"]]}}}, "fencing", problems)
            assert not problems, problems
            r = FenceRunner(cfg).fence_host("kvm01")
            out[call] = [r.outcome.value, r.reason]
    except Exception as e:
        out[call] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def run_in_ns(ns: str, opts: dict, calls: list[str]) -> dict:
    r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", _CHILD,
                        json.dumps({"opts": opts, "calls": calls})],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def opts(d: Path, **kw) -> dict:
    return {"address": "127.0.0.1", "port": PORT, "username": "root", "key_file": str(d / "clientkey"),
            "known_hosts": str(d / "known_hosts"), **kw}


def test_ssh_status_and_fencing_command(sshd_ns):
    d = sshd_ns["dir"]
    mark = d / "fenced"
    out = run_in_ns(sshd_ns["ns"], opts(d, command=f"touch {mark}"), ["status", "off"])
    assert out == {"status": "on", "off": "ok"}
    assert mark.exists()


def test_unknown_host_key_is_rejected(sshd_ns):
    d = sshd_ns["dir"]
    mark = d / "fenced"
    out = run_in_ns(sshd_ns["ns"], opts(d, known_hosts=str(d / "wrong_known_hosts"), command=f"touch {mark}"),
                    ["status", "off"])
    assert out["status"][0] == "FenceAuthError" and "known_hosts" in out["status"][1]
    assert out["off"][0] == "FenceAuthError"
    assert not mark.exists()
    empty = d / "empty_known_hosts"
    empty.write_text("")
    empty.chmod(0o600)
    out = run_in_ns(sshd_ns["ns"], opts(d, known_hosts=str(empty)), ["status"])
    assert out["status"][0] == "FenceAuthError"


def test_trusted_ssh_confirms_when_the_host_stops_answering(sshd_ns):
    d = sshd_ns["dir"]
    # The "power-off" kills sshd, as a real power-off would end every connection.
    out = run_in_ns(sshd_ns["ns"], opts(d, command=f"kill $(cat {d / 'sshd.pid'})"), ["fence"])
    assert out["fence"][0] == "confirmed_off", out
    sshd_ns["proc"].wait(5)


def test_nothing_listening_is_unreachable(sshd_ns):
    d = sshd_ns["dir"]
    out = run_in_ns(sshd_ns["ns"], opts(d, port=2299), ["status"])
    assert out["status"][0] == "FenceUnreachable"
