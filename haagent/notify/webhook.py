"""The leader's events out: each one a signed JSON POST, queued on disk first and delivered by one
thread with back-off, so a slow or dead receiver never holds up the leader.

Delivery is at least once: an event leaves the queue only after a 2xx answer, so a crash between
that answer and the removal sends it again. Receivers drop repeats by the event ``id``
(also in the ``X-Haagent-Delivery`` header). Events are delivered in the order they were queued;
while the oldest is refused, nothing newer overtakes it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import threading
import time
import uuid
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import urlsplit

from tenacity import Retrying, retry_if_exception_type, wait_exponential

from haagent import __version__, metrics
from haagent.errors import ConfigError, DeliveryFailed
from haagent.log import get_logger
from haagent.notify.config import NotifyConfig
from haagent.notify.queue import DiskQueue

log = get_logger("haagent.notify")

SIGNATURE_HEADER = "X-Haagent-Signature"  # "sha256=" + hex HMAC-SHA256 of the raw body
EVENT_HEADER = "X-Haagent-Event"  # the event type, so a receiver can route without parsing
DELIVERY_HEADER = "X-Haagent-Delivery"  # the event id: the same on every retry of one event
SCHEMA = 1


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver checks: ``header`` is ``sign(secret, body)`` (compared in constant time)."""
    return hmac.compare_digest(sign(secret, body), header or "")


def wanted(globs: tuple[str, ...], event_type: str) -> bool:
    """Whether ``[notify] events`` selects ``event_type`` (shell globs, case-sensitive)."""
    return any(fnmatchcase(event_type, g) for g in globs)


class Poster(Protocol):
    def post(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Send one event; raise DeliveryFailed unless the receiver answered 2xx."""


class HttpPoster:
    """POSTs to the configured URL. Never follows a redirect (a 3xx is a failure) and never
    puts the URL's path or query in an error or a log line: webhook paths are often secrets."""

    def __init__(self, config: NotifyConfig):
        self.config = config
        parts = urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.receiver = f"{parts.scheme}://{parts.netloc}"
        self._context = ssl.create_default_context(cafile=config.ca_cert) if self.https else None

    def post(self, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            secret = Path(self.config.secret_file).read_bytes().strip()
        except OSError as exc:
            raise DeliveryFailed(f"cannot read notify.secret_file {self.config.secret_file}: {exc.strerror}") from exc
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.config.timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.config.timeout)
        try:
            conn.request("POST", self.path, body, {
                **headers, "Content-Type": "application/json", "User-Agent": f"haagent/{__version__}",
                SIGNATURE_HEADER: sign(secret, body)})
            resp = conn.getresponse()
            resp.read(65536)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryFailed(f"{self.receiver}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        if not 200 <= resp.status < 300:
            raise DeliveryFailed(f"{self.receiver} answered {resp.status} {resp.reason}")


class Notifier:
    """``publish`` (the leader's thread) queues an event on disk and returns; one delivery thread
    (``start``) sends the queue's head until it is taken, waiting ``min_backoff`` doubling up to
    ``max_backoff`` between tries. Events still queued at a stop go out after the next start.
    Raises ConfigError when ``queue_dir`` cannot be made or read."""

    def __init__(self, config: NotifyConfig, cluster: str, source: str, *, poster: Poster | None = None,
                 wall: Callable[[], float] = time.time, new_id: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.config, self.cluster, self.source = config, cluster, source
        self.poster = poster or HttpPoster(config)
        self.wall, self.new_id = wall, new_id
        try:
            self.queue = DiskQueue(config.queue_dir, config.max_queued)
        except OSError as exc:
            raise ConfigError([f"notify.queue_dir: cannot use {config.queue_dir}: {exc.strerror}"]) from exc
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.NOTIFY_QUEUED.set(len(self.queue))

    def publish(self, event_type: str, data: Mapping[str, Any]) -> str | None:
        """Queue one event if ``[notify] events`` selects it: its id, or None. Never raises: a
        full disk costs the event (logged and counted), never the leader's step."""
        if not wanted(self.config.events, event_type):
            return None
        event_id = self.new_id()
        body = json.dumps({"id": event_id, "type": event_type, "schema": SCHEMA, "cluster": self.cluster,
                           "source": self.source, "at": round(self.wall(), 3), "data": dict(data)},
                          sort_keys=True, default=str).encode()
        try:
            dropped = self.queue.put(body)
        except OSError as exc:
            log.error("notify_queue_failed", event=event_type, id=event_id, error=str(exc))
            metrics.NOTIFY_DROPPED.inc()
            return None
        if dropped:
            log.warning("notify_queue_full", dropped=dropped, max_queued=self.config.max_queued)
            metrics.NOTIFY_DROPPED.inc(dropped)
        metrics.NOTIFY_QUEUED.set(len(self.queue))
        self._wake.set()
        return event_id

    def start(self) -> "Notifier":
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop delivering (what is queued stays on disk); waits at most one POST's timeout."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.config.timeout + 1 if timeout is None else timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            item = self.queue.head()
            if item is None:
                self._wake.wait()
                continue
            name, body = item
            try:
                delivered = self._deliver(name, body)
            except DeliveryFailed:  # only when stopping: the event stays queued for the next start
                return
            self.queue.remove(name)
            if delivered:
                metrics.NOTIFY_DELIVERED.inc()
            metrics.NOTIFY_QUEUED.set(len(self.queue))

    def _deliver(self, name: str, body: bytes) -> bool:
        """Send until taken (True) or dropped from the queue meanwhile (False); raises
        DeliveryFailed only when stopping."""
        try:
            head = json.loads(body)
            headers = {EVENT_HEADER: str(head["type"]), DELIVERY_HEADER: str(head["id"])}
        except (ValueError, KeyError, TypeError):
            headers = {}  # not one of ours (a hand-edited queue file): sent as it is
        c = self.config
        for attempt in Retrying(retry=retry_if_exception_type(DeliveryFailed),
                                wait=wait_exponential(multiplier=c.min_backoff, min=c.min_backoff, max=c.max_backoff),
                                stop=lambda _state: self._stop.is_set(), sleep=self._stop.wait,
                                before_sleep=self._failed, reraise=True):
            with attempt:
                if not self.queue.holds(name):
                    return False  # dropped by the bound while we retried: the newest events win
                self.poster.post(body, headers)
        return True

    def _failed(self, state: Any) -> None:
        metrics.NOTIFY_FAILURES.inc()
        exc = state.outcome.exception()
        log.warning("notify_delivery_failed", error=str(exc), attempt=state.attempt_number,
                    retry_in_s=round(state.next_action.sleep, 1), queued=len(self.queue))
