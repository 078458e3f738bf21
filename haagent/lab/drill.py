"""``haagent drill``: a real failover in the lab, measured.

Brings up a lab (or uses a running one with ``--prefix``), waits until every HA VM is running
exactly once and registered, injects a fault into one host, and polls every libvirtd until every
HA VM runs exactly once again. The verdict comes from asking each libvirtd, never from haagent's
own view. A VM ever seen running on two hosts fails the drill at once.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click

from haagent.clikit import fail

POLL = 0.1


@dataclass
class DrillResult:
    ok: bool
    fault: str
    target: str
    leader_before: str | None
    recovery_s: float | None
    verdict: str
    timeline: list[dict[str, Any]] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "fault": self.fault, "target": self.target, "leader_before": self.leader_before,
                "recovery_s": self.recovery_s, "verdict": self.verdict, "timeline": self.timeline, "vms": self.vms}


def _where(lab: Any, hosts: list[str]) -> dict[str, list[str]]:
    """VM name -> hosts whose libvirtd says it is running (a host that cannot answer is skipped)."""
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        running = dict(zip(hosts, pool.map(lambda h: lab.running_vms(h, timeout=2.0), hosts)))
    where: dict[str, list[str]] = {}
    for h in hosts:
        for vm in running[h] or []:
            where.setdefault(vm, []).append(h)
    return where


def _store(lab: Any) -> Any:
    return lab.etcd_store(timeout=1.0)


def _cluster(lab: Any, store: Any) -> Any:
    from haagent.state.codec import build_view
    from haagent.store.keys import Keys

    keys = Keys(lab.prefix)
    kvs, _ = store.get_prefix(keys.root)
    return build_view({kv.key: kv for kv in kvs}, keys, 0)


def run_drill(lab: Any, fault: str, timeout: float = 90.0, say: Any = print) -> DrillResult:
    from haagent.errors import StoreError
    from haagent.state.codec import timeline
    from haagent.model import HostState
    from haagent.store.election import read_leader
    from haagent.store.keys import Keys

    hosts = lab.hosts()
    vms = sorted(lab.vms())
    uuids = {vm: lab.vm_uuid(vm) for vm in vms}
    store = _store(lab)
    keys = Keys(lab.prefix)
    try:
        say("waiting for the cluster to settle: a leader, every host active, every VM registered and placed")
        deadline = time.monotonic() + 60
        while True:
            try:
                view = _cluster(lab, store)
                lead = read_leader(store, keys)
            except StoreError:
                view, lead = None, None
            if (view is not None and lead is not None
                    and all(view.hosts.get(h) and view.hosts[h].state is HostState.ACTIVE for h in hosts)
                    and all(uuids[v] in view.placements for v in vms)):
                settled = _where(lab, hosts)  # asks every libvirtd: only once etcd agrees
                if all(len(settled.get(v, [])) == 1 for v in vms):
                    break
            if time.monotonic() > deadline:
                return DrillResult(False, fault, "", None, None, "cluster did not settle within 60s: "
                                   "every host active and every VM placed and running exactly once")
            time.sleep(0.2)
        where = _where(lab, hosts)
        twice = {v: h for v, h in where.items() if len(h) > 1}
        if twice or any(v not in where for v in vms):
            return DrillResult(False, fault, "", lead.host, None, f"before the fault, VMs not running exactly once: {where}")
        by_host = {h: [v for v in vms if where.get(v) == [h]] for h in hosts}
        if fault == "crash-leader":
            target = lead.host
        else:
            candidates = [h for h in hosts if h != lead.host and by_host[h]]
            target = max(candidates or [h for h in hosts if h != lead.host], key=lambda h: (len(by_host[h]), h))
        victims = by_host[target]
        say(f"leader is {lead.host}; injecting '{fault}' into {target}, which runs {len(victims)} VMs: "
            + ", ".join(victims))
        wall0, t0 = time.time(), time.monotonic()
        if fault in ("crash", "crash-leader"):
            lab.crash(target)
        elif fault == "partition":
            lab.partition(target)
        else:
            raise ValueError(f"unknown fault {fault!r}")
        first_seen: dict[str, float] = {}
        verdict, ok = "", False
        while True:
            now = time.monotonic() - t0
            where = _where(lab, [h for h in hosts if h != target] + ([target] if fault == "partition" else []))
            twice = {v: h for v, h in where.items() if len(h) > 1}
            if twice:
                verdict = f"FAIL: VM running twice: {twice}"
                break
            for v in victims:
                elsewhere = [h for h in where.get(v, []) if h != target]
                if elsewhere and v not in first_seen:
                    first_seen[v] = now
                    say(f"  +{now:6.2f}s  {v} running on {elsewhere[0]}")
            if all(v in first_seen for v in victims) and all(len(where.get(v, [])) == 1 for v in vms):
                ok, verdict = True, "PASS: every HA VM is running exactly once"
                break
            if now > timeout:
                missing = [v for v in vms if len(where.get(v, [])) != 1]
                verdict = f"FAIL: not recovered within {timeout:g}s: {missing} not running exactly once"
                break
            time.sleep(POLL)
        recovery = max(first_seen.values()) if ok and first_seen else None
        # the journal: the failover operation for the target, times relative to the fault
        rows: list[dict[str, Any]] = [{"phase": "fault", "t": 0.0, "host": target, "fault": fault}]
        try:
            view = _cluster(lab, store)
            # only this drill's operation: earlier drills on the same lab left theirs in the journal
            ops = [o for o in view.ops.values() if o.host == target and o.steps and o.steps[0].at >= wall0]
            for op in sorted(ops, key=lambda o: o.id):
                for row in timeline(op):
                    detect_after = row.pop("detect_after", None)
                    if row["phase"] == "confirm" and detect_after is not None:
                        rows.append({"phase": "detect", "t": round(row["at"] - float(detect_after) - wall0, 3),
                                     "host": target})
                    row["t"] = round(row.pop("at") - wall0, 3)
                    rows.append(row)
        except StoreError:
            pass
        for v in victims:
            rows.append({"phase": "running", "t": round(first_seen[v], 3) if v in first_seen else None, "vm": v,
                         "observed_by": "libvirt"})
        rows.sort(key=lambda r: (r["t"] is None, r["t"] if r["t"] is not None else 0.0))
        vm_rows = [{"name": v, "uuid": uuids[v], "running_on": where.get(v, []),
                    "moved_from": target if v in victims else None,
                    "recovered_after_s": round(first_seen[v], 3) if v in first_seen else None} for v in vms]
        return DrillResult(ok, fault, target, lead.host, round(recovery, 3) if recovery is not None else None,
                           verdict, rows, vm_rows)
    finally:
        store.close()


def print_result(r: DrillResult) -> None:
    click.echo(f"\nfailover timeline ({r.fault} of {r.target}; leader before: {r.leader_before}):")
    for row in r.timeline:
        t = row.get("t")
        extra = " ".join(f"{k}={v}" for k, v in row.items() if k not in ("phase", "t") and v is not None)
        click.echo(f"  {('+%.2fs' % t) if t is not None else '   ?   ':>9}  {row['phase']:<8} {extra}")
    click.echo(f"\n{r.verdict}" + (f"; all of {r.target}'s VMs running elsewhere {r.recovery_s:.2f}s after the fault"
                                     if r.recovery_s is not None else ""))


@click.command("drill")
@click.option("--hosts", default=3, show_default=True, type=click.IntRange(2, 6))
@click.option("--vms", default=12, show_default=True, type=click.IntRange(1, 60))
@click.option("--fault", type=click.Choice(["crash", "partition", "crash-leader"]), default="crash", show_default=True)
@click.option("--prefix", default=None, help="use this running lab instead of building one")
@click.option("--timeout", default=90.0, show_default=True, help="seconds to wait for recovery")
@click.option("--json", "as_json", is_flag=True)
def drill(hosts: int, vms: int, fault: str, prefix: str | None, timeout: float, as_json: bool) -> None:
    """Bring up a lab, fail a host, and report the measured failover timeline and a verdict."""
    from haagent.errors import HaagentError
    from haagent.lab.lab import Lab

    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    own = prefix is None
    lab = Lab(prefix or "drill")
    try:
        if own:
            if lab.exists():
                lab.down()
            lab.up(hosts, vms, progress=say)
        elif not lab.exists():
            fail(f"no lab {prefix!r}: start one with `haagent lab up --prefix {prefix}` or omit --prefix")
        result = run_drill(lab, fault, timeout, say)
    except HaagentError as exc:
        fail(str(exc))
    finally:
        if own:
            say("tearing the lab down")
            lab.down()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result)
    sys.exit(0 if result.ok else 1)
