"""Run local etcd members on loopback: for the demo, the tests and the benchmarks.

Uses Debian's ``etcd`` binary with our own ports and data dirs (never the packaged service).
Members are stopped with SIGKILL (SIGTERM of a whole cluster can take ~9 s) and we wait for the
PID to exit before the ports are reused.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class MemberTls:
    """A member's TLS files: clients and peers must present a certificate from ``ca``."""

    ca: Path
    cert: Path
    key: Path

    def argv(self) -> list[str]:
        ca, cert, key = str(self.ca), str(self.cert), str(self.key)
        return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
                "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
                "--peer-client-cert-auth"]


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    tls: MemberTls | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, initial_cluster: str, state: str = "new", token: str = "haagent") -> None:
        argv = [
            ETCD_BIN, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", token,
            "--heartbeat-interval", "50", "--election-timeout", "500", "--pre-vote",
            "--logger", "zap", "--log-outputs", "stderr",
        ] + (self.tls.argv() if self.tls else [])
        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True)
        log.close()

    def kill(self) -> None:
        """SIGKILL and wait for exit, so the ports are free afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class EtcdCluster:
    """1 or 3 (or more) etcd members on loopback with free ports and a private data dir.

    ``tls=True``: clients and peers speak TLS and must present a certificate from the cluster's
    own CA (``self.ca``, in ``base_dir/pki``); ``client_cert(cn)`` issues one, and ``root`` is
    the certificate of etcd's ``root`` user (all rights once auth is on).
    """

    size: int = 1
    base_dir: Path | None = None
    tls: bool = False
    members: list[EtcdMember] = field(default_factory=list)
    _own_dir: bool = False

    def __post_init__(self) -> None:
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="haagent-etcd-"))
            self._own_dir = True
        self.ca: Any = None
        if self.tls:
            from haagent.store.pki import CertificateAuthority
            self.ca = CertificateAuthority(self.base_dir / "pki")
        for i in range(self.size):
            d = self.base_dir / f"m{i}"
            tls = None
            if self.ca is not None:
                files = self.ca.issue(f"member-m{i}", f"m{i}", server=True, server_names=("127.0.0.1", "localhost"))
                tls = MemberTls(self.ca.cert_path, files.cert, files.key)
            self.members.append(EtcdMember(f"m{i}", free_port(), free_port(), d / "data", d / "etcd.log", tls=tls))
            d.mkdir(parents=True, exist_ok=True)
        self.root = self.client_cert("root") if self.ca is not None else None

    def client_cert(self, common_name: str, **kw: Any) -> Any:
        """Issue a client certificate (``CertFiles``) from this cluster's CA; its CN is the etcd user."""
        if self.ca is None:
            raise ValueError("client certificates need EtcdCluster(tls=True)")
        return self.ca.issue(f"client-{common_name}", common_name, **kw)

    def tls_kwargs(self, cert: Any = None) -> dict[str, Any]:
        """``EtcdStore(..., **tls_kwargs(cert))``: the CA and a client certificate (root's by default)."""
        if self.ca is None:
            return {}
        cert = cert or self.root
        return {"ca_cert": str(self.ca.cert_path), "cert": str(cert.cert), "key": str(cert.key)}

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 20.0) -> "EtcdCluster":
        for m in self.members:
            m.start(self.initial_cluster)
        self.wait_ready(timeout)
        return self

    def restart(self, member: EtcdMember, timeout: float = 20.0) -> None:
        member.kill()
        member.start(self.initial_cluster, state="existing")
        self.wait_ready(timeout, [member])

    def wait_ready(self, timeout: float = 20.0, members: list[EtcdMember] | None = None) -> None:
        """Wait until each member answers a linearizable read (so the cluster has a leader)."""
        import etcd3

        deadline = time.monotonic() + timeout
        for m in members or self.members:
            while True:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited: see {m.log_path}")
                try:
                    tls = self.tls_kwargs()
                    c = etcd3.client("127.0.0.1", m.client_port, timeout=1, ca_cert=tls.get("ca_cert"),
                                     cert_cert=tls.get("cert"), cert_key=tls.get("key"))
                    try:
                        c.get("/haagent-ready-probe")
                    finally:
                        c.close()
                    break
                except Exception:  # not up yet: connection refused, no leader yet
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"etcd member {m.name} not ready after {timeout}s; see {m.log_path}")
                    time.sleep(0.05)

    def stop(self) -> None:
        for m in self.members:
            m.kill()
        if self._own_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
