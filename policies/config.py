"""The ``[policy]`` config section: overcommit, weigher multipliers, strategy, reserve, naming.

```toml
[policy]
strategy = "spread"            # spread (even load) or pack (fewest busy hosts, saves power)
cpu_overcommit = 4.0           # vcpus per physical cpu (pinned cpus are never overcommitted)
memory_overcommit = 1.0
[policy.reserve]               # fraction of every host kept free for failover restarts
cpu = 0.0
memory = 0.0
[policy.weights]               # weigher multipliers; 0 switches a weigher off
load = 1.0
numa_fragmentation = 0.5
soft_affinity = 2.0
[policy.naming]                # {company}-{environment}-{service}-{instance} names
enabled = true
service_anti_affinity = "soft" # soft | hard | off
[policy.naming.priority]       # replaces the whole default table when given
prod = 400
[policy.rebalance]             # imbalance score = cpu_weight*sd(cpu) + memory_weight*sd(mem)
cpu_weight = 1.0
memory_weight = 1.0
[policy.capacity]
exact_limit = 5000             # above this many host sets, capacity() uses its heuristic
[policy.groups.db]             # a group named in VMs' HA marks (groups="db"); undeclared groups
policy = "anti-affinity"       # are soft anti-affinity. affinity | anti-affinity
hard = true
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from haagent.config import Reader
from haagent.fields import MISSING

DEFAULT_ENV_PRIORITY: Mapping[str, int] = MappingProxyType(
    {"prod": 400, "production": 400, "stage": 300, "staging": 300, "test": 200, "dev": 100})


@dataclass(frozen=True)
class Weights:
    load: float = 1.0
    numa_fragmentation: float = 0.5
    soft_affinity: float = 2.0


@dataclass(frozen=True)
class NamingPolicy:
    enabled: bool = True
    service_anti_affinity: str = "soft"  # soft | hard | off
    priority: Mapping[str, int] = field(default_factory=lambda: DEFAULT_ENV_PRIORITY)


@dataclass(frozen=True)
class PolicyConfig:
    strategy: str = "spread"
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    reserve_cpu: float = 0.0
    reserve_memory: float = 0.0
    weights: Weights = field(default_factory=Weights)
    naming: NamingPolicy = field(default_factory=NamingPolicy)
    imbalance_cpu_weight: float = 1.0
    imbalance_memory_weight: float = 1.0
    capacity_exact_limit: int = 5000
    # Placement groups of the live cluster (name -> (policy, hard)); the cluster file has its own.
    groups: Mapping[str, tuple[str, bool]] = field(default_factory=dict)


DEFAULT = PolicyConfig()


def parse_policy_section(raw: Any, path: str, problems: list[str]) -> PolicyConfig:
    """Validate a ``[policy]`` table (None when absent); append one line per problem."""
    d = PolicyConfig()
    r = Reader(raw, path, problems)
    strategy = r.string("strategy", d.strategy, choices=("spread", "pack"))
    cpu = r.number("cpu_overcommit", d.cpu_overcommit, positive=True, maximum=64)
    mem = r.number("memory_overcommit", d.memory_overcommit, positive=True, maximum=4)

    rs = r.sub("reserve")
    reserve_cpu = rs.number("cpu", 0.0, minimum=0)
    reserve_mem = rs.number("memory", 0.0, minimum=0)
    for key, value in (("cpu", reserve_cpu), ("memory", reserve_mem)):
        if value is not None and value >= 1:
            rs.problem(key, f"must be a fraction below 1 (got {value!r})")
    rs.finish()

    w = r.sub("weights")
    weights = Weights(load=w.number("load", Weights.load, minimum=0),
                      numa_fragmentation=w.number("numa_fragmentation", Weights.numa_fragmentation,
                                                  minimum=0),
                      soft_affinity=w.number("soft_affinity", Weights.soft_affinity, minimum=0))
    w.finish()

    n = r.sub("naming")
    enabled = n.boolean("enabled", True)
    anti = n.string("service_anti_affinity", "soft", choices=("soft", "hard", "off"))
    priority: Mapping[str, int] = DEFAULT_ENV_PRIORITY
    pr = n.raw("priority")
    if isinstance(pr, dict):
        table: dict[str, int] = {}
        for env in sorted(pr):
            value = pr[env]
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{n.name('priority')}.{env}: must be a whole number (got {value!r})")
            elif not env or "-" in env:
                problems.append(f"{n.name('priority')}.{env}: an environment name has no '-'")
            else:
                table[env] = value
        priority = MappingProxyType(table)
    elif "priority" in n.table:
        n.problem("priority", f"must be a table of environment = priority (got {pr!r})")
    n.finish()

    rb = r.sub("rebalance")
    cpu_w = rb.number("cpu_weight", 1.0, minimum=0)
    mem_w = rb.number("memory_weight", 1.0, minimum=0)
    if cpu_w == 0 and mem_w == 0:
        rb.problem("cpu_weight", "cpu_weight and memory_weight cannot both be 0")
    rb.finish()

    cp = r.sub("capacity")
    exact_limit = cp.number("exact_limit", d.capacity_exact_limit, minimum=1, maximum=10**7,
                            integer=True)
    cp.finish()

    groups: dict[str, tuple[str, bool]] = {}
    gr = r.raw("groups")
    if isinstance(gr, dict):
        for name in sorted(gr):
            g = Reader(gr[name], f"{r.name('groups')}.{name}", problems)
            policy = g.string("policy", None, choices=("affinity", "anti-affinity"))
            hard = g.boolean("hard", False)
            g.finish()
            if policy is None and "policy" not in g.table:
                g.problem("policy", "is required: affinity or anti-affinity")
            elif policy is not None:
                groups[name] = (policy, bool(hard))
    elif gr is not MISSING:
        r.problem("groups", f"must be a table of groups (got {gr!r:.40})")
    r.finish()

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return PolicyConfig(
        strategy=pick(strategy, d.strategy), cpu_overcommit=pick(cpu, d.cpu_overcommit),
        memory_overcommit=pick(mem, d.memory_overcommit),
        reserve_cpu=reserve_cpu if reserve_cpu is not None and reserve_cpu < 1 else 0.0,
        reserve_memory=reserve_mem if reserve_mem is not None and reserve_mem < 1 else 0.0,
        weights=Weights(pick(weights.load, 1.0), pick(weights.numa_fragmentation, 0.5),
                        pick(weights.soft_affinity, 2.0)),
        naming=NamingPolicy(enabled, pick(anti, "soft"), priority),
        imbalance_cpu_weight=pick(cpu_w, 1.0), imbalance_memory_weight=pick(mem_w, 1.0),
        capacity_exact_limit=pick(exact_limit, d.capacity_exact_limit), groups=MappingProxyType(groups),
    )
