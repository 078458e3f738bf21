"""The cluster JSON file: the one place placement input is validated, and the results as JSON.

Every problem becomes a ``PlacementInputError`` naming the field, e.g.
``vms[2] (web-1).memory_mib: must be at least 1 (got -512)``. See docs/placement.md for the format.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from haagent.errors import PlacementInputError
from haagent.fields import MISSING, Fields
from policies.config import DEFAULT, PolicyConfig, parse_policy_section
from policies.model import (GROUP_POLICIES, HOST_STATES, NUMA_MODES, UNBOUND_MEMORY, Cluster, Group, Host,
                            HostAffinity, NumaCell, Vm)

_MISSING = MISSING
_MAX_SHOWN = 5


class _Fields(Fields):
    """One JSON object of a cluster file: the one field reader, with the cluster file's ways (an
    absent or null field is missing; strings and names must not be empty; unknown "fields")."""

    def __init__(self, obj: Any, where: str, problems: list[str]):
        super().__init__(obj, where, problems, kind="object", unknown="unknown field", show=_short,
                         null_is_missing=True)

    @property
    def where(self) -> str:
        return self.path

    def string(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] | None = None) -> Any:  # type: ignore[override]
        return super().string(key, default, choices=choices, non_empty=True, fallback=False)

    def number(self, key: str) -> float | None:  # type: ignore[override]
        """An optional non-negative number."""
        return super().number(key, None, non_negative=True, fallback=False)

    def strings(self, key: str) -> tuple[str, ...]:
        return self.string_list(key, [], names=True)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _label(obj: Any, kind: str, i: int) -> str:
    name = obj.get("name") if isinstance(obj, dict) else None
    return f"{kind}[{i}] ({name})" if isinstance(name, str) else f"{kind}[{i}]"


def _host(obj: Any, i: int, problems: list[str]) -> Host | None:
    f = _Fields(obj, _label(obj, "hosts", i), problems)
    start = len(problems)
    name = f.string("name")
    cpus = f.integer("cpus", minimum=1)
    memory = f.integer("memory_mib", minimum=1)
    state = f.string("state", "active", choices=HOST_STATES)
    tags = f.strings("tags")
    family = f.string("cpu_family", None)
    cpu_used = f.number("cpu_used")
    mem_used = f.number("memory_used_mib")
    unknown = f.string("inventory_unknown", None)
    raw_models = f.get("cpu_models", None)
    cpu_models = None if raw_models is None else frozenset(f.strings("cpu_models"))
    cells = []
    raw_cells = f.get("numa", [])
    if not isinstance(raw_cells, list):
        f.problem("numa", f"must be a list of cells (got {_short(raw_cells)})")
        raw_cells = []
    for j, raw in enumerate(raw_cells):
        c = _Fields(raw, f"{f.where}.numa[{j}]", problems)
        cid = c.integer("id", j)
        ccpus = c.integer("cpus", minimum=1)
        cmem = c.integer("memory_mib", minimum=1)
        pages: dict[int, int] = {}
        raw_pages = c.get("hugepages", {})
        if not isinstance(raw_pages, dict):
            c.problem("hugepages", f"must map a page size in KiB to a count (got {_short(raw_pages)})")
        else:
            for size, count in sorted(raw_pages.items()):
                if not str(size).isdigit() or int(size) <= 0 or isinstance(count, bool) \
                        or not isinstance(count, int) or count < 0:
                    c.problem(f"hugepages.{size}", "size must be KiB and count a whole number >= 0 "
                                                   f"(got {_short(count)})")
                else:
                    pages[int(size)] = count
        cused = c.integer("memory_used_mib", 0)
        pages_used: dict[int, int] = {}
        raw_used = c.get("hugepages_used", {})
        if not isinstance(raw_used, dict):
            c.problem("hugepages_used", f"must map a page size in KiB to a count (got {_short(raw_used)})")
        else:
            for size, count in sorted(raw_used.items()):
                if not str(size).isdigit() or int(size) not in pages or isinstance(count, bool) \
                        or not isinstance(count, int) or not 0 <= count <= pages[int(size)]:
                    c.problem(f"hugepages_used.{size}", "must be a count of a size in hugepages, at "
                                                        f"most its total (got {_short(count)})")
                else:
                    pages_used[int(size)] = count
        c.finish()
        if None not in (cid, ccpus, cmem, cused):
            cells.append(NumaCell(cid, ccpus, cmem, pages, cused, pages_used))
    f.finish()
    if cells:
        if len({c.id for c in cells}) != len(cells):
            f.problem("numa", "two cells have the same id")
        if cpus is not None and sum(c.cpus for c in cells) > cpus:
            f.problem("numa", f"cells have {sum(c.cpus for c in cells)} cpus, the host {cpus}")
        if memory is not None and sum(c.memory_mib for c in cells) > memory:
            f.problem("numa", f"cells have {sum(c.memory_mib for c in cells)} MiB, the host {memory}")
        for c in cells:
            if c.hugepage_mib > c.memory_mib:
                f.problem("numa", f"cell {c.id} has more hugepage memory than memory")
    if len(problems) > start:
        return None
    return Host(name, cpus, memory, tuple(sorted(cells, key=lambda c: c.id)), state,
                frozenset(tags), family, cpu_used, mem_used, cpu_models, unknown)


def _vm(obj: Any, i: int, problems: list[str]) -> Vm | None:
    f = _Fields(obj, _label(obj, "vms", i), problems)
    start = len(problems)
    name = f.string("name")
    vcpus = f.integer("vcpus", minimum=1)
    memory = f.integer("memory_mib", minimum=1)
    host = f.string("host", None)
    mode = f.string("numa", "none", choices=NUMA_MODES)
    dedicated = f.integer("dedicated_cpus", 0)
    if dedicated is not None and vcpus is not None and dedicated > vcpus:
        f.problem("dedicated_cpus", f"must be at most vcpus ({vcpus}) (got {dedicated})")
    hp_size, hp_count = None, 0
    raw_hp = f.get("hugepages", None)
    if raw_hp is not None:
        h = _Fields(raw_hp, f"{f.where}.hugepages", problems)
        hp_size = h.integer("size_kib", minimum=4)
        hp_count = h.integer("count", minimum=1) or 0
        h.finish()
        if hp_size and hp_count and memory and hp_size * hp_count < memory * 1024:
            f.problem("hugepages", f"{hp_count} x {hp_size} KiB pages do not hold {memory} MiB")
    raw_priority = f.get("priority", None)
    priority = None
    if raw_priority is not None:
        if isinstance(raw_priority, bool) or not isinstance(raw_priority, int):
            f.problem("priority", f"must be a whole number (got {_short(raw_priority)})")
        else:
            priority = raw_priority
    groups = f.strings("groups")
    affinity = None
    raw_aff = f.get("host_affinity", None)
    if raw_aff is not None:
        a = _Fields(raw_aff, f"{f.where}.host_affinity", problems)
        hosts = a.strings("hosts")
        if not hosts:
            a.problem("hosts", "must list at least one host")
        affinity = HostAffinity(frozenset(hosts), a.boolean("hard", True))
        a.finish()
    tags = f.strings("required_tags")
    migratable = f.boolean("migratable", True)
    ha = f.boolean("ha", True)
    cpu_load = f.number("cpu_load")
    raw_cells = f.get("numa_cells", None)
    cells = None
    if raw_cells is not None:
        if not isinstance(raw_cells, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in raw_cells):
            f.problem("numa_cells", f"must be a list of cell ids (got {_short(raw_cells)})")
        elif host is None:
            f.problem("numa_cells", "is only meaningful with a host")
        else:
            cells = tuple(sorted(set(raw_cells)))
    raw_nodeset = f.get("nodeset", [])
    nodeset: tuple[int, ...] = ()
    if not isinstance(raw_nodeset, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in raw_nodeset):
        f.problem("nodeset", f"must be a list of cell ids (got {_short(raw_nodeset)})")
    else:
        nodeset = tuple(sorted(set(raw_nodeset)))
    max_pin = f.integer("max_pinned_cpu", -1, minimum=-1)
    cpu_model = f.string("cpu_model", None)
    unplaceable = f.string("unplaceable", None)
    f.finish()
    if len(problems) > start:
        return None
    return Vm(name, vcpus, memory, host, mode, dedicated, hp_size, hp_count, priority,
              tuple(groups), affinity, frozenset(tags), migratable, ha, cpu_load, cells,
              nodeset, max_pin, cpu_model, unplaceable)


def _non_finite(value: Any, path: str) -> list[str]:
    """Where a decoded document holds NaN or +-Infinity (Python's json accepts them, and 1e400
    becomes infinity): one problem per field, before anything tries to use them."""
    problems = []
    todo = [(path, value)]  # a stack, not recursion: json decodes deeper nesting than Python recurses
    while todo:
        where, v = todo.pop()
        if isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{where}: must be a finite number (got {v!r})")
        elif isinstance(v, dict):
            todo.extend(reversed([(f"{where}.{k}" if where else str(k), x) for k, x in v.items()]))
        elif isinstance(v, list):
            todo.extend(reversed([(f"{where}[{i}]", x) for i, x in enumerate(v)]))
    return problems


def parse_cluster(data: Any) -> tuple[Cluster, PolicyConfig]:
    """Validate a decoded cluster document; raise PlacementInputError naming each bad field."""
    problems: list[str] = _non_finite(data, "")
    if problems:
        raise PlacementInputError("; ".join(problems))
    top = _Fields(data, "cluster", problems)
    raw_hosts, raw_vms, raw_groups = top.get("hosts"), top.get("vms", []), top.get("groups", [])
    unbound = top.string("unbound_memory", "host", choices=UNBOUND_MEMORY)
    raw_policy = top.get("policy", None)
    top.finish()
    for key, value in (("hosts", raw_hosts), ("vms", raw_vms), ("groups", raw_groups)):
        if value is not None and not isinstance(value, list):
            problems.append(f"{key}: must be a list (got {_short(value)})")
    hosts = [_host(h, i, problems) for i, h in enumerate(raw_hosts)] \
        if isinstance(raw_hosts, list) else []
    vms = [_vm(v, i, problems) for i, v in enumerate(raw_vms)] if isinstance(raw_vms, list) else []
    groups = []
    for i, raw in enumerate(raw_groups if isinstance(raw_groups, list) else []):
        g = _Fields(raw, _label(raw, "groups", i), problems)
        name = g.string("name")
        policy = g.string("policy", choices=GROUP_POLICIES)
        hard = g.boolean("hard", True)
        g.finish()
        if name and policy:
            groups.append(Group(name, policy, hard))
    config = DEFAULT
    if raw_policy is not None:
        config = parse_policy_section(raw_policy, "policy", problems)

    hosts_ok = [h for h in hosts if h is not None]
    vms_ok = [v for v in vms if v is not None]
    for kind, names in (("host", [h.name for h in hosts_ok]), ("VM", [v.name for v in vms_ok]),
                        ("group", [g.name for g in groups])):
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            problems.append(f"duplicate {kind} name: {', '.join(dups)}")
    by_host = {h.name: h for h in hosts_ok}
    group_names = {g.name for g in groups}
    for v in vms_ok:
        if v.host is not None and v.host not in by_host and len(by_host) == len(hosts):
            problems.append(f"vms ({v.name}).host: unknown host {v.host!r}")
        for g in v.groups:
            if g not in group_names:
                problems.append(f"vms ({v.name}).groups: unknown group {g!r}")
        if v.host_affinity is not None and len(by_host) == len(hosts):
            for h in sorted(v.host_affinity.hosts - set(by_host)):
                problems.append(f"vms ({v.name}).host_affinity: unknown host {h!r}")
        if v.numa_cells and v.host in by_host:
            ids = {c.id for c in by_host[v.host].numa} or {0}
            bad = sorted(set(v.numa_cells) - ids)
            if bad:
                problems.append(f"vms ({v.name}).numa_cells: host {v.host} has no cell {bad[0]}")
    if problems:
        shown = problems[:_MAX_SHOWN]
        more = f"; and {len(problems) - _MAX_SHOWN} more" if len(problems) > _MAX_SHOWN else ""
        raise PlacementInputError("; ".join(shown) + more)
    cluster = Cluster(tuple(sorted(hosts_ok, key=lambda h: h.name)),
                      tuple(sorted(vms_ok, key=lambda v: v.name)),
                      tuple(sorted(groups, key=lambda g: g.name)), unbound or "host")
    return cluster, config


def load_cluster(path: str | Path) -> tuple[Cluster, PolicyConfig]:
    """Read and validate a cluster JSON file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlacementInputError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlacementInputError(f"{path}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlacementInputError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise PlacementInputError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError:  # an integer beyond Python's digit limit for str -> int
        raise PlacementInputError(f"{path}: not valid JSON: an integer has more than "
                                  f"{sys.get_int_max_str_digits()} digits") from None
    try:
        return parse_cluster(data)
    except PlacementInputError as exc:
        raise PlacementInputError(f"{path}: {exc}") from None


def dump_cluster(cluster: Cluster, config: PolicyConfig | None = None) -> dict[str, Any]:
    """The JSON document for a cluster (the inverse of ``parse_cluster``)."""
    hosts = []
    for h in cluster.hosts:
        d: dict[str, Any] = {"name": h.name, "cpus": h.cpus, "memory_mib": h.memory_mib,
                             "state": h.state, "tags": sorted(h.tags)}
        if h.numa:
            d["numa"] = [{"id": c.id, "cpus": c.cpus, "memory_mib": c.memory_mib,
                          **({"hugepages": {str(k): v for k, v in sorted(c.hugepages.items())}}
                             if c.hugepages else {}),
                          **({"memory_used_mib": c.memory_used_mib} if c.memory_used_mib else {}),
                          **({"hugepages_used": {str(k): v for k, v in sorted(c.hugepages_used.items())}}
                             if c.hugepages_used else {})} for c in h.numa]
        for key in ("cpu_family", "cpu_used", "memory_used_mib"):
            if getattr(h, key) is not None:
                d[key] = getattr(h, key)
        if h.cpu_models is not None:
            d["cpu_models"] = sorted(h.cpu_models)
        if h.inventory_unknown:
            d["inventory_unknown"] = h.inventory_unknown
        hosts.append(d)
    vms = []
    for v in cluster.vms:
        d = {"name": v.name, "vcpus": v.vcpus, "memory_mib": v.memory_mib, "host": v.host}
        if v.numa != "none":
            d["numa"] = v.numa
        if v.dedicated_cpus:
            d["dedicated_cpus"] = v.dedicated_cpus
        if v.hugepage_count:
            d["hugepages"] = {"size_kib": v.hugepage_size_kib, "count": v.hugepage_count}
        if v.priority is not None:
            d["priority"] = v.priority
        if v.groups:
            d["groups"] = list(v.groups)
        if v.host_affinity:
            d["host_affinity"] = {"hosts": sorted(v.host_affinity.hosts),
                                  "hard": v.host_affinity.hard}
        if v.required_tags:
            d["required_tags"] = sorted(v.required_tags)
        if not v.migratable:
            d["migratable"] = False
        if not v.ha:
            d["ha"] = False
        if v.cpu_load is not None:
            d["cpu_load"] = v.cpu_load
        if v.numa_cells is not None:
            d["numa_cells"] = list(v.numa_cells)
        if v.nodeset:
            d["nodeset"] = list(v.nodeset)
        if v.max_pinned_cpu >= 0:
            d["max_pinned_cpu"] = v.max_pinned_cpu
        for key in ("cpu_model", "unplaceable"):
            if getattr(v, key):
                d[key] = getattr(v, key)
        vms.append(d)
    out: dict[str, Any] = {"hosts": hosts, "vms": vms}
    if cluster.unbound_memory != "host":
        out["unbound_memory"] = cluster.unbound_memory
    if cluster.groups:
        out["groups"] = [{"name": g.name, "policy": g.policy, "hard": g.hard} for g in cluster.groups]
    return out


def to_jsonable(result: Any) -> Any:
    """A result dataclass as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(asdict(result)))
