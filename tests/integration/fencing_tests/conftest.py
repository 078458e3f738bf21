"""Fixtures for fencing integration tests: fake BMCs and PDUs on loopback, secret files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fence_helpers import BMC_PASSWORD, BMC_USER, Daemon


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def bmc_password_file(secret_dir: Path) -> Path:
    path = secret_dir / "bmc-password"
    path.write_text(BMC_PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def fake_bmc():
    """Start in-process fake BMCs on free loopback ports; all are stopped at teardown."""
    from fencing.fakes.bmc import FakeBmc

    started = []

    def start(**kwargs):
        kwargs.setdefault("users", {BMC_USER: BMC_PASSWORD})
        bmc = FakeBmc(address="127.0.0.1", port=0, **kwargs).start()
        started.append(bmc)
        return bmc

    yield start
    for bmc in started:
        bmc.stop()


@pytest.fixture
def sim_daemon():
    """Start ``haagent sim ...`` child processes; each is ended by its PID at teardown."""
    started: list[Daemon] = []

    def start(*args: str) -> Daemon:
        d = Daemon(list(args))
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
