"""The etcd key layout (DESIGN §3), in one place. Every key lives under ``/haagent/<cluster>/``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Keys:
    """The prefixes are computed once per instance: a leader's view parses every key each tick."""

    cluster: str

    @cached_property
    def root(self) -> str:
        return f"/haagent/{self.cluster}/"

    @property
    def leader(self) -> str:
        """Leader id; its create_revision is the epoch (fencing token)."""
        return self.root + "leader"

    @property
    def leader_info(self) -> str:
        """What the current leader last wrote about itself (a guarded write)."""
        return self.root + "leader_info"

    @cached_property
    def storm_hold(self) -> str:
        """The hosts the storm guard holds now (a guarded write; absent when nothing is held)."""
        return self.root + "storm_hold"

    @cached_property
    def hosts(self) -> str:
        return self.root + "hosts/"

    def host(self, host: str) -> str:
        return f"{self.hosts}{host}/"

    def host_alive(self, host: str) -> str:
        return self.host(host) + "alive"

    def host_report(self, host: str) -> str:
        return self.host(host) + "report"

    def host_state(self, host: str) -> str:
        return self.host(host) + "state"

    def host_lease(self, host: str) -> str:
        """Not on the lease: stamped in every grant's transaction, so its mod_revision is the
        revision of the host's latest lease grant, known even after the lease is gone."""
        return self.host(host) + "lease"

    def host_stopped(self, host: str) -> str:
        """A clean agent stop's record (written while the lease lived; deleted by the next grant)."""
        return self.host(host) + "stopped"

    def host_migration(self, host: str, uuid: str) -> str:
        """The outcome of the last migration ``host`` ran as the source of VM ``uuid`` (its own key)."""
        return self.host(host) + f"migration/{uuid}"

    @cached_property
    def vms(self) -> str:
        return self.root + "vms/"

    def vm_spec(self, uuid: str) -> str:
        return f"{self.vms}{uuid}/spec"

    def vm_placement(self, uuid: str) -> str:
        return f"{self.vms}{uuid}/placement"

    def vm_migration(self, uuid: str) -> str:
        return f"{self.vms}{uuid}/migration"

    @cached_property
    def ops(self) -> str:
        return self.root + "ops/"

    def op(self, op_id: str) -> str:
        return self.ops + op_id

    @cached_property
    def requests(self) -> str:
        return self.root + "requests/"

    def request(self, req_id: str) -> str:
        return self.requests + req_id

    @cached_property
    def events(self) -> str:
        return self.root + "events/"

    def event(self, event_id: str) -> str:
        return self.events + event_id

    def parse_host_key(self, key: str) -> tuple[str, str] | None:
        """``/haagent/c/hosts/h1/alive`` -> ("h1", "alive"); None for keys outside hosts/."""
        if not key.startswith(self.hosts):
            return None
        host, sep, leaf = key[len(self.hosts):].partition("/")
        return (host, leaf) if sep and host and leaf else None

    def parse_vm_key(self, key: str) -> tuple[str, str] | None:
        if not key.startswith(self.vms):
            return None
        uuid, sep, leaf = key[len(self.vms):].partition("/")
        return (uuid, leaf) if sep and uuid and leaf else None
