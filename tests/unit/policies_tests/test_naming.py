"""The naming convention and its two implicit rules."""

from __future__ import annotations

from policies.config import DEFAULT_ENV_PRIORITY, NamingPolicy, PolicyConfig
from policies.naming import ServiceName, parse_name
from policies.state import ClusterState


def test_parse_splits_a_service_with_dashes():
    assert parse_name("acme-prod-api-gateway-2", DEFAULT_ENV_PRIORITY) == \
        ServiceName("acme", "prod", "api-gateway", 2)


def test_names_off_the_convention_get_nothing():
    for name in ("build-box-7", "acme-prod-api", "acme-qa-api-1", "web01", "acme-prod-api-x"):
        assert parse_name(name, DEFAULT_ENV_PRIORITY) is None, name


def test_priority_by_environment_and_explicit_priority_wins(build):
    vms = [build.vm(n) for n in ("acme-dev-a-1", "acme-prod-a-1", "acme-staging-a-1",
                                 "acme-test-a-1", "other")] + [build.vm("acme-dev-b-1", priority=999)]
    state = ClusterState(build.cluster([build.host("h")], vms), PolicyConfig())
    order = [r.name for r in sorted((state.reqs[v.name] for v in vms), key=lambda r: r.order_key())]
    assert order == ["acme-dev-b-1", "acme-prod-a-1", "acme-staging-a-1", "acme-test-a-1",
                     "acme-dev-a-1", "other"]


def test_overrides_disable_or_change_the_rules(build):
    vms = [build.vm("acme-prod-a-1"), build.vm("acme-qa-a-1")]
    off = ClusterState(build.cluster([build.host("h")], vms),
                       PolicyConfig(naming=NamingPolicy(enabled=False)))
    assert off.reqs["acme-prod-a-1"].priority == 0 and not off.reqs["acme-prod-a-1"].soft_groups
    custom = ClusterState(build.cluster([build.host("h")], vms),
                          PolicyConfig(naming=NamingPolicy(service_anti_affinity="off",
                                                           priority={"qa": 50})))
    assert custom.reqs["acme-qa-a-1"].priority == 50 and not custom.reqs["acme-qa-a-1"].soft_groups
    assert custom.reqs["acme-prod-a-1"].priority == 0  # prod is not in the replaced table
