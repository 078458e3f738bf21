"""A real agent process under systemd's notify protocol (a unix datagram socket as NOTIFY_SOCKET):
READY=1 once it holds its lease and has joined the election, WATCHDOG=1 every round, STOPPING=1
on SIGTERM; as leader it posts its events to the [notify] webhook, signed."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from agent_helpers import spawn_agent, wait_for
from haagent.notify.webhook import SIGNATURE_HEADER, signature_ok

pytestmark = pytest.mark.etcd


def test_ready_watchdog_stopping_and_the_leaders_webhook(tmp_path, etcd1, receiver):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    secret = tmp_path / "webhook.secret"
    secret.write_text("webhook-secret\n")
    secret.chmod(0o600)
    notify = (f'[notify]\nurl = "{receiver.url}"\nsecret_file = "{secret}"\n'
              f'queue_dir = "{tmp_path / "queue"}"\nmin_backoff = 0.1\nmax_backoff = 0.5\n')
    proc = spawn_agent(tmp_path, "h1", etcd1.endpoints, extra=notify, env={**os.environ, "NOTIFY_SOCKET": sock_path})
    messages: list[str] = []

    def read() -> bool:
        try:
            messages.append(sock.recv(4096).decode())
            return True
        except socket.timeout:
            return False

    def received(text: str) -> bool:
        read()
        assert proc.poll() is None, (tmp_path / "h1.log").read_text()
        return any(text in m for m in messages)

    try:
        wait_for(lambda: received("READY=1"), 30, "READY=1")
        ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
        assert "STATUS=leader, epoch" in messages[ready]  # the only agent: it won the election first
        assert any("STATUS=waiting for an etcd lease" in m for m in messages[:ready])
        pings = lambda: sum(m == "WATCHDOG=1" for m in messages[ready:])  # noqa: E731
        wait_for(lambda: received("") and pings() >= 3, 10, "three watchdog pings after READY")
        events = wait_for(lambda: [e for e in receiver.accepted() if e["type"] == "leader.started"], 20,
                          "the leader.started event at the webhook")
        assert events[0]["source"] == "h1" and events[0]["cluster"] == "it"
        post = next(p for p in receiver.posts if p.event["type"] == "leader.started")
        assert signature_ok(b"webhook-secret", post.body, post.headers[SIGNATURE_HEADER])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        while read():  # what is left (the agent has exited)
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    assert any("STOPPING=1" in m for m in messages)
    assert not any("webhook-secret" in line for line in (tmp_path / "h1.log").read_text().splitlines())
