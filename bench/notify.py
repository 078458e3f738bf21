"""Webhooks: what queueing an event costs the leader's step, and how fast one agent drains its
queue into a receiver on loopback.

``Notifier.publish`` runs on the leader's thread: it writes one file per event and syncs it and
its directory, so an event survives a crash the moment publish returns. A failover that restarts
N VMs queues about N + 10 events in its steps. The queue is on /var/tmp (a disk, as
/var/lib/haagent is), not a tmpfs. Delivery: one thread, one POST per event, new connection each.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EVENTS = 300


def _receiver() -> tuple[ThreadingHTTPServer, list[int]]:
    got: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append(1)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def run() -> str:
    from haagent.notify.config import NotifyConfig
    from haagent.notify.webhook import Notifier

    server, got = _receiver()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="haagent-bench-notify-") as d:
        secret = Path(d) / "secret"
        secret.write_text("bench")
        secret.chmod(0o600)
        cfg = NotifyConfig(f"http://127.0.0.1:{server.server_address[1]}/hook", str(secret),
                           queue_dir=f"{d}/queue", min_backoff=0.05, max_backoff=0.2)
        n = Notifier(cfg, "bench", "h1")
        data = {"host": "h3", "vm": "6c1f0e7a-0000-4000-8000-000000000000", "failover": "failover-h2-7-1"}
        encode = []
        for _ in range(EVENTS):
            t = time.perf_counter()
            json.dumps({"id": "x" * 32, "type": "cluster.vm_started", "data": data}, sort_keys=True).encode()
            encode.append(time.perf_counter() - t)
        queued = []
        for _ in range(EVENTS):
            t = time.perf_counter()
            n.publish("cluster.vm_started", data)
            queued.append(time.perf_counter() - t)
        t = time.perf_counter()
        n.start()
        while len(n.queue):
            time.sleep(0.005)
        drain = time.perf_counter() - t
        n.stop()
    server.shutdown()
    server.server_close()
    p50, p99 = statistics.median(queued), sorted(queued)[int(EVENTS * 0.99) - 1]
    return "\n".join([
        "## Webhooks (bench/notify.py)",
        "",
        f"{EVENTS} events, queued on the leader's thread, then drained by one agent into a receiver on loopback.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| publish (write + sync one event file), median | {p50 * 1000:.2f} ms |",
        f"| publish, 99th percentile | {p99 * 1000:.2f} ms |",
        f"| of which encoding the JSON, median | {statistics.median(encode) * 1e6:.0f} us |",
        f"| a 50-VM host's failover (~60 events) adds to the leader's steps | {60 * p50 * 1000:.0f} ms |",
        f"| delivery, one thread, one POST per event | {EVENTS / drain:.0f} events/s |",
        f"| events the receiver took | {len(got)} |",
    ])
