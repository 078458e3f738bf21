"""The lab end to end: 3 hosts, 6 VMs, migration, partition, crash, revive, and a clean down."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from haagent.lab.lab import Lab
from lab_helpers import eventually, lab_traces, netns_inodes

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def ipmi(lab: Lab, from_host: str, target: str, *command: str) -> str:
    """Run Debian's ipmitool inside a lab host against another host's BMC (password via env)."""
    env = dict(os.environ, IPMI_PASSWORD=lab.bmc_password_file.read_text().strip())
    res = lab.exec(from_host, ["ipmitool", "-I", "lanplus", "-C", "3", "-H", lab.bmc_address(target),
                               "-p", str(lab.bmc_port(target)), "-U", lab.bmc_user, "-E", "-N", "1", "-R", "3",
                               *command], env=env, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def put(lab: Lab, member: str, key: str, timeout: float = 1.0) -> None:
    client = lab.etcd_client(member, timeout=timeout)
    try:
        client.put(key, "x")
    finally:
        client.close()


def host_state(lab: Lab, member: str, host: str) -> str | None:
    """The leader's state for a host (hosts/<h>/state in etcd), read through a member's socket."""
    import json

    from haagent.store.keys import Keys
    client = lab.etcd_client(member, timeout=1.0)
    try:
        value, _ = client.get(Keys(lab.prefix).host_state(host))
    finally:
        client.close()
    return json.loads(value).get("state") if value else None


def where_running(lab: Lab) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {vm: [] for vm in lab.vms()}
    for h in lab.hosts():
        for vm in lab.running_vms(h) or []:
            where.setdefault(vm, []).append(h)
    return where


def test_every_vm_runs_exactly_once(lab3: Lab) -> None:
    assert len(lab3.vms()) == 6
    assert where_running(lab3) == {vm: [home] for vm, home in lab3.vms().items()}
    # The same, read by virsh inside each host (its own libvirtd through its own /run/libvirt).
    seen = []
    for h in lab3.hosts():
        out = lab3.exec(h, ["virsh", "list", "--name"], check=True).stdout.split()
        seen += out
        assert sorted(out) == sorted(vm for vm, home in lab3.vms().items() if home == h)
    assert sorted(seen) == sorted(lab3.vms())


def test_hosts_are_separate_machines(lab3: Lab) -> None:
    for h in lab3.hosts():
        assert lab3.exec(h, ["hostname"], check=True).stdout.strip() == f"lbt-{h}"
        # PID 1 of the host is the lab's reaping init, not the machine's.
        assert "haagent/lab/init.py" in lab3.exec(h, ["cat", "/proc/1/cmdline"], check=True).stdout
        addrs = lab3.exec(h, ["ip", "-o", "-4", "addr"], check=True).stdout
        assert lab3.address(h) in addrs
    # Lab addresses exist only inside the lab.
    with open("/proc/net/fib_trie") as f:
        assert "10.99.0." not in f.read()
    # ...and from inside, hosts reach each other: h1 opens h3's libvirt TCP port.
    probe = f"import socket; socket.create_connection(('{lab3.address('h3')}', 16509), timeout=3)"
    assert lab3.exec("h1", [sys.executable, "-c", probe]).returncode == 0


def test_live_migration_from_inside_a_host(lab3: Lab) -> None:
    vm, src = "vm1", lab3.vms()["vm1"]
    dst = next(h for h in lab3.hosts() if h != src)
    res = lab3.exec(src, ["virsh", "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
                          vm, lab3.migration_uri(dst)], timeout=60)
    assert res.returncode == 0, res.stderr
    assert where_running(lab3)[vm] == [dst]
    assert vm not in lab3.exec(src, ["virsh", "list", "--all", "--name"], check=True).stdout.split()
    assert vm in lab3.exec(dst, ["virsh", "list", "--persistent", "--name"], check=True).stdout.split()


def test_etcd_requires_certificates_and_roles(lab3: Lab) -> None:
    from haagent.errors import StoreAccessDenied
    from haagent.store.client import EtcdStore
    from haagent.store.keys import Keys

    keys = Keys(lab3.prefix)
    assert lab3.tls and all(e.startswith("unixs://") for e in lab3.etcd_endpoints())
    agent_cfg = lab3.agent_config_path("h2").read_text()
    assert 'endpoints = ["https://10.99.0.11:2379"' in agent_cfg and "agent-h2.key" in agent_cfg
    anonymous = EtcdStore(lab3.etcd_endpoints(), timeout=1, ca_cert=lab3.etcd_tls()["ca_cert"])
    reader, operator = lab3.etcd_store(user="reader"), lab3.etcd_store(user="operator")
    try:
        with pytest.raises(StoreAccessDenied, match="requires a client certificate"):
            anonymous.get(keys.leader)
        assert reader.get(keys.leader) is not None and operator.get(keys.leader) is not None
        with pytest.raises(StoreAccessDenied, match="etcd user 'reader'"):
            reader.put(keys.request("lab-test"), "{}")
        with pytest.raises(StoreAccessDenied, match="etcd user 'operator'"):
            operator.put(keys.vm_placement(lab3.vm_uuid("vm1")), "h3")
    finally:
        for s in (anonymous, reader, operator):
            s.close()


def test_two_labs_coexist(lab3: Lab, make_lab) -> None:
    other = make_lab("lbc", 2, 1, insecure=True)
    assert other.address("h1") == lab3.address("h1")  # same addresses, separate namespaces
    assert other.running_vms("h1") == ["vm1"]
    assert where_running(lab3) != {}
    # --insecure: plain etcd, no certificates, the agents run all the same
    assert not other.tls and other.etcd_endpoints()[0].startswith("unix://")
    eventually(lambda: other.agent_alive_in_etcd("h2"), 30, what="insecure lab's agent alive key")
    put(other, "h1", "/lab-test/other")
    client = lab3.etcd_client("h1")
    try:
        assert client.get("/lab-test/other")[0] is None  # separate etcd clusters
    finally:
        client.close()


def test_live_migration_over_tls(make_lab) -> None:
    """--libvirt-tls: libvirtds listen only on TLS (16514) and QEMU's migration stream must be TLS too."""
    from haagent.errors import OperationInvalid
    from haagent.hypervisor.libvirt_impl import LibvirtHypervisor
    from haagent.hypervisor.options import MigrationOptions
    from haagent.hypervisor.port import Location, MigrationOutcome, MigrationTarget

    lab = make_lab("lbs", 2, 1, libvirt_tls=True)
    listening = lab.exec("h2", ["ss", "-Hltn"], check=True).stdout
    assert ":16514 " in listening and ":16509 " not in listening, listening
    target = MigrationTarget(uri=lab.migration_uri("h2"), client_uri=lab.libvirt_uri("h2"))
    assert target.uri.startswith("qemu+tls://10.99.0.12/system")
    src = LibvirtHypervisor(lab.libvirt_uri("h1"), shared_paths=(str(lab.shared_dir),))
    try:
        assert src.wait_connected(15)
        refused = src.migrate("vm1", target, MigrationOptions(), deadline=60)  # no --tls: plain stream
        assert refused.location == Location.SOURCE and isinstance(refused.error, OperationInvalid)
        assert "only with VIR_MIGRATE_TLS" in str(refused.error)
        moved = src.migrate("vm1", target, MigrationOptions(tls=True), deadline=60)
        assert moved.outcome == MigrationOutcome.COMPLETED and moved.location == Location.DESTINATION, moved
    finally:
        src.close()
    assert where_running(lab) == {"vm1": ["h2"]}


def test_crash_then_revive(lab3: Lab) -> None:
    victim = "h2"  # an etcd member with VMs
    survivor = "h1"
    had = lab3.running_vms(victim)
    assert had
    pid = lab3.init_pid(victim)
    lab3.crash(victim)
    assert lab3.init_pid(victim) is None
    assert lab3.running_vms(victim) is None  # its libvirtd is gone with it
    assert _gone(str(pid))
    # Nothing at all survives in the host's network namespace (QEMUs, etcd, agent).
    net = f"net:[{os.stat(f'/run/netns/{lab3.netns(victim)}').st_ino}]"
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _netns(p) == net and not _gone(p)]
    assert ipmi(lab3, survivor, victim, "chassis", "power", "status") == "Chassis Power is off"
    # etcd keeps quorum with 2 of 3 members.
    eventually(lambda: put(lab3, survivor, "/lab-test/after-crash") or True, 15, what="write after crash")

    if lab3.agent_alive_in_etcd(survivor) is not None and lab3.status()["hosts"][0]["agent"]["available"]:
        # The crashed agent's lease runs out (TTL + up to ~3 s when etcd's leader changed).
        eventually(lambda: lab3.agent_alive_in_etcd(victim) is False, 20, what="victim's lease expiry")
        # The agents' leader fences the lost host through its BMC (already off) before its VMs
        # may move; power it on only after that, as an operator would, or the fence hits it.
        eventually(lambda: host_state(lab3, survivor, victim) in ("fenced", "recovering", "failed"), 30,
                   what="leader fenced the crashed host")

    # Power on through the BMC, like a fence device or an operator would.
    assert "Up/On" in ipmi(lab3, survivor, victim, "chassis", "power", "on")
    eventually(lambda: lab3.init_pid(victim) and lab3.libvirtd_running(victim), 30, what="revived host")
    eventually(lambda: lab3.running_vms(victim) is not None, 30, what="libvirtd answers")
    assert not set(had) & set(lab3.running_vms(victim) or []), "a revived host must start nothing by itself"
    eventually(lambda: put(lab3, victim, "/lab-test/revived") or True, 20, what="revived etcd member")
    if lab3.status()["hosts"][1]["agent"]["available"]:
        eventually(lambda: lab3.agent_running(victim), 20, what="agent process")
        eventually(lambda: lab3.agent_alive_in_etcd(victim), 30, what="agent rejoined (alive key)")


def test_a_watch_on_a_member_cut_off_from_quorum_moves_to_the_majority(lab3: Lab) -> None:
    """The stream stays open on a member that lost its peers; the store requires a leader, so
    that member cancels it and the watch resumes on the majority, missing nothing."""
    from haagent.store.watch import PrefixCache

    members = lab3.etcd_members()
    isolated = members[-1]
    store = lab3.etcd_store([lab3.etcd_endpoint(isolated)] + [lab3.etcd_endpoint(m) for m in members[:-1]], timeout=1)
    cache = PrefixCache(store, "/lab-watch/").start()  # its stream is on the isolated member
    lab3.bmc(isolated, "fail")  # keep the agents' leader from fencing it meanwhile (see below)
    try:
        assert cache.wait_for(store.put("/lab-watch/before", "x"), 5)
        lab3.partition(isolated)
        try:
            rev = eventually(lambda: store.put("/lab-watch/during", "x"), 15, what="write through the majority")
            assert cache.wait_for(rev, 10), f"cache stuck at {cache.revision}, the store is at {rev}"
            assert cache.get("/lab-watch/during") is not None
        finally:
            lab3.heal(isolated)
        eventually(lambda: lab3.agent_alive_in_etcd(isolated), 30, what="agent back after heal")
    finally:
        cache.stop()
        store.close()
        lab3.bmc(isolated, "ok")


def test_partition_majority_writes_isolated_member_fails(lab3: Lab) -> None:
    isolated = lab3.etcd_members()[-1]
    majority = lab3.etcd_members()[0]
    vms_before = lab3.running_vms(isolated)
    # This test is about the network: keep the agents' leader from fencing the isolated host
    # (its fence attempts fail, the host stays up). The BMC stays failing afterwards: a leader
    # that started fencing finishes it even when the host comes back, which is right for HA
    # but would power this host off under the next test. That is why this test runs last.
    lab3.bmc(isolated, "fail")
    lab3.partition(isolated)
    try:
        assert lab3.running_vms(isolated) == vms_before  # the VMs keep running
        # A new etcd leader may need an election (~1-2 s) if the isolated member led.
        eventually(lambda: put(lab3, majority, "/lab-test/majority") or True, 15, what="majority write")
        with pytest.raises(Exception):
            put(lab3, isolated, "/lab-test/isolated", timeout=2.0)
        assert lab3.running_vms(isolated) == vms_before
        # The management network is not cut: the others still reach the isolated host's BMC.
        assert "Device ID" in ipmi(lab3, majority, isolated, "mc", "info")
        assert lab3.status()["hosts"][int(isolated[1:]) - 1]["network"] == "partitioned"
    finally:
        lab3.heal(isolated)
    eventually(lambda: put(lab3, isolated, "/lab-test/healed") or True, 15, what="write after heal")


def _netns(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _gone(pid: str) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] == "Z"
    except OSError:
        return True


def test_down_leaves_nothing(lab3: Lab) -> None:
    inodes = netns_inodes("lbt")
    assert len(inodes) == 5  # 3 hosts, bridge, management
    pids = [lab3.init_pid(h) for h in lab3.hosts()]
    lab3.down(keep_logs=Path(tempfile.gettempdir()) / "haagent-lab-logs" / "lbt")
    assert lab_traces("lbt", lab3.dir, inodes) == []
    assert all(pid is None or _gone(str(pid)) for pid in pids)
    lab3.down()  # idempotent
    assert not Lab("lbt").exists()
