"""The rebalance planner: live migrations that lower the imbalance score for little memory moved.

Imbalance score (lower is better), over active hosts:

    score = cpu_weight * sd(cpu_load / cpus) + memory_weight * sd(memory_used / memory)

with ``sd`` the population standard deviation and the weights from ``[policy.rebalance]``.

What a rebalance costs an operator is the memory it migrates (network, time, risk), so the
default method, ``cost``, takes at each step, among the valid moves gaining at least ``NEAR_BEST``
of the best gain, the one with the most score removed per GiB migrated (plus ``MOVE_OVERHEAD_GIB``
per move, so a crowd of tiny VMs does not win on a rounding error). A swap competes with those
moves: one of the ``SWAP_SEEDS`` moves gaining most, then a VM of its target back to its source,
taken when the pair removes more score per GiB (both migrations and overheads counted) than the
best single move and gains at least ``NEAR_BEST`` of what it gains; each half passes the filters
and gains on its own, so a swap is two ordinary moves of the plan. When no move is left it drops,
one by one, the moves whose share of the final score the rest of the plan no longer needs (taking
the move out raises the final score by less than ``min_gain``), replaying the moves after it so
that each still passes every filter and still gains at least ``min_gain``. Last, it plans the
steepest descent (method ``greedy``, Ganeti hbal's: the largest score drop at each step, memory
ignored) from the same start and keeps whichever plan reaches the score both reach (the higher of
their final scores) with less memory: the cost plan never migrates more than the greedy one.

Whatever the method, every prefix of a plan is a valid, improving plan: each move passes every
filter (capacity, NUMA, hugepages, affinity, tags, host affinity, migration compatibility,
failover reserve) in the state the moves before it leave, and lowers the score by at least
``min_gain`` (and by more than nothing). A VM moves at most once per plan (a second hop would be
a wasted migration); only migratable VMs on active hosts move, and only to active hosts; VMs in
``frozen`` (a scheduler's cooldown) stay. A move that would take the memory migrated past
``max_gib`` is not taken; planning stops at ``max_moves`` moves, or when no move within the
budget gains ``min_gain``. A scheduler passes its per-round limits and may also cut the plan
anywhere.

Speed: per-host utilisations and the four sums behind the two deviations are kept up to date, so
a candidate move is scored in O(1). Each step looks only at VMs on the hosts furthest above the
mean (by cpu, by memory and combined) towards the hosts furthest below (ranked in full every
``POOL_REFRESH`` moves, in between within a pool; see ``_Balance.frontier``), and VMs of the same
size on the same host are scored once.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from operator import itemgetter

from haagent.errors import PlacementInputError
from policies.config import DEFAULT, PolicyConfig
from policies.filters import MIGRATE, Context
from policies.model import Cluster
from policies.pipeline import DEFAULT_PIPELINE, Pipeline
from policies.place import Move
from policies.state import ClusterState, HostUsage, Req

COST = "cost"
GREEDY = "greedy"
METHODS = (COST, GREEDY)
FRONTIER = 4  # hosts taken from each end, per dimension, at every step
POOL = 4 * FRONTIER  # hosts kept at each end of each ranking between full rankings
POOL_REFRESH = 16  # moves between full rankings of every host
MAX_CHECKS = 200  # candidate moves checked against the filters per step before giving up
MOVE_OVERHEAD_GIB = 1.0  # what one migration costs beyond its memory (setup, dirty pages, risk)
PRUNE_TRIALS = 24  # moves the final pass tries to drop, at most (each trial replays the rest)
SWAP_SEEDS = 8  # the single moves gaining most that a swap may start with, per step
SWAP_CHECKS = 8  # swaps checked against the filters per step before single moves are taken
NEAR_BEST = 0.9  # the cost method prices only moves gaining at least this share of the best gain
DEFAULT_MIN_GAIN = 1e-5  # ``haagent plan rebalance``: a move must remove at least this much score
EPSILON = 1e-9  # the least gain that counts as a gain (float noise is not an improvement)
MIB_PER_GIB = 1024.0


@dataclass(frozen=True)
class RebalancePlan:
    moves: tuple[Move, ...]
    score_before: float
    score_after: float
    stopped: str  # why planning stopped: max_moves, max_gib, min_gain, no_move
    scores: tuple[float, ...] = ()  # the score after each move
    mib: tuple[int, ...] = ()  # the memory each move migrates

    @property
    def gib(self) -> float:
        """Memory the whole plan migrates."""
        return sum(self.mib) / MIB_PER_GIB


def imbalance(state: ClusterState) -> float:
    """The imbalance score of a state (see the module docstring)."""
    act = _active(state)
    if not act:
        return 0.0
    cfg = state.config
    return (cfg.imbalance_cpu_weight * _sd([hs.cpu_load / hs.cpus for hs in act])
            + cfg.imbalance_memory_weight * _sd([hs.mem_load / hs.memory for hs in act]))


def score(cluster: Cluster, config: PolicyConfig = DEFAULT) -> float:
    """The imbalance score of a cluster as it runs now."""
    return imbalance(ClusterState(cluster, config))


def _active(state: ClusterState) -> list[HostUsage]:
    return [hs for hs in state.hosts if hs.active and hs.cpus > 0 and hs.memory > 0]


def _sd(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def _check_limit(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlacementInputError(f"{name}: must be a finite number (got {value!r})")
    if value < 0:
        raise PlacementInputError(f"{name}: must not be negative (got {value!r})")


class _Balance:
    """The active hosts' utilisations and the sums behind the score, kept in step with the state."""

    def __init__(self, state: ClusterState, act: list[HostUsage]):
        cfg = state.config
        self.state = state
        self.act = act
        self.n = len(act)
        self.index = {hs.name: i for i, hs in enumerate(act)}
        self.wc, self.wm = cfg.imbalance_cpu_weight, cfg.imbalance_memory_weight
        self.uc = [hs.cpu_load / hs.cpus for hs in act]
        self.um = [hs.mem_load / hs.memory for hs in act]
        self.s1c, self.s2c = sum(self.uc), sum(u * u for u in self.uc)
        self.s1m, self.s2m = sum(self.um), sum(u * u for u in self.um)
        self.pool_hi: set[int] | None = None
        self.pool_lo: set[int] | None = None
        self.pool_age = 0
        self.touched: set[int] = set()  # hosts moves changed since the pool was ranked

    def current(self) -> float:
        n = self.n
        return (self.wc * math.sqrt(max(0.0, self.s2c / n - (self.s1c / n) ** 2))
                + self.wm * math.sqrt(max(0.0, self.s2m / n - (self.s1m / n) ** 2)))

    def moved_score(self, req: Req, s: int, t: int) -> float:
        """The score if ``req`` went from active host ``s`` to ``t`` (nothing changes)."""
        hs, ht, n = self.act[s], self.act[t], self.n
        dc, dm = req.cpu_load, req.mem_load
        ucs, ums, uct, umt = self.uc[s], self.um[s], self.uc[t], self.um[t]
        ucs2, ums2 = ucs - dc / hs.cpus, ums - dm / hs.memory
        uct2, umt2 = uct + dc / ht.cpus, umt + dm / ht.memory
        c1 = self.s1c - ucs + ucs2 - uct + uct2
        c2 = self.s2c - ucs * ucs + ucs2 * ucs2 - uct * uct + uct2 * uct2
        m1 = self.s1m - ums + ums2 - umt + umt2
        m2 = self.s2m - ums * ums + ums2 * ums2 - umt * umt + umt2 * umt2
        return (self.wc * math.sqrt(max(0.0, c2 / n - (c1 / n) ** 2))
                + self.wm * math.sqrt(max(0.0, m2 / n - (m1 / n) ** 2)))

    def put(self, req: Req, host: str, cells: tuple[int, ...]) -> None:
        """Move ``req`` (placed now on an active host) to ``host`` with ``cells``."""
        source = self.state.placed[req.name][0]
        self.state.remove(req)
        self.state.add(req, host, cells)
        for name in (source, host):
            i = self.index[name]
            hs = self.act[i]
            nc, nm = hs.cpu_load / hs.cpus, hs.mem_load / hs.memory
            self.s1c += nc - self.uc[i]
            self.s2c += nc * nc - self.uc[i] * self.uc[i]
            self.s1m += nm - self.um[i]
            self.s2m += nm * nm - self.um[i] * self.um[i]
            self.uc[i], self.um[i] = nc, nm
            self.touched.add(i)

    def frontier(self) -> tuple[list[int], list[int]]:
        """Hosts furthest above the mean (sources) and furthest below it (targets).

        Ranking every host at every step costs more than the rest of the step, so every
        ``POOL_REFRESH`` moves the ``POOL`` hosts at each end of each ranking are kept, and in
        between the frontier is ranked within that pool plus the hosts moves have touched since
        (only those changed their own load; the rest drift only with the cluster's deviations).
        """
        n = self.n
        uc, um = self.uc, self.um
        mc, mm = self.s1c / n, self.s1m / n
        sdc = math.sqrt(max(0.0, self.s2c / n - mc * mc)) or 1.0
        sdm = math.sqrt(max(0.0, self.s2m / n - mm * mm)) or 1.0
        kc, km = self.wc / sdc, self.wm / sdm

        def dev(i: int) -> float:
            return kc * uc[i] + km * um[i]

        if self.pool_age <= 0 or self.pool_hi is None or self.pool_lo is None:
            rng = range(n)
            hi: set[int] = set()
            lo: set[int] = set()
            for key in (dev, uc.__getitem__, um.__getitem__):
                hi.update(heapq.nlargest(POOL, rng, key=key))
                lo.update(heapq.nsmallest(POOL, rng, key=key))
            self.pool_hi, self.pool_lo = hi, lo
            self.pool_age = POOL_REFRESH
            self.touched = set()
        self.pool_age -= 1
        hi = self.pool_hi | self.touched
        lo = self.pool_lo | self.touched
        sources: set[int] = set()
        targets: set[int] = set()
        for key in (dev, uc.__getitem__, um.__getitem__):
            sources.update(heapq.nlargest(FRONTIER, hi, key=key))
            targets.update(heapq.nsmallest(FRONTIER, lo, key=key))
        return sorted(sources), sorted(targets)


@dataclass
class _Step:
    req: Req
    source: str
    target: str
    source_cells: tuple[int, ...]
    cells: tuple[int, ...]
    score: float


class _Planner:
    def __init__(self, state: ClusterState, act: list[HostUsage], min_gain: float,
                 pipeline: Pipeline, frozen: frozenset[str]):
        self.state = state
        self.bal = _Balance(state, act)
        self.method = COST
        self.min_gain = min_gain
        self.threshold = max(min_gain, EPSILON)
        self.pipeline = pipeline
        self.frozen = frozen
        self.steps: list[_Step] = []
        self.moved: set[str] = set()
        self.mib_used = 0.0  # memory the steps so far migrate
        # Per active host, the VMs that may still move, by (cpu load, memory), names descending.
        self.movable: list[dict[tuple[float, float], list[str]]] = []

    def run(self, method: str, max_moves: int | None, max_mib: float | None) -> str:
        """Plan from the state as it is (no steps yet); why planning stopped."""
        self.method = method
        self.bal.pool_age = 0
        self.movable = []
        for hs in self.bal.act:
            sizes: dict[tuple[float, float], list[str]] = {}
            for vname in sorted(hs.vms, reverse=True):
                req = self.state.reqs[vname]
                if req.migratable and vname not in self.frozen:
                    sizes.setdefault((req.cpu_load, req.mem_load), []).append(vname)
            self.movable.append(sizes)
        while max_moves is None or len(self.steps) < max_moves:
            why = self.step(None if max_mib is None else max_mib - self.mib_used,
                            None if max_moves is None else max_moves - len(self.steps))
            if why is not None:
                return why
        return "max_moves"

    def valid(self, req: Req, target: HostUsage) -> bool:
        ctx = Context(MIGRATE, frozenset({self.state.placed[req.name][0]}))
        ok, _ = self.pipeline.passing(req, ctx, self.state, [target])
        return bool(ok)

    def apply(self, req: Req, target: str) -> None:
        source, source_cells = self.state.placed[req.name]
        names = self.movable[self.bal.index[source]].get((req.cpu_load, req.mem_load), [])
        if req.name in names:  # a VM moves once: it is no longer a candidate anywhere
            names.remove(req.name)
        cells = self.state.fit(req, self.state.by_name[target]) or ()
        self.bal.put(req, target, cells)
        self.steps.append(_Step(req, source, target, source_cells, cells, self.bal.current()))
        self.moved.add(req.name)
        self.mib_used += req.mem_load

    def step(self, mib_left: float | None, moves_left: int | None = None) -> str | None:
        """Take the next move; None, or why no move was taken."""
        bal, state = self.bal, self.state
        current = bal.current()
        sources, targets = bal.frontier()
        cost = self.method == COST
        threshold = self.threshold
        cands: list[tuple[float, float, str, int, int]] = []
        over_budget = False
        n, wc, wm = bal.n, bal.wc, bal.wm
        uc, um = bal.uc, bal.um
        tdata = [(t, uc[t], um[t], 1.0 / bal.act[t].cpus, 1.0 / bal.act[t].memory) for t in targets]
        sqrt = math.sqrt
        for s in sources:
            hs = bal.act[s]
            for (dc, dm), names in self.movable[s].items():
                if not names:
                    continue
                if mib_left is not None and dm > mib_left:
                    over_budget = True
                    continue
                vname = names[-1]  # VMs of one size on one host score alike: the first name stands in
                per = 1.0 / (dm / MIB_PER_GIB + MOVE_OVERHEAD_GIB)
                # The sums with the VM gone from its source (as _Balance.moved_score, inlined:
                # this loop is most of the planner's time).
                ucs, ums = uc[s], um[s]
                ucs2, ums2 = ucs - dc / hs.cpus, ums - dm / hs.memory
                b1c, b2c = bal.s1c - ucs + ucs2, bal.s2c - ucs * ucs + ucs2 * ucs2
                b1m, b2m = bal.s1m - ums + ums2, bal.s2m - ums * ums + ums2 * ums2
                for t, uct, umt, ict, imt in tdata:
                    if t == s:
                        continue
                    dct, dmt = dc * ict, dm * imt
                    c1, m1 = (b1c + dct) / n, (b1m + dmt) / n
                    c2 = (b2c + dct * (uct + uct + dct)) / n
                    m2 = (b2m + dmt * (umt + umt + dmt)) / n
                    # abs: a variance is never below 0 but for rounding, which abs keeps harmless
                    new = wc * sqrt(abs(c2 - c1 * c1)) + wm * sqrt(abs(m2 - m1 * m1))
                    gain = current - new
                    if gain >= threshold:
                        cands.append((-gain * per if cost else new, new, vname, s, t))
        if not cands:
            return "max_gib" if over_budget else ("min_gain" if self.min_gain > 0 else "no_move")
        swaps: list[tuple[float, float, str, int, int, str]] = []
        if cost:
            # Only moves worth nearly as much as the best one compete on price: cheap moves of
            # little effect first would use up the small VMs the end of the plan needs to fine-tune.
            best_gain = current - min(c[1] for c in cands)
            if moves_left is None or moves_left >= 2:
                swaps = self.swaps(cands, current, NEAR_BEST * best_gain, mib_left)
            cands = [c for c in cands if current - c[1] >= NEAR_BEST * best_gain]

        def order(c: tuple) -> tuple:
            return c[0], c[2], bal.act[c[4]].name

        # The first in order usually passes the filters: find it without sorting them all.
        top = min(c[0] for c in cands)
        first = min((c for c in cands if c[0] == top), key=order)
        if swaps:
            swaps.sort(key=lambda c: (c[0], c[2], c[5]))
            for key, _new, aname, s, t, bname in swaps[:SWAP_CHECKS]:
                if key >= top:
                    break  # the best single move is worth at least as much per GiB
                if self.take_swap(state.reqs[aname], state.reqs[bname], s, t):
                    return None
        if self.valid(state.reqs[first[2]], bal.act[first[4]]):
            self.apply(state.reqs[first[2]], bal.act[first[4]].name)
            return None
        cands.sort(key=order)
        for _key, _new, vname, _s, t in cands[1:MAX_CHECKS]:
            req = state.reqs[vname]
            if self.valid(req, bal.act[t]):
                self.apply(req, bal.act[t].name)
                return None
        return "no_move"

    def swaps(self, cands: list[tuple[float, float, str, int, int]], current: float,
              least_gain: float, mib_left: float | None
              ) -> list[tuple[float, float, str, int, int, str]]:
        """Pairs of moves (a VM from s to t, then one from t back to s), each gaining on its own,
        that together gain at least ``least_gain``: (key per GiB as the single moves', score
        after both, first VM, s, t, second VM). Seeded by the single moves gaining most."""
        bal = self.bal
        n, wc, wm, sqrt = bal.n, bal.wc, bal.wm, math.sqrt
        threshold = self.threshold
        out = []
        for _key, new1, aname, s, t in heapq.nsmallest(SWAP_SEEDS, cands, key=itemgetter(1)):
            a = self.state.reqs[aname]
            hs, ht = bal.act[s], bal.act[t]
            ics, ims, ict, imt = 1.0 / hs.cpus, 1.0 / hs.memory, 1.0 / ht.cpus, 1.0 / ht.memory
            # Utilisations and sums once ``a`` has moved.
            ucs, ums = bal.uc[s] - a.cpu_load * ics, bal.um[s] - a.mem_load * ims
            uct, umt = bal.uc[t] + a.cpu_load * ict, bal.um[t] + a.mem_load * imt
            s1c = bal.s1c - bal.uc[s] - bal.uc[t] + ucs + uct
            s1m = bal.s1m - bal.um[s] - bal.um[t] + ums + umt
            s2c = (bal.s2c - bal.uc[s] ** 2 - bal.uc[t] ** 2 + ucs * ucs + uct * uct)
            s2m = (bal.s2m - bal.um[s] ** 2 - bal.um[t] ** 2 + ums * ums + umt * umt)
            for (dc, dm), names in self.movable[t].items():
                if not names or (mib_left is not None and a.mem_load + dm > mib_left):
                    continue
                ucs2, ums2 = ucs + dc * ics, ums + dm * ims
                uct2, umt2 = uct - dc * ict, umt - dm * imt
                c1 = (s1c - ucs - uct + ucs2 + uct2) / n
                m1 = (s1m - ums - umt + ums2 + umt2) / n
                c2 = (s2c - ucs * ucs - uct * uct + ucs2 * ucs2 + uct2 * uct2) / n
                m2 = (s2m - ums * ums - umt * umt + ums2 * ums2 + umt2 * umt2) / n
                new2 = wc * sqrt(abs(c2 - c1 * c1)) + wm * sqrt(abs(m2 - m1 * m1))
                if new1 - new2 < threshold or current - new2 < least_gain:
                    continue
                gib = (a.mem_load + dm) / MIB_PER_GIB + 2 * MOVE_OVERHEAD_GIB
                out.append((-(current - new2) / gib, new2, aname, s, t, names[-1]))
        return out

    def take_swap(self, a: Req, b: Req, s: int, t: int) -> bool:
        """Move ``a`` from active host ``s`` to ``t`` and ``b`` back from ``t`` to ``s``, if each
        passes the filters in its turn and gains; else change nothing."""
        bal = self.bal
        if not self.valid(a, bal.act[t]):
            return False
        self.apply(a, bal.act[t].name)
        before = self.steps[-1].score
        if (self.valid(b, bal.act[s])
                and before - bal.moved_score(b, t, s) >= self.threshold):
            self.apply(b, bal.act[s].name)
            return True
        self.undo_to(len(self.steps) - 1)  # ``a`` goes back and may move later
        self.movable[s].setdefault((a.cpu_load, a.mem_load), []).append(a.name)
        self.movable[s][(a.cpu_load, a.mem_load)].sort(reverse=True)
        return False

    def prune(self) -> None:
        """Drop moves the rest of the plan no longer needs (see the module docstring)."""
        tried: set[str] = set()
        for _ in range(PRUNE_TRIALS):
            final = self.bal.current()
            best = None
            for k, st in enumerate(self.steps):
                if st.req.name in tried:
                    continue
                i, j = self.bal.index[st.target], self.bal.index[st.source]
                loss = self.bal.moved_score(st.req, i, j) - final
                if loss < self.threshold:
                    key = (loss * MIB_PER_GIB / (st.req.mem_load + 1.0), k)
                    best = key if best is None or key < best else best
            if best is None:
                return
            k = best[1]
            tried.add(self.steps[k].req.name)
            self._try_drop(k)

    def undo_to(self, k: int) -> list[_Step]:
        undone = []
        while len(self.steps) > k:
            st = self.steps.pop()
            self.bal.put(st.req, st.source, st.source_cells)
            self.moved.discard(st.req.name)
            self.mib_used -= st.req.mem_load
            undone.append(st)
        undone.reverse()
        return undone

    def redo(self, steps: list[_Step]) -> None:
        for st in steps:
            self.bal.put(st.req, st.target, st.cells)
            self.moved.add(st.req.name)
            self.mib_used += st.req.mem_load
            self.steps.append(st)

    def _try_drop(self, k: int) -> bool:
        """Drop move ``k`` if every move after it still passes and gains; else change nothing."""
        original = self.undo_to(k)
        current = self.bal.current()
        for st in original[1:]:
            t = self.state.by_name[st.target]
            new = self.bal.moved_score(st.req, self.bal.index[st.source], self.bal.index[st.target])
            if current - new < self.threshold or not self.valid(st.req, t):
                self.undo_to(k)
                self.redo(original)
                return False
            self.apply(st.req, st.target)
            current = self.steps[-1].score
        return True


def rebalance(cluster: Cluster, max_moves: int | None = None, min_gain: float = 0.0,
              config: PolicyConfig = DEFAULT, *, max_gib: float | None = None,
              frozen: frozenset[str] | set[str] | tuple[str, ...] = frozenset(),
              method: str = COST, pipeline: Pipeline = DEFAULT_PIPELINE) -> RebalancePlan:
    """Plan live migrations that lower the score: each gains ``min_gain``, within the limits.

    ``max_moves`` and ``max_gib`` (memory migrated) are None for no limit; ``frozen`` VMs stay.
    """
    _check_limit("max_moves", max_moves)
    _check_limit("max_gib", max_gib)
    _check_limit("min_gain", min_gain)
    if max_moves is not None and max_moves != int(max_moves):
        raise PlacementInputError(f"max_moves: must be a whole number (got {max_moves!r})")
    if method not in METHODS:
        raise PlacementInputError(f"method: must be one of {', '.join(METHODS)} "
                                  f"(got {method!r})")
    state = ClusterState(cluster, config)
    before = imbalance(state)
    act = _active(state)
    if len(act) < 2:
        return RebalancePlan((), before, before, "no_move")
    planner = _Planner(state, act, min_gain, pipeline, frozenset(frozen))
    max_mib = None if max_gib is None else max_gib * MIB_PER_GIB
    stopped = planner.run(method, max_moves, max_mib)
    if method == COST:
        planner.prune()
        # The yardstick: the steepest descent, from the same start. Whichever plan reaches the
        # score both reach with less memory is kept, so the cost method never loses to it.
        cost_steps = planner.undo_to(0)
        greedy_stopped = planner.run(GREEDY, max_moves, max_mib)
        target = max(_final(before, cost_steps), _final(before, planner.steps))
        if _mib_to_reach(before, planner.steps, target) < _mib_to_reach(before, cost_steps, target):
            stopped = greedy_stopped
        else:
            planner.undo_to(0)
            planner.redo(cost_steps)
    steps = planner.steps
    moves = tuple(Move(st.req.name, st.source, st.target, st.cells) for st in steps)
    return RebalancePlan(moves, before, imbalance(state), stopped,
                         tuple(st.score for st in steps),
                         tuple(st.req.vm.memory_mib for st in steps))


def _final(before: float, steps: list[_Step]) -> float:
    return steps[-1].score if steps else before


def _mib_to_reach(before: float, steps: list[_Step], target: float) -> float:
    """Memory the shortest prefix of ``steps`` at or below score ``target`` migrates."""
    if before <= target + EPSILON:
        return 0.0
    mib = 0.0
    for st in steps:
        mib += st.req.mem_load
        if st.score <= target + EPSILON:
            return mib
    return math.inf
