"""The lab's Linux guest: Debian's kernel plus a busybox initramfs built here, cached by content.

Inputs, all from Debian packages (scripts/install-system-deps.sh): the newest ``/boot/vmlinuz-*``
(``linux-image-amd64``) and ``/bin/busybox`` (``busybox-static``). The kernel is booted as the
uncompressed ELF inside the vmlinuz (QEMU's PVH entry, CONFIG_PVH=y in Debian): that skips the
in-guest XZ decompression, which under TCG took 5.6 s of a 5.6 s boot against 2.3 s in all.
The initramfs holds busybox,
``/dev/console`` and the ``/init`` script below, nothing else: the ISA serial ports the guest
talks on are built into Debian's kernel (CONFIG_SERIAL_8250=y), so it needs no module.

The cache (``$HAAGENT_GUEST_CACHE``, default /var/cache/haagent/guest) keeps files named by the
hash of their inputs, so a changed busybox, kernel or init script gives new files and an
unchanged one costs only the hashing. docs/lab.md describes the guest's console and load channel.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from haagent.errors import LabError

BUSYBOX = Path("/bin/busybox")
BOOT = Path("/boot")
# no_timer_check: the kernel's boot-time check that the IO-APIC timer ticks is timing-based, and
# a TCG guest booting among a dozen others on a busy machine failed it ("IO-APIC + timer doesn't
# work!", a panic before init).
KERNEL_CMDLINE = "console=ttyS0,115200 quiet loglevel=3 mitigations=off no_timer_check"
# The first line the guest prints once its console, ticks and load channel are running.
READY_LINE = "haagent-guest ready"
PRUNE_AFTER_S = 24 * 3600

# PID 1 of the guest, run by busybox ash. ttyS0 is the console (kernel messages, the ready line
# and the ticks), ttyS1 the load channel: one command per line in, one reply line out.
INIT_SCRIPT = r"""#!/bin/busybox sh
# haagent lab guest (haagent/lab/guest_image.py); docs/lab.md describes it.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=100% tmpfs /run
mkdir -p /run/hold

# A tick every 10 ms: "T <seq> <guest CLOCK_REALTIME, s.us>". Nothing sets the guest's clock
# after boot (no NTP), so its realtime only moves with its clocksource, like a monotonic clock.
# The wait is a read with a timeout on a FIFO nobody writes: a builtin, where `sleep` would fork
# and exec busybox 100 times a second (a third of a core under TCG).
tick() {
    mkfifo /run/tick.fifo
    exec 3<>/run/tick.fifo
    n=0
    while :; do
        echo "T $n $EPOCHREALTIME"
        n=$((n + 1))
        read -t 0.01 -u 3 _
    done
}

burners=""
dirtier=""
cpu=0
mem=0
dirty=0

set_cpu() {
    for p in $burners; do kill "$p"; done
    burners=""
    i=0
    while [ "$i" -lt "$1" ]; do
        ( while :; do :; done ) &
        burners="$burners $!"
        # niced, so the ticks and the load channel still get the CPU they need
        renice -n 19 -p $! > /dev/null
        i=$((i + 1))
    done
    cpu=$1
}

set_mem() {
    if [ -n "$dirtier" ]; then kill "$dirtier"; wait "$dirtier" 2>/dev/null; fi
    dirtier=""
    if [ "$1" != "$mem" ]; then
        rm -f /run/hold/mem
        if [ "$1" -gt 0 ]; then
            # Random bytes, not zeros: QEMU sends zero pages almost for free during migration.
            dd if=/dev/urandom of=/run/hold/seed bs=1M count=1 2>/dev/null
            i=0
            while [ "$i" -lt "$1" ]; do cat /run/hold/seed; i=$((i + 1)); done > /run/hold/mem
        fi
    fi
    mem=$1
    dirty=0
    if [ "$1" -gt 0 ] && [ "$2" -gt 0 ]; then
        # Rewrite $2 MiB/s of the held memory, a tenth every 100 ms, walking through it.
        chunk=$(( ($2 + 9) / 10 ))
        ( pos=0
          while :; do
              if [ $((pos + chunk)) -gt "$1" ]; then pos=0; fi
              src=$(( (pos + chunk) % $1 ))
              dd if=/run/hold/mem of=/run/hold/mem bs=1M count=$chunk skip=$src seek=$pos \
                 conv=notrunc 2>/dev/null
              pos=$((pos + chunk))
              sleep 0.1
          done ) &
        dirtier=$!
        dirty=$2
    fi
}

avail_kib() { while read -r k v _; do [ "$k" = MemAvailable: ] && echo "$v" && return; done < /proc/meminfo; }

number() { case "$1" in ''|*[!0-9]*) return 1;; esac; }

serve() {
    stty raw -echo
    # Only now: bytes that reach the port before the guest opens it are lost.
    echo "haagent-guest ready" > /dev/console
    while read -r cmd a b c; do
        case "$cmd" in
            load)
                if ! number "$a" || ! number "$b" || ! number "${c:-0}"; then
                    echo "error: usage: load CPUS MIB [DIRTY_MIB_PER_S]"
                elif [ "$b" -gt "$mem" ] && [ $((b - mem)) -gt $(($(avail_kib) / 1024 - 16)) ]; then
                    echo "error: mem $b MiB does not fit: $(($(avail_kib) / 1024)) MiB available, 16 kept free"
                else
                    set_cpu "$a"
                    set_mem "$b" "${c:-0}"
                    echo "ok cpu=$cpu mem=$mem dirty=$dirty"
                fi;;
            status)
                echo "ok cpu=$cpu mem=$mem dirty=$dirty avail_kib=$(avail_kib)";;
            '') ;;
            *) echo "error: unknown command $cmd (load, status)";;
        esac
    done
}

tick &
while :; do serve < /dev/ttyS1 > /dev/ttyS1; done
"""


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: kernel and initramfs files, and the kernel command line."""

    kernel: Path
    initrd: Path
    cmdline: str = KERNEL_CMDLINE


def cache_dir() -> Path:
    return Path(os.environ.get("HAAGENT_GUEST_CACHE", "/var/cache/haagent/guest"))


def _version_key(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_kernel(boot: Path = BOOT) -> Path:
    """The newest Debian kernel image under /boot."""
    kernels = sorted((p for p in boot.glob("vmlinuz-*") if p.is_file()), key=lambda p: _version_key(p.name))
    if not kernels:
        raise LabError(f"--guest linux: no kernel {boot}/vmlinuz-* (install linux-image-amd64: "
                       "scripts/install-system-deps.sh)")
    return kernels[-1]


def uncompressed_kernel(bzimage: bytes) -> bytes | None:
    """The ELF ``vmlinux`` inside a bzImage whose payload is XZ or gzip; None if there is none."""
    for magic, open_stream in ((b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
                               (b"\x1f\x8b\x08\x00", lambda: _GzipStream())):
        at = bzimage.find(magic)
        while at >= 0:
            try:
                elf = open_stream().decompress(bzimage[at:])
            except (lzma.LZMAError, OSError, EOFError, ValueError):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                return elf
            at = bzimage.find(magic, at + 1)
    return None


class _GzipStream:
    def decompress(self, data: bytes) -> bytes:
        import zlib
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


# -- a cpio "newc" writer: the format the kernel unpacks an initramfs from ------------------------

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def _cpio_entry(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes = b"",
                rdev: tuple[int, int] = (0, 0)) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))  # the header plus name pads to 4 bytes
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """An archive of (name, mode, data, (rdev major, minor)); uid/gid 0, mtime 0 (reproducible)."""
    out = io.BytesIO()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        _cpio_entry(out, ino, name, mode, data, rdev)
    _cpio_entry(out, 0, "TRAILER!!!", 0)
    return out.getvalue()


def initramfs_entries(busybox: bytes, init: str = INIT_SCRIPT) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    dirs = ["bin", "dev", "proc", "sys", "run"]
    return ([(d, S_IFDIR | 0o755, b"", (0, 0)) for d in dirs] + [
        ("bin/busybox", S_IFREG | 0o755, busybox, (0, 0)),
        ("bin/sh", S_IFLNK | 0o777, b"busybox", (0, 0)),
        # the kernel opens /dev/console for init before anything could mount devtmpfs
        ("dev/console", S_IFCHR | 0o600, b"", (5, 1)),
        ("init", S_IFREG | 0o755, init.encode(), (0, 0)),
    ])


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(cache: Path | None = None, busybox: Path = BUSYBOX, kernel: Path | None = None) -> GuestImage:
    """The guest's kernel and initramfs in ``cache``, built only if no file of these inputs is there."""
    cache = cache or cache_dir()
    kernel = kernel or find_kernel()
    try:
        bb = busybox.read_bytes()
        kernel_bytes = kernel.read_bytes()
    except OSError as e:
        raise LabError(f"--guest linux: cannot read {e.filename} ({e.strerror}); install "
                       "busybox-static and linux-image-amd64 (scripts/install-system-deps.sh)") from e
    if not bb.startswith(b"\x7fELF"):
        raise LabError(f"--guest linux: {busybox} is not a busybox binary (install busybox-static)")
    cache.mkdir(parents=True, exist_ok=True)
    kernel_out = cache / f"vmlinux-{_digest(kernel_bytes)}"
    initrd_out = cache / f"initramfs-{_digest(bb, INIT_SCRIPT.encode())}.cpio.gz"
    if not kernel_out.exists():
        # A kernel without a payload we can unpack boots as it is, only more slowly.
        _write_atomic(kernel_out, uncompressed_kernel(kernel_bytes) or kernel_bytes)
    if not initrd_out.exists():
        archive = cpio_newc(initramfs_entries(bb))
        _write_atomic(initrd_out, gzip.compress(archive, compresslevel=6, mtime=0))
    # Files of other inputs (a kernel upgrade) once they are a day old: labs boot their own
    # links, and a day leaves alone a build that another checkout is linking right now.
    for old in [*cache.glob("vmlinux-*"), *cache.glob("initramfs-*")]:
        try:
            if old not in (kernel_out, initrd_out) and time.time() - old.stat().st_mtime > PRUNE_AFTER_S:
                old.unlink()
        except FileNotFoundError:
            pass
    return GuestImage(kernel_out, initrd_out)


def install(image: GuestImage, into: Path) -> GuestImage:
    """Copy the guest's files into ``into`` (the lab's shared storage, where agents allow them)."""
    into.mkdir(parents=True, exist_ok=True)
    placed = []
    for src in (image.kernel, image.initrd):
        dst = into / src.name
        if not dst.exists():
            tmp = dst.with_name(f".{dst.name}.tmp")
            try:
                os.link(src, tmp)
            except OSError:  # another filesystem
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        placed.append(dst)
    return GuestImage(placed[0], placed[1], image.cmdline)
