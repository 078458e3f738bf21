"""The port's own rules: the CPU migration compatibility key."""

from __future__ import annotations

from haagent.hypervisor.port import HostInfo, cpu_migration_key


def test_migration_key_is_stable_short_and_ignores_feature_order() -> None:
    key = cpu_migration_key("x86_64", "Intel", "Broadwell", ("avx2", "vmx", "avx2"))
    assert key == cpu_migration_key("x86_64", "Intel", "Broadwell", ["vmx", "avx2"])
    assert key.startswith("x86_64:Intel:Broadwell:") and len(key.rsplit(":", 1)[1]) == 8
    # Pinned: hosts running different haagent versions must still compute equal keys.
    assert key == "x86_64:Intel:Broadwell:" + __import__("hashlib").sha256(b"avx2,vmx").hexdigest()[:8]


def test_migration_key_changes_with_model_vendor_arch_or_any_feature() -> None:
    base = ("x86_64", "Intel", "Broadwell", ("avx2", "vmx"))
    key = cpu_migration_key(*base)
    for other in (("aarch64",) + base[1:], base[:1] + ("AMD",) + base[2:],
                  base[:2] + ("Skylake-Server",) + base[3:], base[:3] + (("avx2",),),
                  base[:3] + (("avx2", "vmx", "avx512f"),)):
        assert cpu_migration_key(*other) != key, other


def test_host_info_computes_its_key_unless_given() -> None:
    info = HostInfo(hostname="h", uuid="u", arch="x86_64", cpu_model="EPYC", cpu_vendor="AMD",
                    cpu_features=("svm",), sockets=1, cores_per_socket=2, threads_per_core=1,
                    cpus=2, memory_mib=1024, numa=())
    assert info.migration_key == cpu_migration_key("x86_64", "AMD", "EPYC", ("svm",))
    assert HostInfo(**{**info.__dict__, "migration_key": "pinned"}).migration_key == "pinned"
