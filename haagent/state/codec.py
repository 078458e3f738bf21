"""Between etcd keys and the steps' data: build views from a key snapshot, turn actions into
store operations. Pure, shared by the production shells and the simulator, so both run the same
encoding as well as the same decisions.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Protocol

from haagent.state.view import (Alert, ClearMigration, ClusterView, ConsumeRequest, DeleteOp, Event, FenceHost, ForgetVm,
                                  HostView, JournalStep, ManagerAction, Migration, MigrationReport, Op, OpStep,
                                  ReadPower, Request, SetHostState, SetPlacement, SetStormHold, StartMigration,
                                  ViewIndex, VmNeeds, VmSpec)
from haagent.model import HostCell, HostState
from haagent.config import check_tuning
from haagent.store.port import Compare, Delete, Put
from haagent.store.keys import Keys


class KVLike(Protocol):
    value: bytes
    lease: int
    mod_revision: int
    create_revision: int


class BadRecord(ValueError):
    """A stored value that does not have the documented shape; the message says what is wrong."""


def _obj(kv: KVLike) -> dict[str, Any]:
    try:
        d = json.loads(kv.value)
    except ValueError:
        raise BadRecord("not JSON") from None
    if not isinstance(d, dict):
        raise BadRecord(f"expected a JSON object, got {type(d).__name__}")
    return d


def _str(d: Mapping[str, Any], name: str, default: str | None = None, *, empty: bool = True) -> str:
    v = d.get(name, default)
    if not isinstance(v, str) or (not empty and not v):
        raise BadRecord(f"{name}: expected a{'' if empty else ' non-empty'} string, got {v!r:.40}")
    return v


def _int(d: Mapping[str, Any], name: str, default: int | None = None, *, minimum: int = 0) -> int:
    v = d.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise BadRecord(f"{name}: expected an integer >= {minimum}, got {v!r:.40}")
    return v


def _num(d: Mapping[str, Any], name: str, default: float | None = None) -> float:
    v = d.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise BadRecord(f"{name}: expected a finite number, got {v!r:.40}")
    return float(v)


def _strs(d: Mapping[str, Any], name: str) -> tuple[str, ...]:
    v = d.get(name, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRecord(f"{name}: expected a list of strings, got {v!r:.40}")
    return tuple(v)


POLICIES = ("restart", "migrate", "none")
MIGRATION_MODES = ("live", "cold", "cold-start")


def spec_from_record(uuid: str, d: Mapping[str, Any]) -> VmSpec:
    """``vms/<uuid>/spec`` -> VmSpec, every field checked."""
    priority = d.get("priority")
    if priority is not None:
        priority = _int(d, "priority", minimum=-(2**31))
    policy = _str(d, "policy", "restart")
    if policy not in POLICIES:
        raise BadRecord(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r:.40}")
    needs = d.get("needs")
    if needs is not None and not isinstance(needs, dict):
        raise BadRecord(f"needs: expected an object, got {needs!r:.40}")
    return VmSpec(uuid, _str(d, "name", uuid, empty=False), _int(d, "vcpus", 1, minimum=1),
                  _int(d, "memory_mib", 64, minimum=1), priority, policy, _str(d, "xml", ""), _strs(d, "groups"),
                  _needs(needs) if needs else VmNeeds(), _tuning(d, "migration"), _strs(d, "local_disks"))


def _tuning(d: Mapping[str, Any], key: str) -> tuple[tuple[str, Any], ...]:
    """A migration tuning object ({bandwidth_cap: 50, postcopy: true...}), every value checked."""
    t = d.get(key, {})
    if not isinstance(t, dict):
        raise BadRecord(f"{key}: expected an object, got {t!r:.40}")
    problems = check_tuning(t)
    if problems:
        raise BadRecord(f"{key}.{problems[0][0]}: {problems[0][1]}")
    return tuple(sorted(t.items()))


NUMA_MODES = ("none", "preferred", "strict")


def _needs(d: Mapping[str, Any]) -> VmNeeds:
    numa = _str(d, "numa", "none")
    if numa not in NUMA_MODES:
        raise BadRecord(f"needs.numa: expected one of {', '.join(NUMA_MODES)}, got {numa!r:.40}")
    nodeset = d.get("nodeset", [])
    if not isinstance(nodeset, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                for n in nodeset):
        raise BadRecord(f"needs.nodeset: expected a list of cell ids, got {nodeset!r:.40}")
    size = d.get("hugepage_size_kib")
    if size is not None:
        size = _int(d, "hugepage_size_kib", minimum=1)
    return VmNeeds(numa, tuple(nodeset), _int(d, "dedicated_cpus", 0), _int(d, "max_pinned_cpu", -1, minimum=-1),
                   size, _int(d, "hugepage_count", 0), _str(d, "cpu_mode", ""), _str(d, "cpu_model", ""),
                   _str(d, "unplaceable", ""))


def _cells(v: Any) -> tuple[HostCell, ...]:
    """The report's ``numa`` list -> HostCells."""
    if not isinstance(v, list):
        raise BadRecord(f"numa: expected a list, got {v!r:.40}")
    cells = []
    for c in v:
        if not isinstance(c, dict):
            raise BadRecord(f"numa: expected objects, got {c!r:.40}")
        cpus = c.get("cpus")
        if not isinstance(cpus, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                 for x in cpus):
            raise BadRecord(f"numa.cpus: expected a list of cpu ids, got {cpus!r:.40}")
        free = c.get("free_mib")
        pages = c.get("hugepages", {})
        if not isinstance(pages, dict):
            raise BadRecord(f"numa.hugepages: expected an object, got {pages!r:.40}")
        huge = {}
        for size, counts in pages.items():
            if not str(size).isdigit() or not isinstance(counts, list) or len(counts) != 2 or \
                    not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in counts):
                raise BadRecord(f"numa.hugepages: expected size -> [total, free], got {size!r:.12}: {counts!r:.30}")
            huge[int(size)] = (counts[0], counts[1])
        cells.append(HostCell(_int(c, "id"), tuple(cpus), _int(c, "memory_mib"),
                              None if free is None else _int(c, "free_mib"), huge))
    if len({c.id for c in cells}) != len(cells):
        raise BadRecord("numa: a cell id appears twice")
    return tuple(sorted(cells, key=lambda c: c.id))


def _inventory(d: Mapping[str, Any]) -> dict[str, Any]:
    """The inventory and load parts of a report (checked apart: a bad part costs only itself)."""
    out: dict[str, Any] = {"numa": _cells(d.get("numa", [])), "tags": frozenset(_strs(d, "tags")),
                           "inventory_error": _str(d, "inventory_error", "")}
    cpu = d.get("cpu", {})
    if not isinstance(cpu, dict):
        raise BadRecord(f"cpu: expected an object, got {cpu!r:.40}")
    out["cpu_model"], out["cpu_key"] = _str(cpu, "model", ""), _str(cpu, "key", "")
    out["cpu_models"] = frozenset(_strs(cpu, "models")) if cpu.get("models") else None
    load = d.get("load")
    if isinstance(load, dict):  # older agents wrote the load average, a number: not a usable load
        cpu_used, mem = load.get("cpu"), load.get("memory_used_mib")
        out["cpu_used"] = None if cpu_used is None else max(_num(load, "cpu"), 0.0)
        out["memory_used_mib"] = None if mem is None else max(_num(load, "memory_used_mib"), 0.0)
        vms = load.get("vms", {})
        if not isinstance(vms, dict):
            raise BadRecord(f"load.vms: expected an object, got {vms!r:.40}")
        out["vm_cpu"] = {str(u): max(_num(vms, u), 0.0) for u in vms}
    return out


def _self_fence(report: Mapping[str, Any]) -> float | None:
    sf = report.get("self_fence")
    if sf is None:
        return None
    if not isinstance(sf, dict):
        raise BadRecord(f"self_fence: expected an object or null, got {sf!r:.40}")
    if sf.get("watchdog") is not True:
        return None
    # The later of the hardware timeout and the configured one: by then the host has reset.
    timeout = _num(sf, "timeout")
    configured = _num(sf, "self_fence_timeout", timeout)
    if timeout <= 0:
        raise BadRecord(f"self_fence.timeout: expected > 0, got {timeout}")
    return max(timeout, configured)


class DecodeMemo:
    """Decoded records by key and mod_revision (which names one version of a key), so a leader
    that builds its view every tick decodes only what changed: at 20,000 VMs nearly every record
    is the same from one tick to the next, and decoding them all took most of a second."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, Any]] = {}
        self._routes: dict[str, tuple[tuple[str, str] | None, tuple[str, str] | None]] = {}

    def route(self, keys: Keys, key: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
        """(host, leaf) or None, (uuid, leaf) or None: a key's place, which never changes."""
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = _route(keys, key)
        return found

    def decode(self, key: str, kv: KVLike, how: Callable[[KVLike], Any]) -> Any:
        """``how(kv)``, or what it returned (or raised) for this version of ``key`` before."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != kv.mod_revision:
            try:
                value: Any = how(kv)
            except BadRecord as exc:
                value = exc
            entry = self._entries[key] = (kv.mod_revision, value)
        if isinstance(entry[1], BadRecord):
            raise BadRecord(str(entry[1]))
        return entry[1]

    def keep_only(self, kvs: Mapping[str, KVLike]) -> None:
        """Forget deleted keys (once they are a quarter of what is remembered)."""
        if len(self._entries) > len(kvs) * 5 // 4:
            self._entries = {k: v for k, v in self._entries.items() if k in kvs}
        if len(self._routes) > len(kvs) * 5 // 4:
            self._routes = {k: v for k, v in self._routes.items() if k in kvs}


class _NoMemo(DecodeMemo):
    """Decodes every record every time (one-off views: the CLI, a status read)."""

    def route(self, keys: Keys, key: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
        return _route(keys, key)

    def decode(self, key: str, kv: KVLike, how: Callable[[KVLike], Any]) -> Any:
        return how(kv)

    def keep_only(self, kvs: Mapping[str, KVLike]) -> None:
        pass


def _route(keys: Keys, key: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    host = keys.parse_host_key(key)
    return host, (keys.parse_vm_key(key) if host is None else None)


class _Acc:
    """What the records of some keys decode to, before it becomes a view (or part of one)."""

    def __init__(self) -> None:
        self.hosts: dict[str, dict[str, Any]] = {}
        self.specs: dict[str, VmSpec] = {}
        self.placements: dict[str, str] = {}
        self.migrations: dict[str, Migration] = {}
        self.steps: dict[str, list[tuple[str, OpStep]]] = {}
        self.op_heads: dict[str, tuple[dict[str, Any], int]] = {}
        self.requests: list[Request] = []
        self.bad: list[tuple[str, str]] = []
        self.storm: dict[str, Any] = {"hosts": (), "since": 0.0}

    def add(self, key: str, kv: KVLike, keys: Keys, memo: DecodeMemo) -> None:
        """Decode one record (keys in sorted order, as a view is read)."""
        try:
            if key == keys.storm_hold:
                self.storm = storm_hold_record(kv)
                return
            _decode(key, kv, keys, self.hosts, self.specs, self.placements, self.migrations, self.steps,
                    self.op_heads, self.requests, memo)
        except BadRecord as exc:
            self.bad.append((key, str(exc)))
            if (parsed := keys.parse_host_key(key)) is not None and parsed[1] == "state":
                self.hosts.setdefault(parsed[0], {})["state_bad"] = True

    def ops(self) -> dict[str, Op]:
        ops = {}
        for op_id, (head, rev) in self.op_heads.items():
            ordered = tuple(s for _, s in sorted(self.steps.get(op_id, [])))
            ops[op_id] = Op(op_id, head["kind"], head["host"], head["epoch"], ordered, rev)
        return ops

    def host_views(self) -> dict[str, HostView]:
        return {name: _host_view(name, h) for name, h in sorted(self.hosts.items())}


def _host_view(name: str, h: Mapping[str, Any]) -> HostView:
    report, report_rev = h.get("report") or {}, h.get("report_rev", 0)
    granted = max(h.get("granted_rev", 0), h.get("alive_rev", 0))
    # Valid only if written during the host's last lease, and void after a clean stop (which
    # disarms the watchdog with the magic close).
    self_fence = report.get("self_fence_s") if report_rev > granted and not h.get("stopped") else None
    # A host holding a lease granted after its report was written has not reported in this
    # life yet (its agent republishes on its first tick): the old list is from before a crash
    # or a restart and says nothing about what runs there now.
    stale = bool(h.get("alive")) and report_rev <= granted
    return HostView(
        name, h.get("alive", False), h.get("state"), report.get("cpus", 0), report.get("memory_mib", 0),
        frozenset() if stale else frozenset(report.get("running_vms", ())), h.get("failover", ""), granted,
        h.get("stopped", ""), self_fence, h.get("state_bad", False), **h.get("inventory", {}),
        migration_outcomes=h.get("migrations", {}), unmanaged={} if stale else report.get("unmanaged", {}))


def build_view(kvs: Mapping[str, KVLike], keys: Keys, epoch: int, memo: DecodeMemo | None = None) -> ClusterView:
    """A ClusterView from every key under the cluster root. Never raises on stored data.

    A record that does not have its documented shape is left out (a host's unreadable state is
    flagged ``state_bad``) and listed in ``bad_records`` with the reason, so the leader can raise
    an alert naming the key while it keeps deciding for everything else. ``memo`` (kept from one
    call to the next) spares decoding the records that did not change. ``LiveView`` keeps the
    same view up to date from the keys that changed.
    """
    memo = memo if memo is not None else _NoMemo()
    memo.keep_only(kvs)
    acc = _Acc()
    for key in sorted(kvs):
        acc.add(key, kvs[key], keys, memo)
    return ClusterView(epoch, acc.host_views(), acc.specs, acc.placements, acc.ops(), acc.migrations,
                       tuple(acc.requests), tuple(acc.bad), tuple(acc.storm["hosts"]), acc.storm["since"])


class LiveView:
    """The ClusterView ``build_view`` would make, kept up to date from the keys that changed.

    Records belong to one part of the view each: a host (every ``hosts/<h>/`` key), a VM
    (``vms/<uuid>/``), an operation (``ops/<id>/``), a request, the storm record. A change
    re-decodes the part its key belongs to, from that part's keys, with the same code as
    ``build_view``; the rest of the view is shared with the previous one. The view's index
    (``ViewIndex``: where VMs are reported and placed) is kept the same way, so neither this nor
    the step walks every VM when one host's report changed.

    Views handed out never change afterwards: a part that changes is copied first.
    """

    def __init__(self, keys: Keys, memo: DecodeMemo | None = None):
        self.keys = keys
        self.memo = memo if memo is not None else DecodeMemo()
        self.reset({})

    def reset(self, kvs: Mapping[str, KVLike]) -> None:
        """Start again from every key (a first read, or a resync)."""
        self._kvs: dict[str, KVLike] = {}
        self._parts: dict[tuple[str, str], set[str]] = {}
        self._hosts: dict[str, HostView] = {}
        self._specs: dict[str, VmSpec] = {}
        self._placements: dict[str, str] = {}
        self._migrations: dict[str, Migration] = {}
        self._ops: dict[str, Op] = {}
        self._requests: dict[str, Request] = {}
        self._bad: dict[str, str] = {}
        self._storm: dict[str, Any] = {"hosts": (), "since": 0.0}
        self._reported: dict[str, tuple[str, ...]] = {}
        self._placed: dict[str, frozenset[str]] = {}
        self._odd: set[str] = set()
        self._changed: set[str] = set()  # the parts of the view that changed since the last view
        self._unsorted: set[str] = set()  # the mappings that got a new key (views list keys sorted)
        self._out: dict[str, Any] = {}
        self._view: ClusterView | None = None
        self.apply(kvs)
        self._changed = {"hosts", "specs", "placements", "migrations", "ops", "requests", "bad", "storm",
                         "reported", "placed", "odd"}
        self._unsorted = {"hosts", "specs", "placements", "migrations"}

    def apply(self, changes: Mapping[str, KVLike | None]) -> None:
        """Keys that changed: their new record, or None for a key deleted."""
        dirty: set[tuple[str, str]] = set()
        for key, kv in changes.items():
            part = self._part(key)
            if kv is None:
                if self._kvs.pop(key, None) is None:
                    continue
                if part is not None:
                    members = self._parts.get(part)
                    if members is not None:
                        members.discard(key)
                        if not members:
                            del self._parts[part]
            else:
                self._kvs[key] = kv
                if part is not None:
                    self._parts.setdefault(part, set()).add(key)
            if part is not None:
                dirty.add(part)
        if not dirty:
            return
        self.memo.keep_only(self._kvs)
        vms: set[str] = set()
        for kind, name in dirty:
            acc = _Acc()
            for key in sorted(self._parts.get((kind, name), ())):
                acc.add(key, self._kvs[key], self.keys, self.memo)
            self._set_bad(kind, name, acc.bad)
            if kind == "host":
                self._set_host(name, acc, vms)
            elif kind == "vm":
                self._set_vm(name, acc, vms)
            elif kind == "op":
                self._set("ops", self._ops, name, acc.ops().get(name))
            elif kind == "request":
                self._set("requests", self._requests, name, acc.requests[0] if acc.requests else None)
            elif kind == "storm":
                self._storm = acc.storm
                self._changed.add("storm")
        for uuid in vms:
            odd = ViewIndex.odd_one(uuid, self._specs, self._placements, self._reported)
            if odd != (uuid in self._odd):
                (self._odd.add if odd else self._odd.discard)(uuid)
                self._changed.add("odd")

    def view(self, epoch: int = 0) -> ClusterView:
        if self._view is not None and not self._changed:
            return self._view if self._view.epoch == epoch else replace(self._view, epoch=epoch)
        out = self._out
        for name in ("hosts", "specs", "placements", "migrations", "reported", "placed"):
            if name in self._changed or name not in out:
                work = getattr(self, f"_{name}")
                if name in self._unsorted:
                    work = dict(sorted(work.items()))
                    setattr(self, f"_{name}", work)
                out[name] = dict(work)
        if "ops" in self._changed or "ops" not in out:
            out["ops"] = {i: self._ops[i] for i in sorted(self._ops, key=lambda i: f"{i}/head")}
        if "requests" in self._changed or "requests" not in out:
            out["requests"] = tuple(self._requests[k] for k in sorted(self._requests))
        if "bad" in self._changed or "bad" not in out:
            out["bad"] = tuple((k, self._bad[k]) for k in sorted(self._bad))
        if "odd" in self._changed or "odd" not in out:
            out["odd"] = frozenset(self._odd)
        self._changed, self._unsorted = set(), set()
        index = ViewIndex(out["hosts"], out["specs"], out["placements"], out["reported"], out["placed"], out["odd"])
        self._view = ClusterView(epoch, out["hosts"], out["specs"], out["placements"], out["ops"], out["migrations"],
                                 out["requests"], out["bad"], tuple(self._storm["hosts"]), self._storm["since"],
                                 derived=index)
        return self._view

    # -- the parts ------------------------------------------------------------------------------

    def _part(self, key: str) -> tuple[str, str] | None:
        keys = self.keys
        if key == keys.storm_hold:
            return ("storm", "")
        host_key, vm_key = self.memo.route(keys, key)
        if host_key is not None:
            return ("host", host_key[0])
        if vm_key is not None:
            return ("vm", vm_key[0])
        if key.startswith(keys.ops):
            return ("op", key[len(keys.ops):].partition("/")[0])
        if key.startswith(keys.requests):
            return ("request", key)
        return None

    def _set(self, name: str, work: dict, key: str, value: Any) -> None:
        if value is None:
            if work.pop(key, None) is not None:
                self._changed.add(name)
        elif work.get(key) != value or key not in work:
            if key not in work:
                self._unsorted.add(name)
            work[key] = value
            self._changed.add(name)

    def _set_bad(self, kind: str, name: str, bad: list[tuple[str, str]]) -> None:
        # A part's bad records are among its own keys (or the deleted ones it had).
        found = dict(bad)
        for key in [k for k in self._bad if self._part(k) == (kind, name) and k not in found]:
            del self._bad[key]
            self._changed.add("bad")
        for key, why in found.items():
            if self._bad.get(key) != why:
                self._bad[key] = why
                self._changed.add("bad")

    def _set_host(self, name: str, acc: _Acc, vms: set[str]) -> None:
        old = self._hosts.get(name)
        new = _host_view(name, acc.hosts[name]) if name in acc.hosts else None
        if new == old:
            return
        self._set("hosts", self._hosts, name, new)
        before = old.running if old is not None else frozenset()
        after = new.running if new is not None else frozenset()
        if before == after:
            return
        for uuid in before - after:
            where = tuple(h for h in self._reported.get(uuid, ()) if h != name)
            if where:
                self._reported[uuid] = where
            else:
                self._reported.pop(uuid, None)
            vms.add(uuid)
        for uuid in after - before:
            self._reported[uuid] = tuple(sorted(self._reported.get(uuid, ()) + (name,)))
            vms.add(uuid)
        self._changed.add("reported")

    def _set_vm(self, uuid: str, acc: _Acc, vms: set[str]) -> None:
        had_spec = uuid in self._specs
        self._set("specs", self._specs, uuid, acc.specs.get(uuid))
        self._set("migrations", self._migrations, uuid, acc.migrations.get(uuid))
        old, new = self._placements.get(uuid), acc.placements.get(uuid)
        self._set("placements", self._placements, uuid, new)
        if old != new:
            for host, change in ((old, frozenset.difference), (new, frozenset.union)):
                if host is None:
                    continue
                placed = change(self._placed.get(host, frozenset()), {uuid})
                if placed:
                    self._placed[host] = placed
                else:
                    self._placed.pop(host, None)
            self._changed.add("placed")
            vms.add(uuid)
        if had_spec != (uuid in self._specs):
            vms.add(uuid)


def _unmanaged(raw: Any) -> dict[str, VmSpec]:
    """A report's ``unmanaged_vms`` [{uuid, name, vcpus, memory_mib[, local_disks]}]; entries that do
    not read are skipped (the list only widens what ``drain --all`` may move; it never decides a failover)."""
    out: dict[str, VmSpec] = {}
    for e in raw if isinstance(raw, list) else ():
        try:
            uuid = _str(e, "uuid", empty=False)
            out[uuid] = VmSpec(uuid, _str(e, "name", uuid, empty=False), _int(e, "vcpus", 1, minimum=1),
                               _int(e, "memory_mib", 64, minimum=1), None, "migrate",
                               local_disks=_strs(e, "local_disks"))
        except (BadRecord, AttributeError, TypeError):
            continue
    return out


def storm_hold_record(kv: KVLike) -> dict[str, Any]:
    """The storm record: ``{"hosts": [...], "since": wall time, "epoch": n}``; BadRecord if malformed."""
    d = _obj(kv)
    return {"hosts": list(_strs(d, "hosts")), "since": _num(d, "since", 0.0), "epoch": _int(d, "epoch", 0)}


def _host_state(kv: KVLike) -> tuple[HostState, str]:
    d = _obj(kv)
    value = d.get("state")
    try:
        state = HostState(value)
    except ValueError:
        raise BadRecord(f"state: expected one of {', '.join(s.value for s in HostState)}, "
                        f"got {value!r:.40}") from None
    return state, _str(d, "failover", "")


def _report(kv: KVLike) -> tuple[dict[str, Any], dict[str, Any] | BadRecord]:
    """``hosts/<h>/report`` -> (what the view keeps, the inventory or why it is bad)."""
    d = _obj(kv)
    report = {"cpus": _int(d, "cpus", 0), "memory_mib": _int(d, "memory_mib", 0),
              "running_vms": _strs(d, "running_vms"), "self_fence_s": _self_fence(d),
              "unmanaged": _unmanaged(d.get("unmanaged_vms"))}
    try:
        return report, _inventory(d)
    except BadRecord as exc:
        return report, exc


def _decode(key: str, kv: KVLike, keys: Keys, hosts: dict, specs: dict, placements: dict, migrations: dict,
            steps: dict, op_heads: dict, requests: list, memo: DecodeMemo) -> None:
    host_key, vm_key = memo.route(keys, key)
    decode = memo.decode
    if host_key is not None:
        name, leaf = host_key
        h = hosts.setdefault(name, {})
        if leaf == "alive":
            h["alive"], h["alive_rev"] = True, kv.create_revision
        elif leaf == "state":
            h["state"], h["failover"] = decode(key, kv, _host_state)
        elif leaf == "report":
            report, inventory = decode(key, kv, _report)
            h["report"] = report
            h["report_rev"] = kv.mod_revision
            if isinstance(inventory, BadRecord):
                # The VM list and self-fence record above stand; placement treats the host as one
                # whose inventory cannot be read, and the record is still listed as bad.
                h["inventory"] = {"inventory_error": f"bad inventory in report: {inventory}"}
                raise BadRecord(str(inventory))
            h["inventory"] = inventory
        elif leaf == "lease":
            h["granted_rev"] = kv.mod_revision
        elif leaf == "stopped":
            h["stopped"] = f"stopped:{_int(_obj(kv), 'lease', 0)}"
        elif leaf.startswith("migration/"):
            uuid = leaf[len("migration/"):]
            h.setdefault("migrations", {})[uuid] = migration_report_from_record(name, uuid, _obj(kv))
    elif vm_key is not None:
        uuid, leaf = vm_key
        if leaf == "spec":
            specs[uuid] = decode(key, kv, lambda kv: spec_from_record(uuid, _obj(kv)))
        elif leaf == "placement":
            placements[uuid] = decode(key, kv, lambda kv: _str(_obj(kv), "host", empty=False))
        elif leaf == "migration":
            d = _obj(kv)
            mode = _str(d, "mode", "live")
            if mode not in MIGRATION_MODES:
                raise BadRecord(f"mode: expected one of {', '.join(MIGRATION_MODES)}, got {mode!r:.40}")
            migrations[uuid] = Migration(uuid, _str(d, "from", empty=False), _str(d, "to", empty=False),
                                         _int(d, "epoch", 0), _num(d, "deadline", 0.0), _str(d, "op", ""),
                                         _int(d, "attempt", 0), _tuning(d, "options"), mode)
    elif key.startswith(keys.ops):
        op_id, _, leaf = key[len(keys.ops):].partition("/")
        d = _obj(kv)
        if leaf == "head":
            op_heads[op_id] = ({"kind": _str(d, "kind", "failover"), "host": _str(d, "host", empty=False),
                                "epoch": _int(d, "epoch", 0)}, kv.create_revision)
        elif leaf:
            detail = d.get("detail", {})
            if not isinstance(detail, dict):
                raise BadRecord(f"detail: expected an object, got {detail!r:.40}")
            steps.setdefault(op_id, []).append(
                (leaf, OpStep(_str(d, "step", empty=False), _num(d, "at", 0.0), detail, kv.mod_revision)))
    elif key.startswith(keys.requests):
        d = _obj(kv)
        options = d.get("options", {})
        if not isinstance(options, dict):
            raise BadRecord(f"options: expected an object, got {options!r:.40}")
        requests.append(Request(key[len(keys.requests):], _str(d, "kind", empty=False), _str(d, "host", ""),
                                _str(d, "vm", ""), _str(d, "failover", ""), options))


MIGRATION_RESULTS = ("running", "completed", "failed", "aborted-deadline", "aborted-request")


def migration_report_from_record(host: str, uuid: str, d: Mapping[str, Any]) -> MigrationReport:
    """``hosts/<h>/migration/<uuid>`` -> MigrationReport, every field checked."""
    outcome = _str(d, "outcome", empty=False)
    if outcome not in MIGRATION_RESULTS:
        raise BadRecord(f"outcome: expected one of {', '.join(MIGRATION_RESULTS)}, got {outcome!r:.40}")
    downtime, total = d.get("downtime_ms"), d.get("data_total")
    processed, remaining, dirty = d.get("data_processed"), d.get("data_remaining"), d.get("dirty_rate")
    return MigrationReport(uuid, host, _str(d, "to", empty=False), _str(d, "op", ""), _int(d, "attempt", 0),
                           outcome, _str(d, "location", "unknown"), _str(d, "error", ""),
                           _num(d, "duration_s", 0.0), None if downtime is None else _int(d, "downtime_ms"),
                           None if total is None else _int(d, "data_total"), _num(d, "at", 0.0),
                           None if processed is None else _int(d, "data_processed"),
                           None if remaining is None else _int(d, "data_remaining"),
                           None if dirty is None else _int(d, "dirty_rate"))


def migration_report_record(report: MigrationReport) -> str:
    """The value an agent writes after running a migration (``migration_report_from_record``'s inverse)."""
    return json.dumps({"to": report.dest, "op": report.op, "attempt": report.attempt, "outcome": report.outcome,
                       "location": report.location, "error": report.error, "duration_s": round(report.duration_s, 3),
                       "downtime_ms": report.downtime_ms, "data_total": report.data_total,
                       "at": round(report.at, 3), "data_processed": report.data_processed,
                       "data_remaining": report.data_remaining,
                       **({"dirty_rate": report.dirty_rate} if report.dirty_rate is not None else {})},
                      sort_keys=True)


def action_ops(actions: Iterable[ManagerAction], view: ClusterView, keys: Keys, wall_now: float,
               events_lease: int | None = None) -> list[Put | Delete]:
    """The etcd writes for one step's actions (FenceHost, ReadPower and Alert are not writes)."""
    ops: list[Put | Delete] = []
    seq: dict[str, int] = {op_id: len(op.steps) for op_id, op in view.ops.items()}
    for i, a in enumerate(actions):
        if isinstance(a, SetHostState):
            record = {"state": a.new.value, "reason": a.reason, "epoch": view.epoch, "since": round(wall_now, 3)}
            if a.failover:
                record["failover"] = a.failover
            ops.append(Put(keys.host_state(a.host), json.dumps(record)))
        elif isinstance(a, JournalStep):
            if a.op not in seq:
                seq[a.op] = 0
                ops.append(Put(f"{keys.op(a.op)}/head", json.dumps(
                    {"kind": a.kind, "host": a.host, "epoch": view.epoch, "created": round(wall_now, 3)})))
            n = seq[a.op]
            seq[a.op] = n + 1
            ops.append(Put(f"{keys.op(a.op)}/{n:04d}", json.dumps(
                {"step": a.step.step, "at": round(wall_now, 3), "detail": dict(a.step.detail)}, sort_keys=True)))
        elif isinstance(a, SetPlacement):
            ops.append(Put(keys.vm_placement(a.vm), json.dumps(
                {"host": a.host, "epoch": view.epoch, "op": a.op, "reason": a.reason})))
        elif isinstance(a, ClearMigration):
            ops.append(Delete(keys.vm_migration(a.vm)))
        elif isinstance(a, StartMigration):
            record = {"from": a.source, "to": a.dest, "epoch": view.epoch, "deadline": a.deadline, "op": a.op,
                      "attempt": a.attempt}
            if a.options:
                record["options"] = dict(a.options)
            if a.mode != "live":
                record["mode"] = a.mode
            ops.append(Put(keys.vm_migration(a.vm), json.dumps(record, sort_keys=True)))
        elif isinstance(a, ConsumeRequest):
            ops.append(Delete(keys.request(a.id)))
        elif isinstance(a, DeleteOp):
            ops.append(Delete(keys.op(a.op) + "/", prefix=True))
        elif isinstance(a, ForgetVm):
            ops += [Delete(keys.vm_spec(a.vm)), Delete(keys.vm_placement(a.vm)), Delete(keys.vm_migration(a.vm))]
        elif isinstance(a, Event):
            ops.append(Put(keys.event(f"{wall_now:017.6f}-{i:03d}"), json.dumps(
                {"kind": a.kind, "host": a.host, "vm": a.vm, "op": a.op, "detail": dict(a.detail),
                 "at": round(wall_now, 3), "epoch": view.epoch}, sort_keys=True), events_lease))
        elif isinstance(a, SetStormHold):
            if a.hosts:
                since = view.storm_since if view.storm_hold else wall_now
                ops.append(Put(keys.storm_hold, json.dumps(
                    {"hosts": list(a.hosts), "since": round(since, 3), "epoch": view.epoch})))
            else:
                ops.append(Delete(keys.storm_hold))
        elif isinstance(a, (FenceHost, Alert, ReadPower)):
            continue
    # etcd rejects a transaction that writes one key twice (e.g. fencing -> fenced -> recovering
    # in one step): keep the last write of each key, in order.
    last = {o.key: i for i, o in enumerate(ops)}
    return [o for i, o in enumerate(ops) if last[o.key] == i]


def action_compares(actions: Iterable[ManagerAction], keys: Keys) -> list[Compare]:
    """Conditions the step's transaction needs besides the leader epoch.

    A fence is dispatched only after its ``fence_start`` step is written, and that write holds
    only while the host has no live lease: a fence start is then always newer than the host's
    last lease loss, which is what lets a confirmation be matched against later lease grants.
    """
    return [Compare(keys.host_alive(a.host), "version", "==", 0) for a in actions if isinstance(a, FenceHost)]


class AckRefused(ValueError):
    """An operator's fence ack that the leader could not act on; the message says why."""


ACKABLE = (HostState.SUSPECT, HostState.FENCING)


def fence_ack_record(view: ClusterView, host: str) -> dict[str, str]:
    """The ``requests/`` value for ``haagent fence ack HOST``: bound to the host's open failover.

    Refused unless the host is suspect or fencing (or frozen by a clean agent stop, holding no
    lease): an ack given at any other time would outlive the failure it was meant for and could
    vouch for a later one.
    """
    hv = view.hosts.get(host)
    if hv is None:
        raise AckRefused(f"unknown host {host!r}")
    if hv.state is HostState.ACTIVE and hv.stopped and not hv.alive:
        # Frozen by a clean agent stop: the ack names that stop, and starts its failover.
        return {"kind": "fence_ack", "host": host, "failover": hv.stopped}
    if hv.state not in ACKABLE:
        state = hv.state.value if hv.state else "unknown"
        raise AckRefused(f"{host} is {state}, not suspect or fencing: an ack is accepted only for a host "
                         "the leader is failing over")
    if hv.alive:
        raise AckRefused(f"{host} holds a live lease: it is running, not off")
    return {"kind": "fence_ack", "host": host, "failover": hv.failover}


def fence_result_step(op: str, host: str, result: str, reason: str, duration: float, at: float,
                      device_results: Mapping[str, str] | None = None, attempt: int = 0,
                      already_off: bool = False) -> JournalStep:
    """The journal step the shell writes when a FenceHost finishes.

    ``already_off``: the confirming level's first status reads found the power off before any
    command was sent: the host died by itself; it was not cut off and switched off by us.
    """
    detail: dict[str, Any] = {"result": result, "reason": reason, "duration_s": round(duration, 3),
                              "attempt": attempt}
    if already_off:
        detail["already_off"] = True
    if device_results:
        detail["devices"] = dict(device_results)
    return JournalStep(op, host, OpStep("fence", at, detail))


def timeline(op: Op) -> list[dict[str, Any]]:
    """An operation's steps as timeline rows (a failover's: confirm, fence, place, start per VM;
    the other kinds' under their own step names)."""
    # A failover's intent is the leader confirming the host lost; a drain's or a rebalance's is not.
    names = {"intent": "confirm"} if op.kind == "failover" else {}
    t0 = op.steps[0].at if op.steps else 0.0
    rows = []
    for s in op.steps:
        rows.append({"phase": names.get(s.step, s.step), "at": s.at, "t": round(s.at - t0, 3),
                     **{k: v for k, v in s.detail.items() if k != "placements"}})
    return rows
