"""Between etcd keys and the steps' data: build views from a key snapshot, turn actions into
store operations. Pure, shared by the production shells and the simulator, so both run the same
encoding as well as the same decisions.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Protocol

from haagent.manager.view import (Alert, ClearMigration, ClusterView, ConsumeRequest, Event, FenceHost, HostView,
                                  JournalStep, ManagerAction, Migration, Op, OpStep, Request, SetHostState,
                                  SetPlacement, VmSpec)
from haagent.model import HostState
from haagent.store.client import Delete, Put
from haagent.store.keys import Keys


class KVLike(Protocol):
    value: bytes
    lease: int


def _json(kv: KVLike | None) -> Any:
    if kv is None:
        return None
    try:
        return json.loads(kv.value)
    except ValueError:
        return None


def build_view(kvs: Mapping[str, KVLike], keys: Keys, epoch: int) -> ClusterView:
    """A ClusterView from every key under the cluster root."""
    hosts: dict[str, dict[str, Any]] = {}
    specs: dict[str, VmSpec] = {}
    placements: dict[str, str] = {}
    migrations: dict[str, Migration] = {}
    steps: dict[str, list[tuple[str, OpStep]]] = {}
    op_heads: dict[str, dict[str, Any]] = {}
    requests: list[Request] = []
    for key in sorted(kvs):
        kv = kvs[key]
        if (parsed := keys.parse_host_key(key)) is not None:
            name, leaf = parsed
            h = hosts.setdefault(name, {"alive": False, "lease": 0, "state": None, "report": None})
            if leaf == "alive":
                h["alive"], h["lease"] = True, kv.lease
            elif leaf == "state":
                d = _json(kv) or {}
                try:
                    h["state"] = HostState(d.get("state"))
                except ValueError:
                    h["state"] = None
            elif leaf == "report":
                h["report"] = _json(kv)
        elif (parsed := keys.parse_vm_key(key)) is not None:
            uuid, leaf = parsed
            d = _json(kv)
            if not isinstance(d, dict):
                continue
            if leaf == "spec":
                try:
                    specs[uuid] = VmSpec.from_dict({**d, "uuid": uuid})
                except (KeyError, ValueError, TypeError):
                    continue
            elif leaf == "placement" and d.get("host"):
                placements[uuid] = str(d["host"])
            elif leaf == "migration":
                migrations[uuid] = Migration(uuid, d.get("from", ""), d.get("to", ""), int(d.get("epoch", 0)))
        elif key.startswith(keys.ops):
            op_id, _, leaf = key[len(keys.ops):].partition("/")
            d = _json(kv) or {}
            if leaf == "head":
                op_heads[op_id] = d
            elif leaf:
                steps.setdefault(op_id, []).append(
                    (leaf, OpStep(str(d.get("step", "")), float(d.get("at", 0.0)), d.get("detail", {}))))
        elif key.startswith(keys.requests):
            d = _json(kv) or {}
            requests.append(Request(key[len(keys.requests):], str(d.get("kind", "")), str(d.get("host", "")),
                                    str(d.get("vm", ""))))
    ops = {}
    for op_id, head in op_heads.items():
        ordered = tuple(s for _, s in sorted(steps.get(op_id, [])))
        ops[op_id] = Op(op_id, str(head.get("kind", "failover")), str(head.get("host", "")),
                        int(head.get("epoch", 0)), ordered)
    host_views = {}
    for name, h in hosts.items():
        report = h["report"] or {}
        host_views[name] = HostView(name, h["alive"], h["state"], int(report.get("cpus", 0) or 0),
                                    int(report.get("memory_mib", 0) or 0),
                                    frozenset(report.get("running_vms", ()) or ()), h["lease"])
    return ClusterView(epoch, host_views, specs, placements, ops, migrations, tuple(requests))


def action_ops(actions: Iterable[ManagerAction], view: ClusterView, keys: Keys, wall_now: float,
               events_lease: int | None = None) -> list[Put | Delete]:
    """The etcd writes for one step's actions (FenceHost and Alert are not writes)."""
    ops: list[Put | Delete] = []
    seq: dict[str, int] = {op_id: len(op.steps) for op_id, op in view.ops.items()}
    for i, a in enumerate(actions):
        if isinstance(a, SetHostState):
            ops.append(Put(keys.host_state(a.host), json.dumps(
                {"state": a.new.value, "reason": a.reason, "epoch": view.epoch, "since": round(wall_now, 3)})))
        elif isinstance(a, JournalStep):
            if a.op not in seq:
                seq[a.op] = 0
                ops.append(Put(f"{keys.op(a.op)}/head", json.dumps(
                    {"kind": "failover", "host": a.host, "epoch": view.epoch, "created": round(wall_now, 3)})))
            n = seq[a.op]
            seq[a.op] = n + 1
            ops.append(Put(f"{keys.op(a.op)}/{n:04d}", json.dumps(
                {"step": a.step.step, "at": round(wall_now, 3), "detail": dict(a.step.detail)}, sort_keys=True)))
        elif isinstance(a, SetPlacement):
            ops.append(Put(keys.vm_placement(a.vm), json.dumps(
                {"host": a.host, "epoch": view.epoch, "op": a.op, "reason": a.reason})))
        elif isinstance(a, ClearMigration):
            ops.append(Delete(keys.vm_migration(a.vm)))
        elif isinstance(a, ConsumeRequest):
            ops.append(Delete(keys.request(a.id)))
        elif isinstance(a, Event):
            ops.append(Put(keys.event(f"{wall_now:017.6f}-{i:03d}"), json.dumps(
                {"kind": a.kind, "host": a.host, "vm": a.vm, "op": a.op, "detail": dict(a.detail),
                 "at": round(wall_now, 3), "epoch": view.epoch}, sort_keys=True), events_lease))
        elif isinstance(a, (FenceHost, Alert)):
            continue
    # etcd rejects a transaction that writes one key twice (e.g. fencing -> fenced -> recovering
    # in one step): keep the last write of each key, in order.
    last = {o.key: i for i, o in enumerate(ops)}
    return [o for i, o in enumerate(ops) if last[o.key] == i]


def fence_result_step(op: str, host: str, result: str, reason: str, duration: float, at: float,
                      device_results: Mapping[str, str] | None = None) -> JournalStep:
    """The journal step the shell writes when a FenceHost finishes."""
    detail: dict[str, Any] = {"result": result, "reason": reason, "duration_s": round(duration, 3)}
    if device_results:
        detail["devices"] = dict(device_results)
    return JournalStep(op, host, OpStep("fence", at, detail))


def timeline(op: Op) -> list[dict[str, Any]]:
    """An operation's steps as timeline rows (detect, confirm, fence, place, start per VM)."""
    names = {"intent": "confirm", "fence": "fence", "fenced": "fenced", "place": "place",
             "start": "start", "done": "done"}
    t0 = op.steps[0].at if op.steps else 0.0
    rows = []
    for s in op.steps:
        rows.append({"phase": names.get(s.step, s.step), "at": s.at, "t": round(s.at - t0, 3),
                     **{k: v for k, v in s.detail.items() if k != "placements"}})
    return rows
