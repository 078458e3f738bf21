"""deploy/haagent-agent.service: Type=notify with a watchdog, hardened, and clean for
``systemd-analyze verify`` (which needs no running systemd; scripts/install-system-deps.sh
installs it). Verify only warns about a bad value, so any output at all fails the test."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[3] / "deploy" / "haagent-agent.service"


def verify(text: str, tmp_path: Path) -> str:
    """systemd-analyze verify's complaints about ``text`` as a unit ("" when clean). The ExecStart
    paths point at this checkout's haagent, as verify checks that commands exist."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: run scripts/install-system-deps.sh (package systemd)")
    unit = tmp_path / "haagent-agent.service"
    unit.write_text(text.replace("/usr/bin/haagent", str(Path(sys.executable).parent / "haagent")))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    return (r.stdout + r.stderr).strip() or ("" if r.returncode == 0 else f"exit {r.returncode}")


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_systemd_analyze_verify_passes(tmp_path):
    assert verify(UNIT.read_text(), tmp_path) == ""


def test_verify_would_catch_a_bad_directive(tmp_path):
    broken = UNIT.read_text().replace("WatchdogSec=30", "WatchdogSec=thirty")
    assert "WatchdogSec" in broken and "Failed to parse" in verify(broken, tmp_path)


def test_notify_watchdog_and_hardening_that_leaves_libvirt_fencing_and_the_watchdog():
    s = service()
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert 0 < int(s["WatchdogSec"]) and s["TimeoutStartSec"] == "infinity"
    assert s["ProtectSystem"] == "strict" and s["StateDirectory"] == "haagent"  # the webhook queue's home
    assert s["DevicePolicy"] == "closed" and "/dev/watchdog rw" in UNIT.read_text()
    # The network for etcd and fence devices, the unix socket for libvirt.
    assert set(s["RestrictAddressFamilies"].split()) >= {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s.get("PrivateNetwork", "no") == "no" and s.get("PrivateDevices", "no") == "no"
    assert "/run/libvirt" not in s.get("InaccessiblePaths", "")
