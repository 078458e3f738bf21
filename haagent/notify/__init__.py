"""Events out: the leader's events as signed JSON webhooks, from a bounded on-disk queue."""
