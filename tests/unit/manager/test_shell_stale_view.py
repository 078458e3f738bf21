"""The leader decides nothing from a view its cache cannot vouch for."""

from __future__ import annotations

import pytest

from haagent.errors import StoreUnavailable
from haagent.manager.shell import EtcdLeaderStore
from haagent.store.keys import Keys


class Cache:
    """The PrefixCache answers the leader's store reads from (its freshness is the point here)."""

    def __init__(self, stale: bool):
        self._stale = stale

    def stale(self, max_age=None):
        return self._stale

    def changes(self, cursor):
        return {}, {}, 5, (1, 0)


def test_a_stale_cache_is_no_view():
    with pytest.raises(StoreUnavailable):
        EtcdLeaderStore(Keys("c"), election=None, cache=Cache(True)).view()
    assert EtcdLeaderStore(Keys("c"), election=None, cache=Cache(False)).view().hosts == {}
