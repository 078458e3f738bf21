"""The pipeline: filters then normalised, multiplied weighers; ties by name; failures apart."""

from __future__ import annotations

from policies.config import PolicyConfig, Weights
from policies.filters import DEFAULT_FILTERS, Context, Filter
from policies.pipeline import Pipeline
from policies.state import ClusterState
from policies.weighers import DEFAULT_WEIGHERS, Weigher


def test_ties_go_to_the_first_name(build):
    hosts = [build.host(n) for n in ("c", "a", "b")]
    state = ClusterState(build.cluster(hosts), PolicyConfig())
    choice = Pipeline().select(state.req(build.vm("x")), state)
    assert choice.host == "a"


def test_scores_are_normalised_and_multiplied(build):
    hosts = [build.host("a"), build.host("b"), build.host("c")]
    vms = [build.vm("t1", 8, 32768, host="a"), build.vm("t2", 4, 16384, host="b")]
    cfg = PolicyConfig(weights=Weights(load=3.0))
    state = ClusterState(build.cluster(hosts, vms), cfg)
    req = state.req(build.vm("x"))
    totals, detail, errors = Pipeline().weigh(req, Context(), state, state.hosts)
    raws, norm, mult = detail["load"]
    assert mult == 3.0 and errors == []
    assert norm[0] == 0.0 and norm[2] == 1.0 and 0 < norm[1] < 1
    assert totals == [n * 3.0 for n in norm]


class Exploding(Filter):
    name = "exploding"

    def check(self, host, req, ctx, state):
        if host.name == "a":
            raise RuntimeError("bad plugin")
        return None


class BrokenWeigher(Weigher):
    name = "broken"

    def raw(self, host, req, ctx, state):
        raise ValueError("nope")


def test_a_failing_filter_is_reported_apart_and_rejects_only_its_host(build):
    state = ClusterState(build.cluster([build.host("a"), build.host("b")]), PolicyConfig())
    p = Pipeline(DEFAULT_FILTERS + (Exploding(),), DEFAULT_WEIGHERS + (BrokenWeigher(),))
    choice = p.select(state.req(build.vm("x")), state)
    assert choice.host == "b"
    assert any("filter exploding failed on a: RuntimeError: bad plugin" in e for e in choice.errors)
    assert any("weigher broken failed" in e for e in choice.errors)
    verdicts = p.explain_hosts(state.req(build.vm("x")), state)
    assert verdicts[0].failed and verdicts[0].rejected_by == "exploding"


def test_unplaceable_reasons_count_hosts_per_filter(build):
    hosts = [build.host("a", 4, 8192), build.host("b", 4, 8192), build.host("c", state="fenced")]
    state = ClusterState(build.cluster(hosts), PolicyConfig(cpu_overcommit=1))
    choice = Pipeline().select(state.req(build.vm("x", 8, 1024)), state)
    assert choice.host is None
    assert choice.reasons[0].startswith("capacity: 2 host(s), e.g. a: needs 8 vcpus")
    assert choice.reasons[1].startswith("state: 1 host(s), e.g. c: host is fenced")


def test_filters_and_weighers_do_not_mutate_the_state(build):
    hosts = [build.host("a"), build.host("b")]
    state = ClusterState(build.cluster(hosts, [build.vm("t", host="a", numa="strict")]),
                         PolicyConfig())
    snapshot = [(h.shared_vcpus, h.memory_alloc, h.cpu_load, h.mem_load, sorted(h.vms),
                 [(c.shared_vcpus, c.memory_used) for c in h.cells]) for h in state.hosts]
    req = state.req(build.vm("x", numa="strict"))
    Pipeline().select(req, state)
    Pipeline().explain_hosts(req, state)
    assert snapshot == [(h.shared_vcpus, h.memory_alloc, h.cpu_load, h.mem_load, sorted(h.vms),
                         [(c.shared_vcpus, c.memory_used) for c in h.cells]) for h in state.hosts]
