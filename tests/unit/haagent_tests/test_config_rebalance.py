"""[rebalance]: defaults, one field-named line per bad value, one set of score weights."""

from __future__ import annotations

import subprocess
import sys

import pytest

from haagent.config import parse_config
from haagent.errors import ConfigError

GOOD = {"cluster": "prod-a", "host": "kvm01", "etcd": {"endpoints": ["http://10.0.0.1:2379"]}}


def problems(**rebalance) -> list[str]:
    try:
        parse_config({**GOOD, "rebalance": rebalance})
    except ConfigError as exc:
        return list(exc.problems)
    return []


def test_defaults_advise_every_five_minutes_always():
    rb = parse_config(GOOD).rebalance
    assert (rb.mode, rb.interval, rb.window, rb.timezone) == ("advise", 300.0, "always", "UTC")
    assert rb.max_moves_per_round == 4 and rb.max_gib_per_round == 64.0 and rb.vm_cooldown == 3600.0
    ok = parse_config({**GOOD, "rebalance": {"mode": "auto", "window": "* 22-23,0-5 * * 1-5", "timezone": "Europe/Paris"}})
    assert ok.rebalance.window == "* 22-23,0-5 * * 1-5"


@pytest.mark.parametrize("field,value,line", [
    ("window", "61 * * * *", "rebalance.window: must be a cron expression of 5 fields"),
    ("window", "* * *", "rebalance.window: must be a cron expression of 5 fields"),
    ("window", "", "rebalance.window: must be a non-empty string"),
    ("timezone", "Mars/Olympus", "rebalance.timezone: unknown time zone 'Mars/Olympus'"),
    ("mode", "on", "rebalance.mode: must be one of off, advise, auto (got 'on')"),
    ("max_moves_per_round", -1, "rebalance.max_moves_per_round: must be at least 1 (got -1)"),
    ("max_moves_per_round", 2.5, "rebalance.max_moves_per_round: must be a whole number (got 2.5)"),
    ("max_gib_per_round", -4, "rebalance.max_gib_per_round: must be greater than 0 (got -4)"),
    ("vm_cooldown", -1, "rebalance.vm_cooldown: must not be negative (got -1)"),
    ("threshold", -0.1, "rebalance.threshold: must not be negative (got -0.1)"),
    ("min_gain", -0.1, "rebalance.min_gain: must not be negative (got -0.1)"),
    ("cpu_weight", -1, "rebalance.cpu_weight: must not be negative (got -1)"),
    ("memory_weight", "x", "rebalance.memory_weight: must be a number (got 'x')"),
    ("interval", 60, "rebalance.interval: must be at least 3 x agent.load_smoothing (180s)"),
    ("maxmoves", 3, "rebalance.maxmoves: unknown key"),
])
def test_bad_values_name_their_field(field, value, line):
    got = problems(**{field: value})
    assert len(got) == 1 and got[0].startswith(line), got


def test_a_bad_window_and_a_bad_time_zone_are_each_named():
    got = problems(window="* 1-5 * * * *", timezone="Mars/Olympus")
    assert [p.split(":")[0] for p in got] == ["rebalance.window", "rebalance.timezone"], got


def test_weights_are_the_scores_one_set():
    cfg = parse_config({**GOOD, "rebalance": {"cpu_weight": 2.0, "memory_weight": 0.5}})
    assert (cfg.policy.imbalance_cpu_weight, cfg.policy.imbalance_memory_weight) == (2.0, 0.5)
    assert problems(cpu_weight=0, memory_weight=0) == ["rebalance.cpu_weight: cpu_weight and memory_weight cannot both be 0"]
    with pytest.raises(ConfigError) as exc:
        parse_config({**GOOD, "rebalance": {"cpu_weight": 2.0}, "policy": {"rebalance": {"cpu_weight": 1.0}}})
    assert "rebalance.cpu_weight: is 2 but policy.rebalance.cpu_weight is 1" in str(exc.value)


def test_check_config_exits_2_with_the_line(tmp_path):
    cfg = tmp_path / "haagent.toml"
    cfg.write_text('cluster = "c"\nhost = "h1"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
                   '[rebalance]\nwindow = "every night"\nmax_moves_per_round = -2\nmax_gib_per_round = -1\n'
                   'cpu_weight = -1\n[policy.rebalance]\nmemory_weight = -0.5\n')
    res = subprocess.run([sys.executable, "-m", "haagent.cli", "check-config", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "rebalance.window: must be a cron expression" in res.stderr + res.stdout
    assert "rebalance.max_moves_per_round: must be at least 1 (got -2)" in res.stderr + res.stdout
    assert "rebalance.max_gib_per_round: must be greater than 0 (got -1)" in res.stderr + res.stdout
    assert "rebalance.cpu_weight: must not be negative (got -1)" in res.stderr + res.stdout
    assert "policy.rebalance.memory_weight: must be at least 0 (got -0.5)" in res.stderr + res.stdout
