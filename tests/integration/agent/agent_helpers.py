"""Real ``haagent agent`` processes for the process tests: one config shape, one spawn, one wait."""

from __future__ import annotations

import json
import subprocess
import sys
import time

TTL = 2


def spawn_agent(tmp_path, host, endpoints, *flags, agent_section="", stderr=subprocess.STDOUT, etcd_tls=None,
                extra="", env=None):
    """Start ``haagent agent`` for *host* with a short lease; stdout goes to ``<host>.log``.

    *agent_section* is the body of an ``[agent]`` table (empty: the defaults); *etcd_tls* holds
    ``ca_cert``/``cert``/``key`` for the ``[etcd]`` table; *extra* is more TOML at the end (whole
    tables); *env* the process's environment (default: ours)."""
    tls = "".join(f"{k} = {json.dumps(v)}\n" for k, v in sorted((etcd_tls or {}).items()))
    agent = f"[agent]\n{agent_section}" if agent_section else ""
    cfg = tmp_path / f"{host}.toml"
    cfg.write_text(f"""
cluster = "it"
host = "{host}"
[etcd]
endpoints = {json.dumps(list(endpoints))}
timeout = 0.5
{tls}[timing]
heartbeat_interval = 0.5
lease_ttl = {TTL}
[metrics]
listen = ""
[libvirt]
enabled = false
[log]
format = "json"
{agent}
{extra}""")
    return subprocess.Popen([sys.executable, "-m", "haagent.cli", "agent", "--config", str(cfg), *flags],
                            stdout=open(tmp_path / f"{host}.log", "wb"), stderr=stderr, env=env)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value
