"""A bounded queue of event bodies on disk: one file per event, so nothing queued is lost when
the agent stops or crashes, and a dead receiver costs at most ``max_items`` files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_SUFFIX = ".json"


class DiskQueue:
    """FIFO of byte strings in ``directory`` (files ``<seq>.json``, written by rename, so a crash
    leaves either the whole event or none). Past ``max_items`` the oldest are dropped."""

    def __init__(self, directory: str | os.PathLike[str], max_items: int):
        self.dir = Path(directory)
        self.max_items = max_items
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.dir.glob(".tmp-*"):  # a put cut short by a crash: never renamed, never queued
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._names = sorted(p.name for p in self.dir.glob("*" + _SUFFIX) if p.stem.isdigit())
        self._next = int(self._names[-1][:-len(_SUFFIX)]) + 1 if self._names else 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._names)

    def put(self, body: bytes) -> int:
        """Append ``body`` durably; the number of old items dropped to stay within the bound."""
        with self._lock:
            name = f"{self._next:020d}{_SUFFIX}"
            self._next += 1
            tmp = self.dir / f".tmp-{name}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.dir / name)
            self._sync_dir()
            self._names.append(name)
            dropped = self._names[:-self.max_items] if len(self._names) > self.max_items else []
            for old in dropped:
                (self.dir / old).unlink(missing_ok=True)
            del self._names[:len(dropped)]
            return len(dropped)

    def head(self) -> tuple[str, bytes] | None:
        """The oldest item (name, body), left in place until ``remove``; None when empty."""
        with self._lock:
            while self._names:
                name = self._names[0]
                try:
                    return name, (self.dir / name).read_bytes()
                except FileNotFoundError:  # removed behind our back: skip it
                    self._names.pop(0)
            return None

    def holds(self, name: str) -> bool:
        """Whether ``name`` is still queued (the bound may have dropped it while it was retried)."""
        with self._lock:
            return name in self._names

    def remove(self, name: str) -> None:
        """Forget a delivered item (a no-op if the bound already dropped it)."""
        with self._lock:
            if name in self._names:
                self._names.remove(name)
            (self.dir / name).unlink(missing_ok=True)

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
