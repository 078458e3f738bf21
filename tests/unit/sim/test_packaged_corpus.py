"""The scenario corpus ships in the wheel: `haagent sim scenario` and `sim random` work from an
installed package, outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_scenarios_run_from_an_installed_wheel(tmp_path):
    wheels, site, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", ".build", "build", "*.egg-info",
                                                             "__pycache__", ".hypothesis", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(wheels), str(src)], check=True, cwd=tmp_path, timeout=300)
    [wheel] = wheels.glob("haagent-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import haagent.sim.scenario as s; print(s.CORPUS)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not the checkout
    for args in (["sim", "scenario", "host-power-loss"], ["sim", "random", "--seed", "7"]):
        out = subprocess.run([sys.executable, "-m", "haagent.cli", *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
