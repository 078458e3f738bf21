"""The scheduler pipeline: filters, then weighers normalised and multiplied, ties broken by name.

``select`` is the fast path used by every operation; ``explain_hosts`` runs the same steps and
keeps every verdict and score for ``explain``. A filter or weigher that raises is a *failed
plugin*: the host is rejected (filter) or the weigher is left out for this VM, and the failure is
reported separately from "does not fit".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from policies.filters import DEFAULT_FILTERS, Context, Filter
from policies.state import ClusterState, HostUsage, Req
from policies.weighers import DEFAULT_WEIGHERS, Weigher


@dataclass(frozen=True)
class Choice:
    """The outcome for one VM: a host and its cells, or None with the reasons why not."""

    vm: str
    host: str | None
    cells: tuple[int, ...] = ()
    score: float = 0.0
    reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostVerdict:
    """One host in an explanation: rejected by a filter, or the weighers' scores."""

    host: str
    rejected_by: str | None = None
    reason: str | None = None
    failed: bool = False  # the filter raised, as opposed to "does not fit"
    scores: tuple[tuple[str, float, float, float], ...] = ()  # (weigher, raw, normalised, weighted)
    total: float | None = None
    chosen: bool = False


@dataclass
class _Tally:
    count: int = 0
    example: str = ""
    failed: list[str] = field(default_factory=list)


class Pipeline:
    def __init__(self, filters: Sequence[Filter] = DEFAULT_FILTERS,
                 weighers: Sequence[Weigher] = DEFAULT_WEIGHERS):
        self.filters = tuple(filters)
        self.weighers = tuple(weighers)

    def _active(self, req: Req, ctx: Context, state: ClusterState):
        filters = [f for f in self.filters if f.applies(req, ctx, state)]
        weighers = [(w, w.multiplier(state)) for w in self.weighers]
        weighers = [(w, m) for w, m in weighers if m > 0 and w.applies(req, ctx, state)]
        return filters, weighers

    def passing(self, req: Req, ctx: Context, state: ClusterState,
                hosts: Sequence[HostUsage] | None = None
                ) -> tuple[list[HostUsage], dict[str, _Tally]]:
        """Hosts that pass every filter (in name order), and a tally of rejections per filter.

        Filter by filter over the shrinking host list, as Nova does; a filter with a fast
        ``filter_all`` screens every host in one pass and only its rejects are asked why.
        """
        filters, _ = self._active(req, ctx, state)
        tallies: dict[str, _Tally] = {}
        current = list(state.hosts if hosts is None else hosts)
        for f in filters:
            if not current:
                break
            suspects = current
            keep: list[HostUsage] = []
            if type(f).filter_all is not Filter.filter_all:
                try:
                    keep = f.filter_all(current, req, ctx, state)
                    if len(keep) == len(current):
                        continue
                    kept = set(map(id, keep))
                    suspects = [hs for hs in current if id(hs) not in kept]
                except Exception:  # redo host by host so the failure is pinned to a host
                    keep = []
            for hs in suspects:
                try:
                    reason = f.check(hs, req, ctx, state)
                except Exception as exc:  # a broken filter must not place a VM where it cannot run
                    tallies.setdefault(f.name, _Tally()).failed.append(
                        f"{hs.name}: {type(exc).__name__}: {exc}")
                    continue
                if reason is None:
                    keep.append(hs)
                else:
                    t = tallies.setdefault(f.name, _Tally())
                    if not t.count:
                        t.example = f"{hs.name}: {reason}"
                    t.count += 1
            if suspects is not current:
                keep.sort(key=lambda hs: hs.name)
            current = keep
        return current, tallies

    def weigh(self, req: Req, ctx: Context, state: ClusterState, hosts: Sequence[HostUsage]
              ) -> tuple[list[float], dict[str, tuple[list[float], list[float], float]], list[str]]:
        """Total score per host, plus per weigher (raw, normalised, multiplier) and failures."""
        _, weighers = self._active(req, ctx, state)
        totals = [0.0] * len(hosts)
        detail: dict[str, tuple[list[float], list[float], float]] = {}
        errors: list[str] = []
        for w, mult in weighers:
            try:
                raws = w.raw_all(hosts, req, ctx, state)
            except Exception as exc:  # a broken weigher is left out, never fatal
                errors.append(f"weigher {w.name} failed: {type(exc).__name__}: {exc}")
                continue
            lo, hi = min(raws), max(raws)
            span = hi - lo
            if span > 1e-12:
                norm = [(r - lo) / span for r in raws]
                totals = [t + n * mult for t, n in zip(totals, norm)]
            else:
                norm = [0.0] * len(raws)
            detail[w.name] = (raws, norm, mult)
        return totals, detail, errors

    def select(self, req: Req, state: ClusterState, ctx: Context = Context()) -> Choice:
        """The best host for one VM, or None with one reason line per rejecting filter."""
        survivors, tallies = self.passing(req, ctx, state)
        failed = tuple(f"filter {name} failed on {m}" for name in sorted(tallies)
                       for m in tallies[name].failed[:3])
        if not survivors:
            return Choice(req.name, None, reasons=summarise(tallies, len(state.hosts)),
                          errors=failed)
        totals, _, errors = self.weigh(req, ctx, state, survivors)
        best = 0
        for i in range(1, len(totals)):
            # Survivors are in name order and only a strictly higher score wins: ties go to the
            # first name.
            if totals[i] > totals[best] + 1e-12:
                best = i
        hs = survivors[best]
        cells = state.fit(req, hs) or ()
        return Choice(req.name, hs.name, cells, totals[best], errors=failed + tuple(errors))

    def explain_hosts(self, req: Req, state: ClusterState, ctx: Context = Context()
                      ) -> list[HostVerdict]:
        """Every host with its verdict: the filter that rejected it and why, or its scores."""
        filters, _ = self._active(req, ctx, state)
        verdicts: dict[str, HostVerdict] = {}
        survivors = []
        for hs in state.hosts:
            for f in filters:
                try:
                    reason = f.check(hs, req, ctx, state)
                except Exception as exc:
                    verdicts[hs.name] = HostVerdict(hs.name, f.name, f"{type(exc).__name__}: {exc}",
                                                    failed=True)
                    break
                if reason is not None:
                    verdicts[hs.name] = HostVerdict(hs.name, f.name, reason)
                    break
            else:
                survivors.append(hs)
        if survivors:
            totals, detail, _ = self.weigh(req, ctx, state, survivors)
            best = max(range(len(totals)), key=lambda i: (totals[i], -i))
            for i, hs in enumerate(survivors):
                scores = tuple((name, raws[i], norm[i], norm[i] * mult)
                               for name, (raws, norm, mult) in detail.items())
                verdicts[hs.name] = HostVerdict(hs.name, scores=scores, total=totals[i],
                                                chosen=i == best)
        return [verdicts[hs.name] for hs in state.hosts]


def summarise(tallies: dict[str, _Tally], n_hosts: int) -> tuple[str, ...]:
    """One line per filter: how many hosts it rejected and one example, most hosts first."""
    if n_hosts == 0:
        return ("no hosts in the cluster",)
    lines = []
    for name in sorted(tallies, key=lambda n: (-tallies[n].count, n)):
        t = tallies[name]
        if t.count:
            lines.append(f"{name}: {t.count} host(s), e.g. {t.example}")
        if t.failed:
            lines.append(f"{name}: filter failed on {len(t.failed)} host(s), e.g. {t.failed[0]}")
    return tuple(lines)


DEFAULT_PIPELINE = Pipeline()
