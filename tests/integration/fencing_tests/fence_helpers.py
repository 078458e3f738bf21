"""Shared helpers for the fencing integration tests (imported by conftest and tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HAAGENT = [sys.executable, "-m", "haagent.cli"]
BMC_PASSWORD = "Bmc-pw-7731x"  # distinctive, so leak checks cannot match by accident
BMC_USER = "admin"


class Daemon:
    """A simulator started through the real CLI in a child process."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(HAAGENT + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            self.stop()
            raise RuntimeError(f"simulator did not start: {err}")
        self.banner = line.strip()
        self.port = int(line.split(" udp ")[1].split()[0].rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def ipmitool(port: int, password_file: Path, *args: str, user: str = BMC_USER, cipher: str = "3"):
    """Run Debian's ipmitool against a loopback BMC; the password travels in a file (-f)."""
    cmd = ["ipmitool", "-I", "lanplus", "-C", cipher, "-H", "127.0.0.1", "-p", str(port), "-U", user,
           "-f", str(password_file), "-N", "1", "-R", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=dict(os.environ))
