"""Domain specs from etcd pass an allowlist before the agent defines them."""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent.agent.domain_policy import SpecRejected, check_domain
from haagent.lab.layout import domain_xml

IMAGES = ("/srv/images",)
DATA = Path(__file__).resolve().parents[1] / "hypervisor" / "data"
LIVE = Path(__file__).resolve().parent / "data" / "domain-live-libvirt9.xml"


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


def test_what_libvirt_itself_writes_for_a_running_vm_passes():
    """A registered spec is libvirt's own XML: its pty paths, DAC label and cgroup partition pass."""
    check_domain(LIVE.read_text(), IMAGES)
    check_domain(dom("<interface type='network'><source network='default'/>"
                     "<backend tap='/dev/net/tun' vhost='/dev/vhost-net'/></interface>",
                     "<blkiotune><device><path>/dev/sda</path><weight>500</weight></device></blkiotune>"
                     "<seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+994</label></seclabel>"
                     "<os><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
                     "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/v_VARS.fd</nvram>"
                     "</os>"), IMAGES)


def meta(inner: str) -> str:
    return dom().replace("</metadata>", inner + "</metadata>")


@pytest.mark.parametrize("xml,rule", [
    # <metadata>: hooks and other tools on the host read it; only known namespaces
    (meta("<x:hook xmlns:x='https://example.com/hook'/>"), "namespace"),
    (meta("<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'/>"), "namespace"),
    (dom().replace("<devices>", "<devices x:a='1' xmlns:x='https://example.com/x'>"), "namespace"),
    # libvirt reads every <devices>, not only the first
    (dom().replace("</devices>", "</devices><devices><hostdev mode='subsystem' type='pci'/></devices>"),
     "host-device"),
    # security labels: none, static (a label of the spec's choosing: DAC +0:+0 is root), relabel=no
    (dom(extra="<seclabel type='none'/>"), "seclabel"),
    (dom(extra="<seclabel type='static' model='dac' relabel='yes'><label>+0:+0</label></seclabel>"), "seclabel"),
    (dom(extra="<seclabel type='dynamic' model='selinux'><baselabel>system_u:system_r:unconfined_t:s0"
               "</baselabel></seclabel>"), "seclabel"),
    (dom("<disk type='file'><source file='/srv/images/a.qcow2'><seclabel model='dac' relabel='no'/>"
         "</source></disk>"), "seclabel"),
    # firmware: a template is copied into NVRAM the guest reads; the newer <source> form too
    (dom(extra="<os><nvram template='/etc/shadow'>/var/lib/libvirt/qemu/nvram/v.fd</nvram></os>"), "os-path"),
    (dom(extra="<os><nvram type='file'><source file='/etc/shadow'/></nvram></os>"), "os-path"),
    (dom(extra="<os><nvram type='network'><source protocol='iscsi' name='x'/></nvram></os>"), "os-path"),
    # the backstop: host paths in elements no rule names
    (dom(extra="<os><acpi><table type='slic'>/etc/shadow</table></acpi></os>"), "path"),
    (dom("<memory model='nvdimm'><source><path>/dev/sda</path></source><target><size unit='KiB'>1024"
         "</size></target></memory>"), "path"),
    (dom("<audio id='1' type='file' path='/etc/cron.d/x'/>"), "path"),
    (dom("<graphics type='egl-headless'><gl rendernode='/dev/dri/renderD128'/></graphics>"), "path"),
    (dom("<interface type='network'><source network='default'/><backend tap='/dev/sda'/></interface>"), "path"),
    (dom("<serial type='pty'><source path='/etc/shadow'/></serial>"), "path"),
    (dom("<disk type='file'><source file='/srv/images/a.qcow2'/><driver name='qemu'/>"
         "<source file='/etc/passwd'/></disk>"), "path"),
])
def test_more_that_would_give_etcd_writers_the_host_is_refused(xml, rule):
    with pytest.raises(SpecRejected) as err:
        check_domain(xml, IMAGES)
    assert err.value.rule == rule, str(err.value)


def test_metadata_namespaces_come_from_the_config():
    osinfo = dom()  # carries libosinfo, which virt-install writes into every domain
    check_domain(osinfo, IMAGES)
    with pytest.raises(SpecRejected, match="only haagent's marks and agent.metadata_namespaces"):
        check_domain(osinfo, IMAGES, metadata_namespaces=())
    check_domain(meta("<x:hook xmlns:x='https://example.com/hook'/>"), IMAGES,
                 metadata_namespaces=("http://libosinfo.org/xmlns/libvirt/domain/1.0", "https://example.com/hook"))


def test_a_rejected_spec_is_not_defined_logged_once_counted_once_and_the_shell_goes_on():
    from haagent import metrics
    from haagent.agent import core
    from haagent.agent.vms import VmShell
    from haagent.hypervisor.fake import FakeHypervisor
    from haagent.state.view import VmSpec
    from haagent.store.keys import Keys

    hv = FakeHypervisor("fake://h1")
    shell = VmShell("h1", hv, store=None, keys=Keys("c"), lease=None, cache=None, config=core.AgentConfig(),
                    disks=(IMAGES, (), ()))
    uuid = "00000000-0000-0000-0000-0000000000aa"
    bad = VmSpec(uuid, "v", 1, 64, None, "restart", dom("<hostdev mode='subsystem' type='pci'/>"))
    counter = metrics.VM_SPECS_REJECTED.labels(rule="host-device")
    before = counter._value.get()
    for _ in range(3):  # the core asks every round while the VM is placed here
        shell.execute(core.StartVm(uuid, "placed here"), {uuid: bad})
    assert counter._value.get() == before + 1
    assert hv.list_vms() == []
    good = VmSpec(uuid, "v", 1, 64, None, "restart", dom().replace("<name>v</name>", f"<name>v</name><uuid>{uuid}</uuid>"))
    shell.execute(core.StartVm(uuid, "placed here"), {uuid: good})  # a fixed spec is checked anew
    assert [v.uuid for v in hv.list_vms()] == [uuid]
