"""The cluster state as it is stored in etcd: the decoded view, the actions, and the one codec
that owns the value format of every key (importable without etcd3)."""
