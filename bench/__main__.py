"""Run the benchmarks and write their figures, with the machine they came from, to BENCHMARKS.md.

Each benchmark is a module ``bench/<name>.py`` or package ``bench/<name>/`` exposing
``run() -> str``: a Markdown section (starting with ``## ``). Figures are only comparable within
one run on one machine: these machines are shared, so compare ratios, not absolute numbers.
``python -m bench placement etcd`` reruns some and keeps the other sections from the last file.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pkgutil
import platform
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def discover() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
             if not m.name.startswith("_")]
    return sorted(names)


def old_sections() -> dict[str, str]:
    if not OUT.exists():
        return {}
    parts = re.split(r"^<!-- bench:(\w+) -->\n", OUT.read_text(), flags=re.M)
    return {parts[i]: parts[i + 1].rstrip() + "\n" for i in range(1, len(parts) - 1, 2)}


def main(argv: list[str]) -> int:
    wanted = argv or discover()
    sections = old_sections()
    failed = []
    for name in wanted:
        print(f"bench: {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            text = importlib.import_module(f"bench.{name}").run()
        except Exception:  # a broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        sections[name] = f"{text.rstrip()}\n\n_Measured {stamp} on {machine()}._\n"
        print(f"bench: {name} done in {time.monotonic() - t0:.1f}s", flush=True)
    body = ["# Benchmarks\n",
            "Written by `make bench`. These machines are shared and noisy: compare ratios taken "
            "in the same run, not absolute figures across runs.\n"]
    for name in sorted(sections):
        body.append(f"<!-- bench:{name} -->\n{sections[name]}")
    OUT.write_text("\n".join(body))
    print(f"bench: wrote {OUT}")
    if failed:
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
