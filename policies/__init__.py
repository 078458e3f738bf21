"""Placement: filters, weighers, NUMA fit, affinity, capacity, rebalance planner.

The public API the manager calls; every function is pure (a frozen cluster in, a result out).
"""

from policies.capacity import CapacityReport, FailureSet, capacity
from policies.config import PolicyConfig, parse_policy_section
from policies.model import Cluster, Group, Host, HostAffinity, NumaCell, Vm
from policies.place import (EvacuationPlan, Explanation, Move, Placement, PlacementResult,
                            Unplaceable, evacuate, explain, place)
from policies.rebalance import RebalancePlan, rebalance, score

__all__ = [
    "CapacityReport", "Cluster", "EvacuationPlan", "Explanation", "FailureSet", "Group", "Host",
    "HostAffinity", "Move", "NumaCell", "Placement", "PlacementResult", "PolicyConfig",
    "RebalancePlan", "Unplaceable", "Vm", "capacity", "evacuate", "explain", "parse_policy_section",
    "place", "rebalance", "score",
]
