"""Placement: filters, weighers, NUMA fit, affinity, capacity, rebalance planner."""
