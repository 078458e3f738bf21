"""Logging redacts secrets and picks JSON off a TTY; metrics are served over HTTP."""

from __future__ import annotations

import io
import json
import socket
import urllib.request

from haagent import log, metrics


def test_json_off_tty_and_secrets_redacted():
    out = io.StringIO()
    log.configure("auto", "info", stream=out)
    log.get_logger("t").info("fence_call", host="h1", password="hunter2",
                             device={"address": "10.0.0.9", "community": "private", "snmp_auth_key": "k"})
    line = json.loads(out.getvalue().strip())
    assert line["event"] == "fence_call" and line["host"] == "h1"
    assert line["password"] == "***" and line["device"]["community"] == "***"
    assert line["device"]["snmp_auth_key"] == "***" and line["device"]["address"] == "10.0.0.9"
    assert "hunter2" not in out.getvalue() and "private" not in out.getvalue()


def test_console_on_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    log.configure("auto", "info", stream=out)
    log.get_logger().info("hello", token="abc")
    text = out.getvalue()
    assert "hello" in text and "abc" not in text and not text.lstrip().startswith("{")


def test_metrics_served_on_configured_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.IS_LEADER.set(1)
    metrics.serve(f"127.0.0.1:{port}")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "haagent_is_leader 1.0" in body
    metrics.IS_LEADER.set(0)


def test_host_load_and_numa_cells_from_a_report():
    metrics.record_host_load({"load": {"cpu": 1.5, "memory_used_mib": 256},
                              "numa": [{"id": 0, "memory_mib": 4096, "free_mib": 512},
                                       {"id": 1, "memory_mib": 4096, "free_mib": 3584}]})
    got = metrics.REGISTRY.get_sample_value
    assert got("haagent_host_cpu_used_cores") == 1.5
    assert got("haagent_host_memory_used_bytes") == 256 * 2**20
    assert got("haagent_host_numa_memory_bytes", {"cell": "1"}) == 4096 * 2**20
    assert got("haagent_host_numa_free_bytes", {"cell": "0"}) == 512 * 2**20
    assert got("haagent_host_numa_free_bytes", {"cell": "1"}) == 3584 * 2**20
