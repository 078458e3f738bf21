"""Fencing metrics, registered in the process's one registry (haagent.metrics.REGISTRY)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from haagent.metrics import REGISTRY

FENCE_DEVICE_SECONDS = Histogram(
    "haagent_fence_device_seconds", "Time one device took to confirm off or give up, by plugin, device and result",
    ["plugin", "device", "result"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
FENCE_DEVICE_RESULTS = Counter(
    "haagent_fence_device_results_total", "Device fence operations by plugin, device and result "
    "(confirmed_off, failed, timed_out, unconfirmed)", ["plugin", "device", "result"], registry=REGISTRY)
FENCE_CALL_SECONDS = Histogram(
    "haagent_fence_call_seconds", "Latency of one plugin call (status or set_power) by plugin and result",
    ["plugin", "call", "result"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
FENCE_HOST_RESULTS = Counter(
    "haagent_fence_results_total", "Host fence operations by result", ["result"], registry=REGISTRY)
FENCE_HOST_SECONDS = Histogram(
    "haagent_fence_seconds", "Time to fence a host, all levels included, by result", ["result"],
    registry=REGISTRY, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
FENCE_PATH_BROKEN = Gauge(
    "haagent_fence_path_broken", "1 while the periodic check finds this host's fence device not answering",
    ["host", "device"], registry=REGISTRY)
FENCE_CHECK_LAST_RUN = Gauge(
    "haagent_fence_check_last_run_timestamp_seconds", "Wall-clock time the fence path check last completed",
    registry=REGISTRY)
