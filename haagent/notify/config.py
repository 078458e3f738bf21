"""``[notify]``: where the leader's events go (one webhook), what it sends, and how it retries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from haagent.config import Reader

DEFAULT_QUEUE_DIR = "/var/lib/haagent/notify"


@dataclass(frozen=True)
class NotifyConfig:
    url: str
    secret_file: str  # the HMAC-SHA256 key; read at each delivery, so it can be rotated in place
    events: tuple[str, ...] = ("*",)  # globs over event types (failover.*, alert.raised, ...)
    queue_dir: str = DEFAULT_QUEUE_DIR
    max_queued: int = 10000  # past this the oldest undelivered events are dropped (counted)
    timeout: float = 5.0  # one POST, connect to last byte
    min_backoff: float = 1.0
    max_backoff: float = 60.0  # the longest wait between two tries while the receiver is down
    ca_cert: str | None = None  # https: the CA to trust instead of the system's


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target (not http(s), no host); None if fine."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a URL: {exc} (got {url!r})"
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https:// (got {url!r})"
    if not parts.hostname:
        return f"must name a host, like https://n8n.example.com/webhook/haagent (got {url!r})"
    if parts.username or parts.password:
        # Credentials in the URL would show in logs and errors; the HMAC header authenticates.
        return "must not carry a user or password; the receiver checks the signature header instead"
    return None


def parse_notify_section(raw: Any, path: str, problems: list[str]) -> NotifyConfig | None:
    """Validate ``[notify]`` (``raw`` is None when absent: no webhook); one line per problem."""
    if raw is None:
        return None
    r = Reader(raw, path, problems)
    url = r.string("url")
    if url is not None and (problem := url_problem(url)) is not None:
        r.problem("url", problem)
        url = None
    if not r.present("secret_file"):
        r.problem("secret_file", "is required: every event is signed (HMAC-SHA256) so the receiver can "
                                 "tell it came from this cluster")
        secret_file = None
    else:
        secret_file = r.file("secret_file", secret=True)
    events = tuple(r.string_list("events", ["*"]))
    if r.table.get("events") == []:
        r.problem("events", 'must list at least one glob (all events: ["*"])')
    min_backoff = r.number("min_backoff", NotifyConfig.min_backoff, positive=True, maximum=3600)
    max_backoff = r.number("max_backoff", NotifyConfig.max_backoff, positive=True, maximum=86400)
    if min_backoff is not None and max_backoff is not None and max_backoff < min_backoff:
        r.problem("max_backoff", f"must be at least min_backoff ({min_backoff:g}) (got {r.table.get('max_backoff')!r})")
    queue_dir = r.string("queue_dir", DEFAULT_QUEUE_DIR)
    if queue_dir is not None and not queue_dir.startswith("/"):
        r.problem("queue_dir", f"must be an absolute path (got {queue_dir!r})")
    config = NotifyConfig(
        url=url or "", secret_file=secret_file or "", events=events, queue_dir=queue_dir or DEFAULT_QUEUE_DIR,
        max_queued=r.number("max_queued", NotifyConfig.max_queued, minimum=1, maximum=10_000_000, integer=True),
        timeout=r.number("timeout", NotifyConfig.timeout, positive=True, maximum=300),
        min_backoff=min_backoff, max_backoff=max_backoff, ca_cert=r.certificate("ca_cert"))
    r.finish()
    return config
