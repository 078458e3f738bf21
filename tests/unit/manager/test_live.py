"""The live cluster (manager/live.py) and the failover placer on it: what the hosts really have."""

from __future__ import annotations

import json
from dataclasses import replace

from haagent.manager.live import LiveMemo, live_cluster
from haagent.manager.placer import policy_placer
from haagent.model import HostCell, HostState as S
from haagent.state.codec import build_view
from haagent.state.view import ClusterView, HostView, VmNeeds, VmSpec
from haagent.store.keys import Keys
from policies.config import PolicyConfig


def cells(*free: int, cpus: int = 2, total: int = 8192) -> tuple[HostCell, ...]:
    return tuple(HostCell(i, tuple(range(i * cpus, (i + 1) * cpus)), total, f) for i, f in enumerate(free))


def host(name: str, *free: int, state=S.ACTIVE, alive=True, **kw) -> HostView:
    return HostView(name, alive, state, 4, 16384, numa=cells(*free) if free else (), **kw)


def view(hosts, specs=(), placements=None) -> ClusterView:
    return ClusterView(1, {h.name: h for h in hosts}, {s.uuid: s for s in specs}, placements or {})


STRICT = VmNeeds(numa="strict")


def test_a_strict_numa_vm_goes_only_where_one_cell_holds_it():
    # h1 has the most free memory in total, but split over two cells; h2 has one cell that fits.
    v = view([host("h1", 3000, 3000), host("h2", 5000, 500), host("h3", state=S.FENCED)],
             [VmSpec("u1", "big", 2, 4096, needs=STRICT)])
    placed, missed = policy_placer()(list(v.specs.values()), v, frozenset())
    assert placed == {"u1": "h2"} and not missed


def test_a_strict_vm_that_no_cell_holds_is_placed_nowhere_with_the_reason():
    v = view([host("h1", 3000, 3000)], [VmSpec("u1", "big", 2, 4096, needs=STRICT)])
    placed, missed = policy_placer()(list(v.specs.values()), v, frozenset())
    assert not placed and "numa" in " ".join(missed["u1"])


def test_a_nodeset_binds_the_vm_to_those_cells():
    need = VmNeeds(numa="strict", nodeset=(0,))
    v = view([host("h1", 500, 8000), host("h2", 4000, 100)], [VmSpec("u1", "vm", 1, 2048, needs=need)])
    placed, _ = policy_placer()(list(v.specs.values()), v, frozenset())
    assert placed == {"u1": "h2"}  # h1's cell 1 would hold it, but its XML binds cell 0


def test_what_the_xml_cannot_express_is_placed_nowhere_and_says_why():
    need = VmNeeds(unplaceable="<numatune> memory mode 'bogus' is not understood")
    v = view([host("h1", 8000)], [VmSpec("u1", "vm", 1, 512, needs=need)])
    placed, missed = policy_placer()(list(v.specs.values()), v, frozenset())
    assert not placed and any("bogus" in r for r in missed["u1"])


def test_the_least_loaded_host_takes_the_vm():
    v = view([host("h1", 8000, cpu_used=3.6, memory_used_mib=2000),
              host("h2", 8000, cpu_used=0.2, memory_used_mib=2000)],
             [VmSpec("u1", "vm", 1, 512)])
    placed, _ = policy_placer()(list(v.specs.values()), v, frozenset())
    assert placed == {"u1": "h2"}


def test_states_are_passed_as_they_are_and_a_host_without_a_lease_is_suspect():
    v = view([host("h1", state=S.MAINTENANCE), host("h2", state=S.DRAINING), host("h3", alive=False),
              host("h4"), host("h5")])
    states = {h.name: h.state for h in live_cluster(v, avoid=["h5"]).cluster.hosts}
    assert states == {"h1": "maintenance", "h2": "draining", "h3": "suspect", "h4": "active", "h5": "failed"}


def test_free_capacity_is_the_cells_and_running_vms_count_once_at_host_level():
    hv = HostView("h1", True, S.ACTIVE, 4, 16384, frozenset({"u1"}),
                  numa=(HostCell(0, (0, 1), 8192, 6000, {2048: (512, 100)}),), tags=frozenset({"ssd"}),
                  cpu_key="x86_64/AMD/EPYC/abc", cpu_used=1.5, memory_used_mib=4000.0, vm_cpu={"u1": 0.7})
    live = live_cluster(view([hv], [VmSpec("u1", "vm", 2, 2048, groups=("db",))], {"u1": "h1"}),
                        PolicyConfig(groups={"db": ("affinity", True)}))
    h = live.cluster.hosts[0]
    assert (h.tags, h.cpu_family, h.cpu_used, h.memory_used_mib) == (frozenset({"ssd"}), "x86_64/AMD/EPYC/abc", 1.5, 4000.0)
    c = h.numa[0]
    assert (c.memory_mib, c.memory_used_mib, dict(c.hugepages), dict(c.hugepages_used)) == \
        (8192, 8192 - 6000 - 1024, {2048: 512}, {2048: 412})
    vm = live.cluster.vms[0]
    assert (vm.host, vm.numa_cells, vm.cpu_load) == ("h1", (), 0.7)
    assert [(g.name, g.policy, g.hard) for g in live.cluster.groups] == [("db", "affinity", True)]
    undeclared = live_cluster(view([hv], [VmSpec("u1", "vm", 2, 2048, groups=("web",))], {"u1": "h1"}))
    assert [(g.policy, g.hard) for g in undeclared.cluster.groups] == [("anti-affinity", False)]


def test_a_host_whose_inventory_cannot_be_read_is_placed_on_by_cpu_and_memory_only():
    hv = host("h1", 100, inventory_error="host capabilities: libvirt is down")
    live = live_cluster(view([hv]))
    assert live.cluster.hosts[0].numa == () and "libvirt is down" in live.warnings[0]
    assert "libvirt is down" in live.cluster.hosts[0].inventory_unknown
    strict = view([hv, host("h2", 8000)], [VmSpec("u1", "vm", 1, 512, needs=STRICT), VmSpec("u2", "plain", 1, 512)])
    placed, _ = policy_placer()(list(strict.specs.values()), strict, frozenset())
    assert placed["u1"] == "h2"  # not where its cells are unknown


KEYS = Keys("c1")


class KV:
    def __init__(self, value, rev=5):
        self.value, self.lease, self.mod_revision, self.create_revision = value.encode(), 0, rev, rev


def test_a_report_decodes_to_the_inventory_and_a_bad_inventory_costs_only_itself():
    report = {"cpus": 4, "memory_mib": 8192, "running_vms": ["u1"], "tags": ["ssd"],
              "cpu": {"model": "EPYC", "key": "k1"},
              "numa": [{"id": 0, "cpus": [0, 1], "memory_mib": 4096, "free_mib": 3000,
                        "hugepages": {"2048": [10, 4]}}],
              "load": {"cpu": 1.25, "memory_used_mib": 2000, "vms": {"u1": 0.5}}}
    h = build_view({KEYS.host_report("h1"): KV(json.dumps(report))}, KEYS, 1).hosts["h1"]
    assert h.numa == (HostCell(0, (0, 1), 4096, 3000, {2048: (10, 4)}),)
    assert (h.tags, h.cpu_key, h.cpu_model, h.cpu_used, h.memory_used_mib, dict(h.vm_cpu)) == \
        (frozenset({"ssd"}), "k1", "EPYC", 1.25, 2000.0, {"u1": 0.5})
    bad = dict(report, numa=[{"id": 0, "cpus": "0-1", "memory_mib": 4096}])
    v = build_view({KEYS.host_report("h1"): KV(json.dumps(bad))}, KEYS, 1)
    assert v.hosts["h1"].running == frozenset({"u1"})  # the VM list still stands
    assert v.hosts["h1"].inventory_error.startswith("bad inventory in report: numa.cpus")
    assert v.bad_records and v.bad_records[0][0] == KEYS.host_report("h1")
    legacy = dict(report, load=0.7)  # older agents wrote the load average
    assert build_view({KEYS.host_report("h1"): KV(json.dumps(legacy))}, KEYS, 1).hosts["h1"].cpu_used is None


def test_a_custom_cpu_model_goes_only_where_it_is_usable_and_pins_need_the_cpus():
    need = VmNeeds(cpu_mode="custom", cpu_model="EPYC-Rome")
    v = view([host("h1", 8000, cpu_models=frozenset({"qemu64"})), host("h2", 8000, cpu_models=frozenset({"EPYC-Rome"})),
              host("h3", 8000)],  # h3 does not say: not held against it
             [VmSpec("u1", "vm", 1, 512, needs=need)])
    live = live_cluster(v)
    from policies import explain
    verdicts = {x.host: x for x in explain("vm", live.cluster).hosts}
    assert verdicts["h1"].rejected_by == "requirements" and "EPYC-Rome is not usable" in verdicts["h1"].reason
    assert not verdicts["h2"].rejected_by and not verdicts["h3"].rejected_by
    pinned = view([host("h1", 8000)], [VmSpec("u1", "vm", 2, 512, needs=VmNeeds(dedicated_cpus=2, max_pinned_cpu=7))])
    placed, missed = policy_placer()(list(pinned.specs.values()), pinned, frozenset())
    assert not placed and "has 4 cpus; the VM pins cpu 7" in " ".join(missed["u1"])


def test_a_report_older_than_the_hosts_current_lease_lists_no_running_vms():
    """After a crash and return, the old report (not on the lease) is from the host's previous
    life: it must not make the leader see a second copy, or follow a 'migration' to it."""
    report = json.dumps({"cpus": 4, "memory_mib": 8192, "running_vms": ["u1"]})
    kvs = {KEYS.host_report("h1"): KV(report, rev=5), KEYS.host_alive("h1"): KV("{}", rev=9),
           KEYS.host_lease("h1"): KV("{}", rev=9)}
    assert build_view(kvs, KEYS, 1).hosts["h1"].running == frozenset()
    kvs[KEYS.host_report("h1")] = KV(report, rev=10)  # republished in this life
    assert build_view(kvs, KEYS, 1).hosts["h1"].running == frozenset({"u1"})
    del kvs[KEYS.host_alive("h1")]  # no lease: the last report stands (the host may still run them)
    assert build_view(kvs, KEYS, 1).hosts["h1"].running == frozenset({"u1"})


def test_the_memo_gives_the_same_cluster_and_follows_a_host_whose_view_changed():
    from dataclasses import replace

    h1 = host("h1", 8000, vm_cpu={"u1": 0.5})
    specs = [VmSpec("u1", "a", 1, 512), VmSpec("u2", "b", 1, 512)]
    v = view([h1, host("h2", 8000)], specs, {"u1": "h1", "u2": "h2"})
    memo = LiveMemo()
    first = live_cluster(v, memo=memo)
    assert first == live_cluster(v) and live_cluster(v, memo=memo) == first
    assert live_cluster(v, memo=memo).cluster.vms[1] is first.cluster.vms[1]  # reused as it was
    busier = replace(v, hosts={**v.hosts, "h1": replace(h1, vm_cpu={"u1": 1.5})})
    again = live_cluster(busier, memo=memo)
    assert again == live_cluster(busier) and again.cluster.vms[0].cpu_load == 1.5
    unplaced = live_cluster(busier, memo=memo, unplaced=["u2"])
    assert unplaced == live_cluster(busier, unplaced=["u2"]) and unplaced.cluster.vms[1].host is None
    other = replace(busier, specs={**busier.specs, "u3": VmSpec("u3", "a", 1, 512, groups=("g",))},
                    hosts={**busier.hosts, "h2": replace(busier.hosts["h2"], state=S.FENCED)})
    assert live_cluster(other, memo=memo, avoid=["h1"]) == live_cluster(other, avoid=["h1"])  # names, groups


def test_a_vm_placed_on_a_host_that_does_not_run_it_yet_binds_its_cells():
    """A VM arriving by live migration (or placed and not started) is not in the host's free
    figures yet: it takes cell capacity, so a strict VM placed meanwhile does not overfill the cell
    (the simulator caught a drain sending two strict VMs to one cell that held one)."""
    arriving = VmSpec("u1", "arriving", 1, 1024, needs=VmNeeds(numa="strict", nodeset=(0,)))
    strict = VmSpec("u2", "strict", 1, 1024, needs=VmNeeds(numa="strict", nodeset=(0,)))
    h1 = HostView("h1", True, S.ACTIVE, 4, 4096, numa=(HostCell(0, (0, 1), 1024, 1024),
                                                         HostCell(1, (2, 3), 3072, 3072)))
    h2 = HostView("h2", True, S.ACTIVE, 4, 8192, numa=(HostCell(0, (0, 1), 4096, 4096),))
    v = view([h1, h2], [arriving, strict], {"u1": "h1"})
    assert live_cluster(v).cluster.vms[0].numa_cells == (0,)  # binds its cell, not "already counted"
    placed, _ = policy_placer()([strict], v, frozenset())
    assert placed == {"u2": "h2"}  # h1's cell 0 is taken by the VM on its way there
    running = view([replace(h1, running=frozenset({"u1"}), numa=(HostCell(0, (0, 1), 1024, 0),
                                                                 HostCell(1, (2, 3), 3072, 3072))), h2],
                   [arriving, strict], {"u1": "h1"})
    assert live_cluster(running).cluster.vms[0].numa_cells == ()  # running: in the free figures already


def test_a_vm_placed_but_not_running_does_not_hide_the_hosts_own_use():
    """The engine takes a host's reported use beyond its placed VMs as the host's own. A VM placed
    there that does not run (its start keeps failing) is not in that use: counted against it, it
    hid the 1 GiB a VM haagent does not manage uses, and a 3 GiB VM was placed on a full 4 GiB host
    (the simulator caught it once hosts could fail every start)."""
    waiting = VmSpec("u1", "waiting", 1, 1024)
    big = VmSpec("u2", "big", 1, 3072, needs=VmNeeds(numa="strict", nodeset=(0,)))
    h1 = HostView("h1", True, S.ACTIVE, 8, 4096, numa=(HostCell(0, tuple(range(8)), 4096, 3072),),
                  memory_used_mib=1024.0)  # the unmanaged VM's
    h2 = HostView("h2", True, S.ACTIVE, 8, 4096, numa=(HostCell(0, tuple(range(8)), 4096, 4096),),
                  memory_used_mib=0.0)
    v = view([h1, h2], [waiting, big], {"u1": "h1"})
    assert live_cluster(v, unplaced=["u2"]).cluster.hosts[0].memory_used_mib == 2048.0
    assert policy_placer()([big], v, frozenset()) == ({"u2": "h2"}, {})
    # once it runs, the report's use holds it: counted once
    running = view([replace(h1, running=frozenset({"u1"}), memory_used_mib=2048.0), h2], [waiting, big],
                   {"u1": "h1"})
    assert live_cluster(running, unplaced=["u2"]).cluster.hosts[0].memory_used_mib == 2048.0
