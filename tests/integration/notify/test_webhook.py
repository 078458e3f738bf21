"""Webhook delivery against a real HTTP receiver on loopback: signature, retry, a receiver that
is down and comes back, a restart, the queue's bound, and a publish that never waits on the
receiver. Nothing lost; duplicates only as at-least-once allows, told apart by the event id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from haagent.notify.config import NotifyConfig
from haagent.notify.webhook import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, Notifier, signature_ok

SECRET = b"0123456789abcdef-webhook"
# How long the receiver stays down in the outage test: a real minute, with the back-off capped
# at a fifth of it so the sender keeps trying (and failing) all along.
DOWN_FOR = float(os.environ.get("HAAGENT_TEST_WEBHOOK_DOWN_S", "60"))


def drained(n: Notifier) -> None:
    """The sender removes an event just after the receiver answered: wait for that (bounded)."""
    import time

    deadline = time.monotonic() + 10
    while len(n.queue):
        assert time.monotonic() < deadline, f"{len(n.queue)} events still queued"
        time.sleep(0.01)
    assert not list(Path(n.config.queue_dir).iterdir())  # no file left behind either


@pytest.fixture
def config(tmp_path, receiver):
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    return NotifyConfig(url=receiver.url, secret_file=str(secret), queue_dir=str(tmp_path / "queue"),
                        timeout=2.0, min_backoff=0.05, max_backoff=DOWN_FOR / 5)


@pytest.fixture
def notifier(config):
    made = []

    def make(cfg=config, start=True):
        n = Notifier(cfg, "it", "h1")
        made.append(n)
        return n.start() if start else n

    yield make
    for n in made:
        n.stop(timeout=3)


def test_events_arrive_signed_in_order_and_filtered(receiver, config, notifier):
    from dataclasses import replace

    n = notifier(replace(config, events=("failover.*", "alert.raised")))
    ids = [n.publish("failover.started", {"host": "h2"}), n.publish("cluster.host_joined", {"host": "h3"}),
           n.publish("alert.raised", {"alert": "fence_failed"}), n.publish("failover.finished", {"timeline": []})]
    assert ids[1] is None  # not selected by the globs: never queued
    got = receiver.wait_accepted(3)
    assert [e["id"] for e in got] == [ids[0], ids[2], ids[3]]
    assert [e["type"] for e in got] == ["failover.started", "alert.raised", "failover.finished"]
    assert got[0]["cluster"] == "it" and got[0]["source"] == "h1" and got[0]["data"] == {"host": "h2"}
    for post in receiver.posts:
        assert post.path == "/webhook/haagent?token=path-secret"
        assert signature_ok(SECRET, post.body, post.headers[SIGNATURE_HEADER])
        assert not signature_ok(b"another secret", post.body, post.headers[SIGNATURE_HEADER])
        assert post.headers[DELIVERY_HEADER] == post.event["id"]
        assert post.headers[EVENT_HEADER] == post.event["type"]
        assert post.headers["Content-Type"] == "application/json"
    drained(n)


def test_a_refused_event_is_retried_until_taken(receiver, notifier):
    receiver.statuses = [500, 503, 404]
    n = notifier()
    event_id = n.publish("fence.result", {"host": "h2", "result": "confirmed_off"})
    assert [e["id"] for e in receiver.wait_accepted(1)] == [event_id]
    assert [(p.status, p.headers[DELIVERY_HEADER]) for p in receiver.posts] == [
        (500, event_id), (503, event_id), (404, event_id), (200, event_id)]


def test_a_receiver_down_for_a_while_loses_nothing(receiver, notifier):
    import time

    n = notifier()
    ids = [n.publish("host.state_changed", {"i": i}) for i in range(3)]
    receiver.wait_accepted(3)
    receiver.down()
    ids += [n.publish("host.state_changed", {"i": i}) for i in range(3, 8)]
    time.sleep(DOWN_FOR)  # the outage: every try meanwhile is refused
    assert len(n.queue) == 5
    receiver.up()
    got = receiver.wait_accepted(8, timeout=DOWN_FOR / 5 + 20)
    assert [e["id"] for e in got] == ids  # all, in order, each once (nothing was half-delivered)
    drained(n)


def test_queued_events_survive_a_crash_and_go_out_after_the_restart(receiver, config, tmp_path, notifier):
    receiver.down()
    # A leader that queued three events and was killed before delivering any.
    code = ("import os, sys; from haagent.notify.config import NotifyConfig; from haagent.notify.webhook import Notifier\n"
            f"n = Notifier(NotifyConfig(url={config.url!r}, secret_file={config.secret_file!r}, "
            f"queue_dir={config.queue_dir!r}), 'it', 'h1')\n"
            "print(' '.join(n.publish('failover.started', {'n': i}) for i in range(3)), flush=True)\n"
            "os._exit(9)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 9, r.stderr
    ids = r.stdout.split()
    receiver.up()
    notifier()
    assert [e["id"] for e in receiver.wait_accepted(3)] == ids


def test_a_full_queue_drops_the_oldest(receiver, config, notifier):
    from dataclasses import replace

    receiver.down()
    n = notifier(replace(config, max_queued=3))
    ids = [n.publish("cluster.vm_started", {"i": i}) for i in range(5)]
    assert len(n.queue) == 3
    receiver.up()
    assert [e["id"] for e in receiver.wait_accepted(3)] == ids[2:]


def test_a_hung_receiver_never_holds_up_publish(receiver, notifier):
    receiver.hold.clear()  # every request now hangs in the receiver
    n = notifier()
    ids = [n.publish("alert.raised", {"i": i}) for i in range(20)]  # would hang here if publish waited
    assert all(ids) and len(n.queue) == 20
    receiver.hold.set()
    assert {e["id"] for e in receiver.wait_accepted(20)} == set(ids)
