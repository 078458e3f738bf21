"""policies/config.py (named test_policy_config: tests/unit/haagent_tests/test_config.py exists)."""

from __future__ import annotations

import pytest

from policies.config import DEFAULT_ENV_PRIORITY, PolicyConfig, parse_policy_section


def parse(raw):
    problems: list[str] = []
    return parse_policy_section(raw, "policy", problems), problems


def test_absent_section_gives_defaults():
    cfg, problems = parse(None)
    assert cfg == PolicyConfig() and problems == []
    assert cfg.memory_overcommit == 1.0 and cfg.strategy == "spread"


def test_every_field_is_read():
    cfg, problems = parse({"strategy": "pack", "cpu_overcommit": 2, "memory_overcommit": 1.2,
                           "reserve": {"cpu": 0.1, "memory": 0.2},
                           "weights": {"load": 2, "numa_fragmentation": 0, "soft_affinity": 5},
                           "naming": {"enabled": False, "service_anti_affinity": "hard",
                                      "priority": {"prod": 9, "qa": 5}},
                           "rebalance": {"cpu_weight": 2, "memory_weight": 0.5},
                           "capacity": {"exact_limit": 10}})
    assert problems == []
    assert (cfg.strategy, cfg.cpu_overcommit, cfg.reserve_memory, cfg.weights.soft_affinity) == \
        ("pack", 2.0, 0.2, 5.0)
    assert dict(cfg.naming.priority) == {"prod": 9, "qa": 5} and not cfg.naming.enabled
    assert cfg.imbalance_cpu_weight == 2.0 and cfg.capacity_exact_limit == 10


@pytest.mark.parametrize("raw,line", [
    ({"cpu_overcommit": -1}, "policy.cpu_overcommit: must be greater than 0 (got -1)"),
    ({"strategy": "random"}, "policy.strategy: must be one of spread, pack (got 'random')"),
    ({"reserve": {"memory": 1.5}}, "policy.reserve.memory: must be a fraction below 1 (got 1.5)"),
    ({"weights": {"load": -2}}, "policy.weights.load: must be at least 0 (got -2)"),
    ({"naming": {"service_anti_affinity": "maybe"}},
     "policy.naming.service_anti_affinity: must be one of soft, hard, off (got 'maybe')"),
    ({"naming": {"priority": {"prod": "high"}}},
     "policy.naming.priority.prod: must be a whole number (got 'high')"),
    ({"rebalance": {"cpu_weight": 0, "memory_weight": 0}},
     "policy.rebalance.cpu_weight: cpu_weight and memory_weight cannot both be 0"),
    ({"overcommit": 2}, "policy.overcommit: unknown key"),
])
def test_one_problem_line_per_bad_field(raw, line):
    _cfg, problems = parse(raw)
    assert problems == [line]


def test_config_is_frozen():
    cfg, _ = parse(None)
    with pytest.raises(AttributeError):
        cfg.cpu_overcommit = 9  # type: ignore[misc]
    assert DEFAULT_ENV_PRIORITY["prod"] > DEFAULT_ENV_PRIORITY["staging"] > \
        DEFAULT_ENV_PRIORITY["test"] > DEFAULT_ENV_PRIORITY["dev"]


def test_the_haagent_config_loader_uses_this_parser():
    from haagent.config import parse_config
    from haagent.errors import ConfigError
    base = {"cluster": "c", "host": "h", "etcd": {"endpoints": ["http://127.0.0.1:2379"]}}
    assert parse_config({**base, "policy": {"cpu_overcommit": 2}}).policy.cpu_overcommit == 2
    with pytest.raises(ConfigError, match="policy.cpu_overcommit: must be greater than 0"):
        parse_config({**base, "policy": {"cpu_overcommit": 0}})
