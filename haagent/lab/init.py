"""PID 1 of one lab host: new mount, UTS, IPC and PID namespaces, private mounts, instant reaping.

Run (already inside the host's network namespace) as::

    python3 -I init.py HOSTNAME PIDFILE SRC:DST [SRC:DST ...]

The launching process unshares, forks the host's PID 1 and writes that PID (as seen from the
root PID namespace) to PIDFILE before it exits. PID 1 makes every mount private, mounts a fresh
/proc, bind-mounts each SRC over DST (the host's own /etc/libvirt, /run/libvirt, ...), sets the
hostname and then sleeps forever with SIGCHLD ignored, so the kernel reaps every orphan (QEMU,
daemons) the moment it exits: the machine's own PID 1 reaps slowly and made every VM destroy
wait 1-2 s for its zombie. Killing this process (SIGKILL) kills everything in the host at once,
which is how the lab cuts a host's power.

Standard library only, and small, on purpose: it is the one process every host has.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                       ctypes.c_ulong(flags), None), f"mount {target}")


def _be_init(hostname: str, binds: list[tuple[str, str]]) -> None:
    os.setsid()  # no controlling terminal: a ^C in the launcher's shell must not reach the host
    # Private first, so nothing mounted below ever propagates back to the machine.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for src, dst in binds:
        if not os.path.exists(dst):
            os.makedirs(dst)
        _mount(src, dst, None, MS_BIND)  # a file over a file, or a directory over a directory
    socket.sethostname(hostname)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 1 << 16)
    os.chdir("/")
    while True:
        signal.pause()


def main(argv: list[str]) -> int:
    hostname, pidfile, *pairs = argv
    binds = [tuple(p.split(":", 1)) for p in pairs]
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), "unshare")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _be_init(hostname, binds)  # type: ignore[arg-type]
        except BaseException as exc:  # report to the launcher, which is still waiting on the pipe
            os.write(w, f"error: {exc}".encode())
            os._exit(1)
    os.close(w)
    # Wait until PID 1 has closed its end: either it failed (message) or it reached its loop
    # (closerange closed the pipe), so the mounts are in place when the launcher goes on.
    message = b""
    while chunk := os.read(r, 4096):
        message += chunk
    if message:
        sys.stderr.write(message.decode(errors="replace") + "\n")
        return 1
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
