"""1,000 seeded random fault schedules on every run; invariants checked after every tick.

Seeds are fixed (0-999) so a run is reproducible; set HAAGENT_SIM_SEED_BASE to explore others.
A failure names the seed and the command that replays it.
"""

from __future__ import annotations

import os

import pytest

from haagent.sim.schedules import replay_command, run_seed

BASE = int(os.environ.get("HAAGENT_SIM_SEED_BASE", "0"))
CHUNK = 100
CHUNKS = 10


@pytest.mark.parametrize("chunk", range(CHUNKS), ids=lambda c: f"seeds_{BASE + c * CHUNK}-{BASE + c * CHUNK + CHUNK - 1}")
def test_random_fault_schedules(chunk: int, seed_log: list) -> None:
    first = BASE + chunk * CHUNK
    failures = []
    for seed in range(first, first + CHUNK):
        out = run_seed(seed)
        if out.violations or out.problems:
            failures.append(f"seed {seed}: {'; '.join(out.violations or out.problems)}\n"
                            f"  replay: {replay_command(seed)}")
    seed_log.append((first, first + CHUNK - 1, [int(f.split()[1].rstrip(":")) for f in failures]))
    assert not failures, "\n".join(failures)
