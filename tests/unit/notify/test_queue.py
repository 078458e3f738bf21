"""The webhook queue on disk: order kept across reopening, half-written files ignored, the bound,
and a queue_dir the agent cannot use refused in one line."""

from __future__ import annotations

import pytest

from haagent.errors import ConfigError
from haagent.notify.config import NotifyConfig
from haagent.notify.queue import DiskQueue
from haagent.notify.webhook import Notifier


def test_order_survives_reopening_and_a_half_written_file_is_ignored(tmp_path):
    q = DiskQueue(tmp_path / "q", 10)
    q.put(b"a")
    q.put(b"b")
    (tmp_path / "q" / ".tmp-00000000000000000003.json").write_bytes(b"cut sh")  # a crash mid-put
    q2 = DiskQueue(tmp_path / "q", 10)
    q2.put(b"c")
    name, body = q2.head()
    assert body == b"a" and len(q2) == 3
    q2.remove(name)
    assert [DiskQueue(tmp_path / "q", 10).head()[1]] == [b"b"]
    assert not list((tmp_path / "q").glob(".tmp-*"))
    assert oct((tmp_path / "q").stat().st_mode & 0o777) == "0o700"


def test_the_bound_drops_the_oldest(tmp_path):
    q = DiskQueue(tmp_path / "q", 2)
    assert [q.put(x) for x in (b"1", b"2", b"3")] == [0, 0, 1]
    name, body = q.head()
    assert body == b"2" and len(q) == 2 and q.holds(name)


def test_a_queue_dir_the_agent_cannot_use_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = NotifyConfig("http://127.0.0.1:1/", str(blocker), queue_dir=str(blocker / "q"))
    with pytest.raises(ConfigError) as err:
        Notifier(cfg, "c", "h1")
    assert err.value.problems == [f"notify.queue_dir: cannot use {blocker / 'q'}: Not a directory"]

