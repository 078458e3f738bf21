"""The lab's names, addresses and generated files (no root needed)."""

from __future__ import annotations

import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from haagent.config import parse_config, parse_endpoint
from haagent.lab import layout as L
from haagent.lab.lab import Lab


def test_prefix_validation() -> None:
    assert L.check_prefix("hal") == "hal"
    for bad in ("", "Hal", "1ab", "a-b", "toolongpre", "a b"):
        with pytest.raises(ValueError):
            L.check_prefix(bad)


def test_namespaces_of_one_prefix_never_match_another() -> None:
    hal = L.Layout("hal")
    assert hal.owns_netns("hal-h1") and hal.owns_netns("hal-br") and hal.owns_netns("hal-mgmt")
    assert not hal.owns_netns("hal2-h1") and not hal.owns_netns("ha-h1") and not hal.owns_netns("hal-x")


def test_vms_spread_round_robin() -> None:
    homes = L.spread(L.vm_names(7), L.host_names(3))
    assert [homes[f"vm{i}"] for i in range(1, 8)] == ["h1", "h2", "h3", "h1", "h2", "h3", "h1"]


def test_addresses_per_host() -> None:
    assert L.address("h1") == "10.99.0.11" and L.mgmt_address("h6") == "10.98.0.16"
    assert L.bmc_address("h2") == "10.98.0.102"
    assert L.Layout("a").host_uuid("h1") != L.Layout("b").host_uuid("h1")


def test_generated_agent_config_is_valid(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("secret\n")
    password.chmod(0o600)
    text = L.agent_toml("lab1", "h2", ["http://10.99.0.11:2379", "http://10.99.0.12:2379"],
                        L.fencing_toml(["h1", "h2", "h3"], str(password)), str(tmp_path / "shared"))
    cfg = parse_config(tomllib.loads(text))
    assert cfg.agent.image_dirs == (str(tmp_path / "shared"),)
    assert cfg.agent.shared_paths == (str(tmp_path / "shared"),)  # its --disk VMs live-migrate
    assert cfg.cluster == "lab1" and cfg.host == "h2" and cfg.libvirt_uri == "qemu:///system"
    assert cfg.metrics_listen == "10.99.0.12:9464"
    (dev,), = cfg.fencing.levels_for("h3")
    assert dev.plugin == "ipmi" and dev.options["address"] == "10.98.0.103"
    assert "secret" not in text


def test_extra_agent_config_reaches_the_agents_config(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("secret\n")
    password.chmod(0o600)
    extra = {"migration": {"max_outgoing": 4}, "policy": {"cpu_overcommit": 6}}
    text = L.agent_toml("lab1", "h2", ["http://10.99.0.11:2379"], L.fencing_toml(["h1", "h2"], str(password)),
                        str(tmp_path / "shared"), migration=L.migration_toml(["h1", "h2"], False, extra))
    cfg = parse_config(tomllib.loads(text))
    assert cfg.migration.max_outgoing == 4 and cfg.migration.target_uri("h1") == "qemu+tcp://10.99.0.11/system"
    assert cfg.policy is not None and cfg.policy.cpu_overcommit == 6
    with pytest.raises(Exception, match=r"writes \[agent\] itself"):
        Lab("lxc")._preflight(3, 0, False, "none", 64, 1, {}, agent_config={"agent": {"x": 1}})


def test_domain_xml() -> None:
    dom = ET.fromstring(L.domain_xml("vm1", "0b0c0d0e-0000-0000-0000-000000000001", "hal", False, None))
    assert dom.get("type") == "qemu" and dom.findtext("memory") == "64" and dom.find("devices/disk") is None
    from haagent.agent.managed import parse_mark
    assert parse_mark(L.domain_xml("vm1", "0b0c0d0e-0000-0000-0000-000000000001", "hal", False, None)) is not None
    assert parse_mark(L.domain_xml("vm1", "0b0c0d0e-0000-0000-0000-000000000001", "hal", False, None, ha=False)) is None
    kvm = ET.fromstring(L.domain_xml("vm1", "0b0c0d0e-0000-0000-0000-000000000001", "hal", True, "/s/vm1.qcow2"))
    assert kvm.get("type") == "kvm" and kvm.findtext("cpu/model") == "qemu64"
    assert kvm.find("cpu/feature").attrib == {"policy": "disable", "name": "svm"}
    assert kvm.find("devices/disk/source").get("file") == "/s/vm1.qcow2"
    assert dom.find("numatune") is None
    big = ET.fromstring(L.domain_xml("vm1", "0b0c0d0e-0000-0000-0000-000000000001", "hal", False, None,
                                     memory_mib=1024, numa_strict="1"))
    assert big.findtext("memory") == big.findtext("currentMemory") == "1024"
    assert big.find("numatune/memory").attrib == {"mode": "strict", "nodeset": "1"}


def test_root_namespace_endpoints_are_unix_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAAGENT_LAB_ROOT", str(tmp_path))
    lab = Lab("unit")
    lab.layout.dir.mkdir()
    lab.layout.state_file.write_text('{"hosts": ["h1", "h2"], "etcd_members": ["h1", "h2"]}')
    ep = parse_endpoint(lab.etcd_endpoint("h2"))
    assert ep.scheme == "unix" and ep.host == f"unix:{tmp_path}/unit/hosts/h2/etcd/localhost" and ep.port == 2379
    assert lab.libvirt_uri("h1") == f"qemu+unix:///system?socket={tmp_path}/unit/hosts/h1/run-libvirt/libvirt-sock"
    assert lab.migration_uri("h2") == "qemu+tcp://10.99.0.12/system"
    assert lab.etcd_lab_endpoints() == ["http://10.99.0.11:2379", "http://10.99.0.12:2379"]
    # the default lab (TLS): the same sockets with TLS, https inside the lab, a certificate per user
    lab.layout.state_file.write_text('{"hosts": ["h1", "h2"], "etcd_members": ["h1", "h2"], "tls": true}')
    assert parse_endpoint(lab.etcd_endpoint("h2")).scheme == "unixs"
    assert lab.etcd_lab_endpoints() == ["https://10.99.0.11:2379", "https://10.99.0.12:2379"]
    pki = tmp_path / "unit" / "pki"
    assert lab.etcd_tls("h1") == {"ca_cert": f"{pki}/ca.crt", "cert": f"{pki}/agent-h1.crt", "key": f"{pki}/agent-h1.key"}
    assert lab.etcd_tls()["cert"] == f"{pki}/root.crt"
    lab.layout.state_file.write_text('{"hosts": ["h1", "h2"], "etcd_members": ["h1"], "libvirt_tls": true}')
    assert lab.migration_uri("h2") == "qemu+tls://10.99.0.12/system?pkipath=/etc/libvirt/pki"


def test_default_numa_cells_differ_per_host_and_cell() -> None:
    cells = {h: L.default_cells(h) for h in L.host_names(L.MAX_HOSTS)}
    assert all(len(c) == 2 for c in cells.values())
    assert cells["h1"][0].free_mib < cells["h1"][1].free_mib
    assert cells["h2"][0].free_mib > cells["h2"][1].free_mib
    assert len({tuple(c.free_mib for c in cs) for cs in cells.values()}) == L.MAX_HOSTS
    assert all(c.free_pages <= c.hugepages for cs in cells.values() for c in cs)


def test_lab_cell_rejects_impossible_figures() -> None:
    for bad in (dict(free_mib=5000), dict(free_mib=-1), dict(free_mib=1, memory_mib=0),
                dict(free_mib=1, hugepages=4096), dict(free_mib=1, hugepages=8, hugepages_free=9)):
        with pytest.raises(ValueError, match="cell "):
            L.LabCell(**bad)  # type: ignore[arg-type]
    cell = L.LabCell(free_mib=100, hugepages_free=3)
    assert L.LabCell.from_json(cell.to_json()) == cell


def test_numa_option() -> None:
    host, cells = L.parse_numa_option("h2=512,6000:7")
    assert host == "h2" and [c.free_mib for c in cells] == [512, 6000]
    assert cells[1].memory_mib == 6000 and cells[1].free_pages == 7 and cells[0].free_pages == 64
    for bad in ("512,3584", "hx=1", "h1=", "h1=1,a", "h1=1:2:3", "h1=99999999", "h1=10:65"):
        with pytest.raises(ValueError, match="--numa"):
            L.parse_numa_option(bad)


def test_cpus_split_into_contiguous_cells() -> None:
    assert L.split_cpus([0, 1], 2) == [[0], [1]]
    assert L.split_cpus([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert L.split_cpus([0], 2) == [[0], []]


def test_numa_tree_is_what_libnuma_and_libvirt_read(tmp_path: Path) -> None:
    cells = (L.LabCell(free_mib=512, hugepages_free=8), L.LabCell(free_mib=3584, memory_mib=8192))
    files = L.numa_tree(cells, list(range(40)))
    assert files["online"] == files["possible"] == files["has_memory"] == "0-1\n"
    assert files["node0/cpulist"] == "0-19\n" and files["node1/cpulist"] == "20-39\n"
    # The kernel's bitmap: 32-bit words, most significant first, the top word only as wide as needed.
    assert files["node0/cpumap"] == "00,000fffff\n" and files["node1/cpumap"] == "ff,fff00000\n"
    assert files["node1/cpu39"] == "@/sys/devices/system/cpu/cpu39"
    assert files["node0/distance"] == "10 20\n"
    meminfo = dict(line.split()[2:4] for line in files["node1/meminfo"].splitlines())
    assert meminfo == {"MemTotal:": str(8192 * 1024), "MemFree:": str(3584 * 1024), "MemUsed:": str(4608 * 1024)}
    assert files["node0/hugepages/hugepages-2048kB/nr_hugepages"] == "64\n"
    assert files["node0/hugepages/hugepages-2048kB/free_hugepages"] == "8\n"
    assert files["node1/hugepages/hugepages-2048kB/free_hugepages"] == "64\n"

    root = tmp_path / "node"
    L.write_numa_tree(root, cells + (L.LabCell(free_mib=1),), [0, 1, 2])
    assert (root / "node2").is_dir() and (root / "node0" / "cpu0").is_symlink()
    L.write_numa_tree(root, (L.LabCell(free_mib=7),), [0, 1, 2])  # rewritten in place
    assert not (root / "node1").exists() and not (root / "node2").exists()
    assert (root / "online").read_text() == "0\n" and (root / "node0" / "cpulist").read_text() == "0-2\n"
    assert "MemFree:             7168 kB" in (root / "node0" / "meminfo").read_text()


def test_numa_tree_with_a_hole_in_the_node_ids() -> None:
    files = L.numa_tree((L.LabCell(free_mib=1), L.LabCell(free_mib=2)), [0, 1], node_ids=(0, 2))
    assert files["online"] == "0,2\n" and "node1/cpulist" not in files
    assert files["node2/cpulist"] == "1\n" and files["node2/distance"] == "20 10\n"
    for bad in ((1, 2), (0, 0), (2, 0), (0,)):
        with pytest.raises(ValueError, match="node ids"):
            L.numa_tree((L.LabCell(free_mib=1), L.LabCell(free_mib=2)), [0, 1], node_ids=bad)


def test_qemu_wrapper_binds_every_cell_to_node_0_and_passes_the_rest(tmp_path: Path) -> None:
    import subprocess
    echo = tmp_path / "qemu"
    echo.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    echo.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(L.qemu_wrapper(str(echo)))
    wrapper.chmod(0o755)
    args = ["-name", "guest=a b,debug-threads=on", "-object",
            '{"qom-type":"memory-backend-ram","id":"pc.ram","size":67108864,"host-nodes":[1,3],"policy":"bind"}',
            "-object", "memory-backend-ram,id=ram-node0,size=1,host-nodes=1-3,policy=bind", "", "*"]
    out = subprocess.run([str(wrapper), *args], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:-1] == [
        "-name", "guest=a b,debug-threads=on", "-object",
        '{"qom-type":"memory-backend-ram","id":"pc.ram","size":67108864,"host-nodes":[0],"policy":"bind"}',
        "-object", "memory-backend-ram,id=ram-node0,size=1,host-nodes=0,policy=bind", "", "*"]


def test_monitoring_configs_pass_prometheus_own_checks(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from haagent.lab.lab import RULES_FILE

    (tmp_path / "prometheus.yml").write_text(L.prometheus_yml("hal", L.host_names(3), str(RULES_FILE)))
    (tmp_path / "alertmanager.yml").write_text(L.alertmanager_yml("hal"))
    for tool, args in (("promtool", ["check", "config", "prometheus.yml"]),
                       ("amtool", ["check-config", "alertmanager.yml"])):
        exe = shutil.which(tool)
        assert exe, f"{tool} is missing: run scripts/install-system-deps.sh"
        res = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    text = (tmp_path / "prometheus.yml").read_text()
    # every agent's metrics endpoint is a target; the target label is not "host" (metrics have one)
    for h in L.host_names(3):
        assert f'"{L.address(h)}:{L.METRICS_PORT}"' in text and f'agent: "{h}"' in text
    assert "host:" not in text


def test_monitoring_lab_checks_fence_paths_often() -> None:
    fast = tomllib.loads(L.fencing_toml(["h1", "h2"], "/p", L.FENCE_CHECK_INTERVAL))
    assert fast["fencing"]["check_interval"] == L.FENCE_CHECK_INTERVAL
    assert "check_interval" not in tomllib.loads(L.fencing_toml(["h1", "h2"], "/p"))["fencing"]
