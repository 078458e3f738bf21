"""A private libvirtd on a unix socket, in its own mount, PID and UTS namespaces (root only).

Tests and benchmarks use it when they need a real daemon but not a multi-host lab: every libvirt
state directory is bind-mounted from one temporary directory, so it never touches the system's
libvirt, and killing the namespace's init takes libvirtd and every QEMU with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Settings LAB-NOTES lists as needed to run QEMU as root with no cgroups, namespaces or virtlogd.
QEMU_CONF = """\
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
remember_owner = 0
"""

# The namespace's init: reaps every orphan at once (PID 1 of these machines reaps slowly and
# libvirt waits for a stopped QEMU's zombie), restarts libvirtd on SIGUSR1, exits with it otherwise.
_INIT = r"""
import os, signal, sys, time
conf = sys.argv[1]
for src, dst in zip(sys.argv[2::2], sys.argv[3::2]):
    os.makedirs(dst, exist_ok=True)
    if os.system(f"mount --bind '{src}' '{dst}'") != 0:
        sys.exit(f"bind mount {src} -> {dst} failed")
os.system(f"hostname {os.environ.get('HVT_HOSTNAME', 'hvt-local')}")
restart = False
def spawn():
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.execvp("libvirtd", ["libvirtd", "-f", conf])
    return pid
def on_usr1(*_):
    global restart
    restart = True
    os.kill(daemon, signal.SIGTERM)
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
daemon = spawn()
while True:
    try:
        pid, _ = os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.05)
        continue
    if pid == daemon:
        if not restart:
            sys.exit(1)
        restart = False
        daemon = spawn()
"""

_MOUNTS = ("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"), \
          ("log", "/var/log/libvirt"), ("cache", "/var/cache/libvirt")


class LocalDaemon:
    """One private libvirtd; ``uri`` reaches it from the root namespace through its unix socket."""

    def __init__(self, name: str = "hvt-local", base: str | None = None):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
        self.host_uuid = str(uuid.uuid4())
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.dir / "run" / "libvirt-sock")

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    def start(self, timeout: float = 15.0) -> "LocalDaemon":
        """Start the namespace and wait until libvirtd accepts connections."""
        if os.geteuid() != 0:
            raise PermissionError("a private libvirtd needs root (namespaces, QEMU as root)")
        for sub, _ in _MOUNTS:
            (self.dir / sub).mkdir(exist_ok=True)
        (self.dir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        conf = self.dir / "etc" / "libvirtd.conf"
        conf.write_text(f'host_uuid = "{self.host_uuid}"\nunix_sock_rw_perms = "0700"\n'
                        'auth_unix_rw = "none"\nkeepalive_interval = 1\nkeepalive_count = 3\n')
        args = [sys.executable, "-c", _INIT, "/etc/libvirt/libvirtd.conf"]
        for sub, dst in _MOUNTS:
            args += [str(self.dir / sub), dst]
        # --kill-child: if this process (or its test) dies, the namespace's init dies, and with
        # it every process in the PID namespace.
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
             "--propagation", "private", *args],
            env={**os.environ, "HVT_HOSTNAME": self.name},
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "init.log", "wb"))
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        import libvirt
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"private libvirtd exited: {(self.dir / 'init.log').read_text()[-500:]}")
            if os.path.exists(self.socket):
                try:
                    libvirt.open(self.uri).close()
                    return
                except libvirt.libvirtError as e:
                    last = e
            time.sleep(0.05)
        raise TimeoutError(f"private libvirtd not ready in {timeout}s: {last}")

    def restart_libvirtd(self, timeout: float = 15.0) -> None:
        """Restart libvirtd only (QEMU processes keep running), as a package upgrade would."""
        init = self._init_pid()
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass
        os.kill(init, signal.SIGUSR1)
        self.wait_ready(timeout)

    def qemu_pids(self) -> dict[str, int]:
        """VM name -> QEMU PID (as seen from the root namespace)."""
        out = {}
        for pidfile in (self.dir / "run" / "qemu").glob("*.pid"):
            if pidfile.stem == "driver":  # the QEMU driver's own lock file, not a VM
                continue
            ns_pid = int(pidfile.read_text().strip() or 0)
            pid = self._host_pid(ns_pid)
            if pid:
                out[pidfile.stem] = pid
        return out

    def _init_pid(self) -> int:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def _host_pid(self, ns_pid: int) -> int | None:
        """Translate a PID inside the namespace to the root namespace's PID via NSpid."""
        init = self._init_pid()
        ns = os.readlink(f"/proc/{init}/ns/pid")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                    continue
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return int(entry)
            except (OSError, ValueError):
                continue
        return None

    def stop(self) -> None:
        """Kill the namespace (libvirtd and all QEMUs) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # --kill-child then SIGKILLs the init, which ends the namespace
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None
        # Bind mounts lived in the private mount namespace only; the directory is plain files.
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalDaemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
