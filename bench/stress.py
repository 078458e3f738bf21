"""Stress: does fast detection fence a healthy host that is merely slow?

Three 3-host labs run at once on this machine, one per timing preset (fast, default,
conservative), while Debian's stress-ng keeps both cores busy and writes to the disk that holds
etcd's data for DURATION seconds. No fault is injected: every host that turns suspect is a false
suspicion, every fence a false fence. Every libvirtd is asked every 10 s that each VM runs exactly
once. At the end, still under stress, each lab's busiest non-leader host is crashed twice and the
time until its VMs run elsewhere is taken (the recovery time under the same load).
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

DURATION = int(os.environ.get("HAAGENT_STRESS_SECONDS", "1800"))
PRESETS = {"fast": "bsf", "default": "bsd", "conservative": "bsc"}
HOSTS, VMS = 3, 4
DRILLS = 2


def _stress_argv(seconds: int, temp: Path) -> list[str]:
    # cpu: one hog per core; io: sync() storms; hdd: a writer that rewrites 256 MiB files
    return ["stress-ng", "--cpu", str(os.cpu_count() or 2), "--io", "1", "--hdd", "1", "--hdd-bytes", "256M",
            "--temp-path", str(temp), "--timeout", f"{seconds}s", "--metrics-brief", "--quiet"]


def _count(log: Path, patterns: dict[str, str]) -> dict[str, int]:
    out = {k: 0 for k in patterns}
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        for k, p in patterns.items():
            if p in line:
                out[k] += 1
    return out


PATTERNS = {
    "suspect": "to suspect",
    "fenced": "\"fencing_host\"",
    "overrun": "lease_keepalive_overrun",
    "lost": "\"lease_lost\"",
    "isolated": "etcd_isolated",
}


def run() -> str:
    from bench.failover import _return_hosts
    from haagent.lab.drill import _where, run_drill
    from haagent.lab.lab import Lab

    if shutil.which("stress-ng") is None:
        return "## Stress: false suspicion under load\n\nstress-ng is not installed (scripts/install-system-deps.sh installs it)."
    labs = {preset: Lab(prefix) for preset, prefix in PRESETS.items()}
    started: list[Lab] = []
    twice: list[str] = []
    loads: list[float] = []
    counts: dict[str, dict[str, int]] = {}
    drills: dict[str, list[float]] = {p: [] for p in labs}
    failures: list[str] = []
    stress = None
    temp = Path("/var/lib/haagent/stress-io")
    try:
        for preset, lab in labs.items():
            lab.down()
            lab.up(HOSTS, VMS, agent_config={"timing": {"preset": preset}})
            started.append(lab)
        time.sleep(10)  # every agent has reported; nothing left from start-up
        baseline = {p: _logs_count(lab) for p, lab in labs.items()}
        temp.mkdir(parents=True, exist_ok=True)
        stress = subprocess.Popen(_stress_argv(DURATION + 600, temp), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.monotonic()
        next_check = t0
        while time.monotonic() - t0 < DURATION:
            if time.monotonic() >= next_check:
                next_check += 10
                loads.append(os.getloadavg()[0])
                for preset, lab in labs.items():
                    where = _where(lab, lab.hosts())
                    for vm, hs in where.items():
                        if len(hs) > 1:
                            twice.append(f"{preset}: {vm} on {hs} at +{time.monotonic() - t0:.0f}s")
            time.sleep(1)
        for preset, lab in labs.items():
            now = _logs_count(lab)
            counts[preset] = {k: now[k] - baseline[preset][k] for k in now}
        # recovery under the same load
        for preset, lab in labs.items():
            for i in range(DRILLS):
                r = run_drill(lab, "crash", timeout=90, say=lambda m: None)
                if r.ok and r.recovery_s is not None:
                    drills[preset].append(r.recovery_s)
                else:
                    failures.append(f"{preset} drill {i}: {r.verdict}")
                if r.target:
                    _return_hosts(lab, [r.target])
    finally:
        if stress is not None and stress.poll() is None:
            os.killpg(stress.pid, signal.SIGKILL)
            stress.wait()
        shutil.rmtree(temp, ignore_errors=True)
        for lab in started:
            lab.down()

    from haagent.config import TIMING_PRESETS

    lines = [
        "## Stress: false suspicion under load",
        "",
        f"Three 3-host labs at once ({VMS} VMs each, TCG), one per timing preset, for {DURATION / 60:.0f} minutes while "
        f"`{' '.join(_stress_argv(DURATION, Path('DIR')))}` keeps both cores busy and writes to the disk that holds "
        f"the labs' etcd data. No fault was injected: a host that turned suspect is a false suspicion, a fence a "
        f"false fence. Machine load average during the run: median {statistics.median(loads):.1f}, max "
        f"{max(loads):.1f} (2 cores).",
        "",
        "| preset | heartbeat / TTL / fence_delay / grace | hosts turned suspect | hosts fenced | keepalive rounds late | "
        "leases lost | etcd unreachable | a host's power loss, under the same load (median, max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for preset in labs:
        p, c, d = TIMING_PRESETS[preset], counts.get(preset, {}), drills[preset]
        rec = f"{statistics.median(d):.2f} s, {max(d):.2f} s ({len(d)} runs)" if d else "-"
        lines.append(f"| `{preset}` | {p['heartbeat_interval']:g} / {p['lease_ttl']:g} / {p['fence_delay']:g} / "
                     f"{p['new_leader_grace']:g} s | {c.get('suspect', '?')} | {c.get('fenced', '?')} | "
                     f"{c.get('overrun', '?')} | {c.get('lost', '?')} | {c.get('isolated', '?')} | {rec} |")
    default_fenced = counts.get("default", {}).get("fenced")
    lines += ["", f"The default preset's target, no false fence in this run: "
                  f"{'met' if default_fenced == 0 else '**missed**'} ({default_fenced} fenced). "
                  f"VMs seen on two hosts at once: {len(twice)}."]
    if twice:
        lines += [f"- {t}" for t in twice[:10]]
    if failures:
        lines += ["", "Failed drills:", ""] + [f"- {f}" for f in failures]
    lines += ["", "Counted from the agents' logs: `hosts turned suspect` and `hosts fenced` from the leader's "
                  "actions; `keepalive rounds late` a lease refresh that started after its due time "
                  "(`lease_keepalive_overrun`); `leases lost` a lease that expired under a live agent; "
                  "`etcd unreachable` a refresh that found no etcd member answering."]
    return "\n".join(lines)


def _logs_count(lab: Any) -> dict[str, int]:
    total = {k: 0 for k in PATTERNS}
    for h in lab.hosts():
        for k, v in _count(lab.layout.logs_dir(h) / "agent.log", PATTERNS).items():
            total[k] += v
    return total

