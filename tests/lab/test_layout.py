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
    assert cfg.cluster == "lab1" and cfg.host == "h2" and cfg.libvirt_uri == "qemu:///system"
    assert cfg.metrics_listen == "10.99.0.12:9464"
    (dev,), = cfg.fencing.levels_for("h3")
    assert dev.plugin == "ipmi" and dev.options["address"] == "10.98.0.103"
    assert "secret" not in text


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
