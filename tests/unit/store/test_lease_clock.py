"""The agent's own view of its lease is conservative: counted from when a grant or refresh was
sent (the server's countdown starts no earlier), never from when the slow reply arrived."""

from __future__ import annotations

from haagent.store.lease import LeaseKeeper


class SlowStore:
    """Answers after ``delay`` seconds of the test's clock (bookkeeping only; etcd is in the
    integration tests)."""

    timeout = 1.0

    def __init__(self, clock: list[float], delay: float):
        self.clock, self.delay = clock, delay

    def grant(self, ttl):
        self.clock[0] += self.delay
        return 7, 1

    def refresh(self, lease_id):
        self.clock[0] += self.delay
        return 3

    def txn(self, compares, ops):
        return None


def test_alive_counts_from_the_request_not_the_reply():
    clock = [100.0]
    keeper = LeaseKeeper(SlowStore(clock, 2.0), 3, interval=1.0, clock=lambda: clock[0])
    keeper.grant()  # sent at 100, answered at 102: the server's TTL ends at 103 at the latest
    clock[0] = 102.9
    assert keeper.alive
    clock[0] = 103.1
    assert not keeper.alive  # the reply time would have said "alive until 105"
    keeper.refresh_once()  # sent at 103.1, answered at 105.1
    clock[0] = 106.2
    assert not keeper.alive
