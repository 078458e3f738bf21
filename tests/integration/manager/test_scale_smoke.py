"""The scale bench in small (20 hosts, 400 VMs): a real 3-member etcd, the light agents, a real
leader process. Its figures live in BENCHMARKS.md; this checks what they rest on."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the bench package lives at the root


def test_twenty_hosts_one_dies_only_it_is_fenced_and_its_vms_are_placed(etcd1):  # etcd1: skips without etcd
    from bench.scale import TTL, run_size

    r = run_size(20, steady_s=3)
    assert r["wrong_fences"] == [] and r["store_errors"] == 0 and r["leases_lost"] == 0
    # its fence comes after the lease could have expired, and every one of its 20 VMs is placed
    assert TTL <= r["fence_after_keepalive_s"] < TTL + 5
    assert not math.isnan(r["placed_after_fence_s"]) and r["placed_after_fence_s"] < 5
    assert r["tick_p50_ms"] > 0 and r["rss_mib"] > 0 and not math.isnan(r["lag_p50_ms"])
