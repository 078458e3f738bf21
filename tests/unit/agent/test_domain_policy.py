"""Domain specs from etcd pass an allowlist before the agent defines them."""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent.agent.domain_policy import SpecRejected, check_domain
from haagent.lab.layout import domain_xml

IMAGES = ("/srv/images",)
DATA = Path(__file__).resolve().parents[1] / "hypervisor" / "data"


def dom(devices: str = "", extra: str = "", root: str = "<domain type='kvm'>") -> str:
    return (f"{root}<name>v</name><memory unit='MiB'>64</memory>"
            "<metadata><ha:vm xmlns:ha='https://haagent.dev/xmlns/ha/1' policy='restart'/>"
            "<libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'/></metadata>"
            f"<os><type>hvm</type></os>{extra}<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"{devices}</devices></domain>")


def test_what_haagent_itself_defines_passes():
    check_domain(dom(), IMAGES)
    check_domain(domain_xml("vm1", "00000000-0000-0000-0000-000000000001", "lab", True, None), IMAGES)
    check_domain(domain_xml("vm1", "00000000-0000-0000-0000-000000000001", "lab", False,
                            "/srv/images/vm1.qcow2"), IMAGES)
    check_domain((DATA / "domain-numa-pinned.xml").read_text(), ("/srv/shared/images", "/var/lib/libvirt/images"),
                 ("/dev/mapper",), ("rbd",))
    check_domain(dom("<disk type='file' device='disk'><source file='/srv/images/a.qcow2'/>"
                     "<backingStore type='file'><source file='/srv/images/base.qcow2'/></backingStore></disk>"
                     "<interface type='bridge'><source bridge='br0'/></interface>"
                     "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>"
                     "<serial type='pty'/><console type='pty'/>"
                     "<channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/x'/></channel>"
                     "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
                     "<os><loader readonly='yes'>/usr/share/OVMF/OVMF_CODE.fd</loader></os>"), IMAGES)


@pytest.mark.parametrize("xml,rule", [
    (dom(extra="<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
               "<qemu:arg value='-runas'/></qemu:commandline>"), "namespace"),
    (dom().replace("/usr/bin/qemu-system-x86_64", "/tmp/evil"), "emulator"),
    (dom("<hostdev mode='subsystem' type='pci'/>"), "host-device"),
    (dom("<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>"), "host-device"),
    (dom("<disk type='block' device='disk'><source dev='/dev/sda'/></disk>"), "disk"),
    (dom("<disk type='network'><source protocol='rbd' name='pool/img'/></disk>"), "disk"),
    (dom("<disk type='file'><source file='/etc/shadow'/></disk>"), "path"),
    (dom("<disk type='file'><source file='/srv/images/../../etc/shadow'/></disk>"), "path"),
    (dom("<interface type='ethernet'><script path='/bin/sh'/></interface>"), "interface"),
    (dom("<serial type='dev'><source path='/dev/ttyS0'/></serial>"), "char-device"),
    (dom("<serial type='file'><source path='/etc/cron.d/x'/></serial>"), "path"),
    (dom("<tpm><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>"), "host-device"),
    (dom("<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>"), "host-device"),
    (dom(extra="<os><kernel>/boot/vmlinuz</kernel></os>"), "os-path"),
    (dom(root="<domain type='xen'>"), "domain-type"),
    ("<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/shadow'>]><domain type='kvm'>&x;</domain>", "doctype"),
    ("<domain type='kvm'", "xml"),
])
def test_what_would_give_etcd_writers_the_host_is_refused(xml, rule):
    with pytest.raises(SpecRejected) as err:
        check_domain(xml, IMAGES)
    assert err.value.rule == rule, str(err.value)


def test_shared_block_and_network_storage_only_where_the_config_allows_it():
    block = dom("<disk type='block' device='disk'><source dev='/dev/mapper/mpatha'/></disk>")
    rbd = dom("<disk type='network' device='disk'><source protocol='rbd' name='pool/img'/></disk>")
    for xml in (block, rbd):
        with pytest.raises(SpecRejected):
            check_domain(xml, IMAGES)  # the default: files only
    check_domain(block, IMAGES, ("/dev/mapper",))
    check_domain(rbd, IMAGES, (), ("rbd",))
    with pytest.raises(SpecRejected):
        check_domain(dom("<disk type='block'><source dev='/dev/sda'/></disk>"), IMAGES, ("/dev/mapper",))
    with pytest.raises(SpecRejected):
        check_domain(dom("<disk type='network'><source protocol='http' name='x'/></disk>"), IMAGES, (), ("rbd",))
