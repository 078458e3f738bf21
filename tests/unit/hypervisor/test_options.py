"""MigrationOptions map 1:1 to virsh migrate flags and to libvirt's constants."""

from __future__ import annotations

import dataclasses

import pytest

from haagent.errors import InvalidDomain
from haagent.hypervisor.options import BOOL_FLAGS, VALUE_PARAMS, MigrationOptions


def test_default_is_live_p2p_persist_dest_undefine_source():
    o = MigrationOptions()
    assert o.flag_names() == ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER",
                              "VIR_MIGRATE_PERSIST_DEST", "VIR_MIGRATE_UNDEFINE_SOURCE"]
    assert o.to_virsh_args("vm1", "qemu+tcp://h2/system") == [
        "virsh", "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
        "vm1", "qemu+tcp://h2/system"]
    assert o.param_values() == {}


def test_every_field_has_exactly_one_virsh_spelling():
    names = {f.name for f in dataclasses.fields(MigrationOptions)}
    mapped = set(BOOL_FLAGS) | set(VALUE_PARAMS) | {"max_downtime_ms", "postcopy_after_precopy"}
    assert names == mapped
    virsh = [v[0] for v in BOOL_FLAGS.values()] + [v[0] for v in VALUE_PARAMS.values()]
    assert len(virsh) == len(set(virsh))


def test_every_libvirt_name_exists_in_the_binding():
    libvirt = pytest.importorskip("libvirt")
    for _, const in [*BOOL_FLAGS.values(), *VALUE_PARAMS.values()]:
        assert hasattr(libvirt, const), const


def test_values_and_switches():
    o = MigrationOptions(auto_converge=True, postcopy=True, postcopy_after_precopy=True,
                         compressed=True, unsafe=True, bandwidth=100, max_downtime_ms=50,
                         migrateuri="tcp://10.1.0.2", comp_methods=("xbzrle", "mt"))
    assert {"VIR_MIGRATE_AUTO_CONVERGE", "VIR_MIGRATE_POSTCOPY", "VIR_MIGRATE_COMPRESSED",
            "VIR_MIGRATE_UNSAFE"} <= set(o.flag_names())
    assert o.param_values() == {"VIR_MIGRATE_PARAM_BANDWIDTH": 100,
                                "VIR_MIGRATE_PARAM_URI": "tcp://10.1.0.2",
                                "VIR_MIGRATE_PARAM_COMPRESSION": ["xbzrle", "mt"]}
    args = o.to_virsh_args()
    for flag in ("--auto-converge", "--postcopy", "--postcopy-after-precopy", "--compressed", "--unsafe"):
        assert flag in args
    assert args[args.index("--bandwidth") + 1] == "100"
    assert args[args.index("--migrateuri") + 1] == "tcp://10.1.0.2"
    assert args[args.index("--comp-methods") + 1] == "xbzrle,mt"


@pytest.mark.parametrize("kw,match", [
    ({"postcopy_after_precopy": True}, "needs postcopy"),
    ({"copy_storage_all": True, "copy_storage_inc": True}, "exclude"),
    ({"tunnelled": True, "p2p": False}, "tunnelled needs p2p"),
    ({"offline": True}, "offline and live"),
    ({"bandwidth": 0}, "bandwidth"),
    ({"max_downtime_ms": -5}, "max_downtime_ms"),
])
def test_invalid_combinations(kw, match):
    with pytest.raises(InvalidDomain, match=match):
        MigrationOptions(**kw)
