"""A webhook receiver on loopback for the notify tests: records every POST, answers with the
statuses it is told to (200 once the list runs out), can go down and come back on its port."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict:
        return json.loads(self.body)


class Receiver:
    def __init__(self, statuses: list[int] | None = None):
        self.posts: list[Post] = []
        self.statuses = list(statuses or [])
        self.hold = threading.Event()  # cleared: every request waits until it is set again
        self.hold.set()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook/haagent?token=path-secret"

    def accepted(self) -> list[dict]:
        with self._lock:
            return [p.event for p in self.posts if 200 <= p.status < 300]

    def up(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.hold.wait(30)
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.posts.append(Post(self.path, dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def down(self) -> None:
        """Stop answering: connections to the port are refused until ``up``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_accepted(self, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(got := self.accepted()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver accepted {len(got)} events, waited for {n}")
            time.sleep(0.02)
        return got
