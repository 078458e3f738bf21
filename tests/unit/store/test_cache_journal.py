"""PrefixCache.changes: the keys changed since a reader's cursor, or everything when those are
not known (a first read, a resync since, a reader further behind than the journal keeps)."""

from __future__ import annotations

from types import SimpleNamespace

from haagent.store import watch
from haagent.store.client import KV, WatchEvent
from haagent.store.watch import PrefixCache


def put(key: str, rev: int, value: bytes = b"v") -> WatchEvent:
    return WatchEvent("put", key, value, rev, rev, 0, 1)


def test_a_reader_gets_what_changed_since_its_cursor_and_everything_after_a_resync(monkeypatch):
    cache = PrefixCache(SimpleNamespace(timeout=1.0), "/p/")  # type: ignore[arg-type]
    cache.on_resync([KV("/p/a", b"1", 1, 1, 1, 0), KV("/p/b", b"1", 2, 2, 1, 0)], 2)
    everything, changed, rev, cursor = cache.changes(None)
    assert set(everything) == {"/p/a", "/p/b"} and changed == {} and rev == 2
    cache.on_events([put("/p/a", 3, b"2"), put("/p/c", 4)])
    cache.on_events([WatchEvent("delete", "/p/b", b"", 5, 0), put("/p/a", 6, b"3")])
    everything, changed, rev, cursor2 = cache.changes(cursor)
    assert everything is None and rev == 6
    assert list(changed) == ["/p/a", "/p/c", "/p/b"]  # each key once, in the order first changed
    assert changed["/p/a"].value == b"3" and changed["/p/b"] is None
    assert cache.changes(cursor2)[:2] == (None, {})  # nothing since
    cache.on_resync([KV("/p/z", b"1", 7, 7, 1, 0)], 7)  # events were missed: the reader starts over
    everything, changed, rev, cursor3 = cache.changes(cursor2)
    assert set(everything) == {"/p/z"} and changed == {} and rev == 7
    monkeypatch.setattr(watch, "JOURNAL_MAX", 3)  # a reader further behind than the journal keeps
    cache.on_events([put(f"/p/k{i}", 8 + i) for i in range(4)])
    everything, changed, _, _ = cache.changes(cursor3)
    assert everything is not None and {f"/p/k{i}" for i in range(4)} <= set(everything)
