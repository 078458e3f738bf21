"""NUMA fit: which cells of one host can hold a VM's vcpus, pinned cpus, memory and hugepages.

A VM is split evenly over N cells (like Nova's ``hw:numa_nodes``). ``strict`` uses the smallest
N whose empty cells could hold it: one cell unless the VM is wider than a cell; it never spreads
further just because the cells are busy. ``preferred`` tries N = 1, 2, ... on the free space and
runs unbound (host-level accounting only) when nothing fits. Pinned cpus and hugepages always
come from cells, so a VM with either is bound even when its mode is ``none``.
Among the cells that fit, the fullest ones are chosen (best fit, ties by cell id) to keep large
cells free for large VMs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from policies.state import CellState, Req


def split(req: "Req", n: int) -> tuple[int, int, int, int]:
    """Per-cell share of (shared vcpus, pinned cpus, memory MiB, hugepages) over ``n`` cells."""
    return (math.ceil(req.shared_vcpus / n), math.ceil(req.dedicated / n),
            math.ceil(req.memory / n), math.ceil(req.hp_count / n))


def part_fits(cell: "CellState", part: tuple[int, int, int, int], hp_size: int | None,
              cpu_ratio: float, empty: bool = False) -> bool:
    """True if one cell (free now, or when ``empty``) holds one part of the VM."""
    vcpus, dedicated, memory, pages = part
    used_ded = 0 if empty else cell.dedicated
    if used_ded + dedicated > cell.cpus:
        return False
    shared = 0 if empty else cell.shared_vcpus
    if shared + vcpus > (cell.cpus - used_ded - dedicated) * cpu_ratio:
        return False
    if memory and (0 if empty else cell.memory_used) + memory > cell.memory:
        return False
    if pages:
        assert hp_size is not None
        used = 0 if empty else cell.hp_used.get(hp_size, 0)
        if used + pages > cell.hp_total.get(hp_size, 0):
            return False
    return True


def _choose(cells: Sequence["CellState"], part: tuple[int, int, int, int], req: "Req",
            cpu_ratio: float, n: int) -> tuple[int, ...] | None:
    # part_fits inlined: this runs once per host per VM, 10,000 times for one placement.
    vcpus, dedicated, memory, pages = part
    size = req.hp_size
    fitting = []
    for c in cells:
        ded = c.dedicated + dedicated
        if ded > c.cpus:
            continue
        # Pinning cpus shrinks the shared pool under the vcpus already bound here too.
        if c.shared_vcpus + vcpus > (c.cpus - ded) * cpu_ratio:
            continue
        if memory and c.memory_used + memory > c.memory:
            continue
        if pages and c.hp_used.get(size, 0) + pages > c.hp_total.get(size, 0):
            continue
        fitting.append(c)
    if len(fitting) < n:
        return None
    if len(fitting) == n:
        return tuple(c.id for c in fitting)  # cells are kept in id order
    if pages:
        ranked = sorted(fitting, key=lambda c: (c.hp_total.get(size, 0) - c.hp_used.get(size, 0),
                                                c.id))
    else:
        ranked = sorted(fitting, key=lambda c: (c.memory - c.memory_used, c.cpus - c.dedicated,
                                                c.id))
    return tuple(sorted(c.id for c in ranked[:n]))


def strict_width(req: "Req", cells: Sequence["CellState"], cpu_ratio: float) -> int | None:
    """The number of cells a strict VM spans: the fewest whose empty capacity holds it."""
    for n in range(1, len(cells) + 1):
        part = split(req, n)
        if sum(part_fits(c, part, req.hp_size, cpu_ratio, empty=True) for c in cells) >= n:
            return n
    return None


def fit(req: "Req", cells: Sequence["CellState"], cpu_ratio: float, *, width: int | None = None
        ) -> tuple[int, ...] | None:
    """Cell ids for the VM on this host, () when it runs unbound, or None when it does not fit.

    ``width`` is ``strict_width`` when the caller has it already (it depends only on cell sizes).
    """
    if not req.binds_cells:
        if req.numa != "preferred":
            return ()
        for n in range(1, len(cells) + 1):
            chosen = _choose(cells, split(req, n), req, cpu_ratio, n)
            if chosen is not None:
                return chosen
        return ()
    if req.numa == "strict":
        n = width if width is not None else strict_width(req, cells, cpu_ratio)
        return None if n is None else _choose(cells, split(req, n), req, cpu_ratio, n)
    for n in range(1, len(cells) + 1):
        chosen = _choose(cells, split(req, n), req, cpu_ratio, n)
        if chosen is not None:
            return chosen
    return None


def explain_misfit(req: "Req", cells: Sequence["CellState"], cpu_ratio: float) -> str:
    """A one-line reason why ``fit`` returned None, naming the largest free cell."""
    what = []
    if req.shared_vcpus:
        what.append(f"{req.shared_vcpus} vcpus")
    if req.dedicated:
        what.append(f"{req.dedicated} pinned cpus")
    if req.memory:
        what.append(f"{req.memory} MiB")
    if req.hp_count:
        what.append(f"{req.hp_count} x {req.hp_size} KiB hugepages")
    n = strict_width(req, cells, cpu_ratio) if req.numa == "strict" else None
    if req.numa == "strict" and n is None:
        return f"no {len(cells)}-cell split holds {', '.join(what)} even on empty cells"
    best = max(cells, key=lambda c: (c.memory - c.memory_used, -c.id))
    free = (f"cell {best.id} has {best.cpus - best.dedicated} unpinned cpus, "
            f"{best.memory - best.memory_used} MiB free")
    if req.hp_count:
        free += f", {best.hp_total.get(req.hp_size, 0) - best.hp_used.get(req.hp_size, 0)} hugepages"
    span = f" in {n} cell(s)" if n else ""
    return f"needs {', '.join(what)}{span}; {free}"
