"""Report which random fault schedules ran, so a failure anywhere can be replayed by seed."""

from __future__ import annotations

import pytest


@pytest.fixture
def seed_log(request):
    """Append (first, last, failed seeds) for the end-of-run summary line."""
    return request.config.__dict__.setdefault("_haagent_sim_ran", [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    RAN = getattr(config, "_haagent_sim_ran", [])
    if not RAN:
        return
    seeds = sorted((a, b) for a, b, _ in RAN)
    bad = sorted(s for _, _, f in RAN for s in f)
    total = sum(b - a + 1 for a, b in seeds)
    terminalreporter.write_line(
        f"sim random schedules: {total} run, seeds {seeds[0][0]}-{seeds[-1][1]}; "
        + (f"FAILED seeds: {' '.join(map(str, bad))} (replay: haagent sim random --seed N --log)" if bad
           else "every invariant held"))
