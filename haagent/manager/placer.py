"""The production placer: the leader's failover placement through the ``policies`` engine.

Kept apart from ``manager.core`` so the pure step depends only on the ``Placer`` signature; the
simulator and the daemon both pass this one in.
"""

from __future__ import annotations

from typing import Sequence

from haagent.manager.core import Placer
from haagent.state.view import ClusterView, VmSpec


def policy_placer(config: object = None) -> Placer:
    """The production placer: ``policies.place`` over active hosts, by priority then size.

    VMs go to the engine under their libvirt names, so the naming convention
    (``{company}-{env}-{service}-{instance}``: priority by environment, soft anti-affinity between
    a service's instances) applies; a name used by two VMs falls back to the uuid.
    """
    from policies import Cluster, Host, Vm, place
    from policies.config import PolicyConfig

    cfg = config if isinstance(config, PolicyConfig) else PolicyConfig()

    def placer(todo: Sequence[VmSpec], view: ClusterView, avoid: frozenset[str]):
        counts: dict[str, int] = {}
        for spec in view.specs.values():
            counts[spec.name] = counts.get(spec.name, 0) + 1
        label = {u: (s.name if counts[s.name] == 1 else u) for u, s in view.specs.items()}
        back = {name: u for u, name in label.items()}
        hosts = tuple(Host(name=h, cpus=max(hv.cpus, 1), memory_mib=max(hv.memory_mib, 1),
                           state="active" if h not in avoid and hv.alive else "failed")
                      for h, hv in sorted(view.hosts.items()))
        names = {h.name for h in hosts}
        moving = {t.uuid for t in todo}
        placed_vms = tuple(Vm(name=label[u], vcpus=view.specs[u].vcpus, memory_mib=view.specs[u].memory_mib,
                              host=h, priority=view.specs[u].priority, groups=view.specs[u].groups)
                           for u, h in sorted(view.placements.items())
                           if u in view.specs and h in names and u not in moving)
        result = place([Vm(name=label[s.uuid], vcpus=s.vcpus, memory_mib=s.memory_mib,
                           priority=s.priority, groups=s.groups) for s in todo],
                       Cluster(hosts=hosts, vms=placed_vms), cfg)
        return ({back[p.vm]: p.host for p in result.placements},
                {back[u.vm]: tuple(u.reasons) for u in result.unplaceable})

    return placer
