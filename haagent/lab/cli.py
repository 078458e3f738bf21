"""``haagent lab ...``: build, inspect, break and remove a local multi-host KVM lab."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Callable

import click

from haagent.clikit import fail
from haagent.errors import LabError
from haagent.lab import layout as L

prefix_option = click.option("--prefix", default=L.DEFAULT_PREFIX, show_default=True,
                             help="names the lab's namespaces, directory and cluster")


def _lab(prefix: str) -> Any:
    from haagent.lab.lab import Lab
    try:
        return Lab(prefix)
    except LabError as e:
        fail(str(e), 2)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except LabError as e:
        fail(str(e))


@click.group()
def lab() -> None:
    """A real multi-host KVM cluster in namespaces on this machine (root)."""


@lab.command()
@click.option("--hosts", default=3, show_default=True, type=int, help="number of hosts, 2-6")
@click.option("--vms", default=6, show_default=True, type=int, help="number of HA VMs")
@prefix_option
@click.option("--kvm", is_flag=True, help="use /dev/kvm (qemu64 CPU, svm off) instead of TCG (a Linux guest crawls under "
                   "the KVM of some nested machines: see docs/lab.md)")
@click.option("--disk", is_flag=True, help="give each VM a qcow2 disk on the shared storage")
@click.option("--no-ha", is_flag=True, help="leave the VMs without haagent's HA mark (unmanaged)")
@click.option("--guest", type=click.Choice(L.GUESTS), default="none", show_default=True,
              help="none: VMs without an OS; linux: boot each VM into a small Linux guest (Debian's "
                   "kernel, a busybox initramfs) that ticks every 10 ms on its console and takes "
                   "`lab load` commands")
@click.option("--memory", type=int, default=None,
              help=f"MiB per VM [default: {L.VM_MEMORY_MIB}, {L.GUEST_MEMORY_MIB} with --guest linux]")
@click.option("--vcpus", type=int, default=1, show_default=True, help=f"vCPUs per VM, 1-{L.MAX_VCPUS}")
@click.option("--keep-on-failure", is_flag=True, help="leave a half-built lab for inspection")
@click.option("--insecure", is_flag=True,
              help="plain etcd: no TLS, no client certificates, no roles (debugging only)")
@click.option("--libvirt-tls", is_flag=True,
              help="libvirtds and QEMU migration streams over TLS (qemu+tls://; migrate with --tls)")
@click.option("--numa", "numa_opts", multiple=True, metavar="HOST=FREE,FREE",
              help="free MiB (optionally FREE:HUGEPAGES, free 2 MiB pages) of each NUMA cell "
                   "a host's libvirtd reports, e.g. h1=512,3584; repeat per host")
@click.option("--monitoring", is_flag=True,
              help=f"run Prometheus and Alertmanager on the cluster network ({L.MONITOR_ADDRESS}), "
                   "scraping every agent, with deploy/prometheus-rules.yml (docs/monitoring.md)")
def up(hosts: int, vms: int, prefix: str, kvm: bool, disk: bool, no_ha: bool, guest: str,
       memory: int | None, vcpus: int, keep_on_failure: bool, insecure: bool, libvirt_tls: bool,
       numa_opts: tuple[str, ...], monitoring: bool) -> None:
    """Build the lab: hosts, etcd cluster (TLS, client certificates, roles), agents, BMCs, shared storage, VMs."""
    lab_ = _lab(prefix)
    try:
        numa = dict(L.parse_numa_option(o) for o in numa_opts)
    except ValueError as e:
        fail(str(e), 2)
    _guard(lambda: lab_.up(hosts, vms, kvm=kvm, disk=disk, keep_on_failure=keep_on_failure, ha=not no_ha,
                           insecure=insecure, libvirt_tls=libvirt_tls, guest=guest, memory_mib=memory, vcpus=vcpus,
                           progress=lambda msg: click.echo(msg, err=True), numa=numa, monitoring=monitoring))
    if monitoring:
        click.echo(f"Prometheus {L.prometheus_url()}, Alertmanager {L.alertmanager_url()}: lab addresses, "
                   f"reached from inside the lab, e.g. `haagent lab exec --prefix {prefix} h1 curl -s "
                   f"'{L.prometheus_url('/api/v1/query?query=up')}'` or `haagent lab query --prefix {prefix} "
                   f"'ALERTS'`")
    click.echo(f"try: haagent lab status --prefix {prefix}; haagent status --config {lab_.layout.operator_config}; "
               f"haagent lab virsh h1 list; haagent lab crash h2; haagent lab down --prefix {prefix}")


@lab.command()
@prefix_option
def down(prefix: str) -> None:
    """Remove every namespace, process, mount and file of the lab (idempotent)."""
    lab_ = _lab(prefix)
    _guard(lambda: lab_.down(progress=lambda msg: click.echo(msg, err=True)))
    click.echo(f"lab {prefix} is down")


@lab.command()
@prefix_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(prefix: str, as_json: bool) -> None:
    """Show each host's namespaces, libvirtd, etcd member, agent, BMC and running VMs."""
    st = _guard(lambda: _lab(prefix).status())
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    def yes(v: Any) -> str:
        return {True: "[green]up[/]", False: "[red]down[/]", None: "[yellow]?[/]"}.get(v, str(v))

    t = Table(title=f"lab {st['prefix']} ({st['phase']}, {'kvm' if st['kvm'] else 'tcg'}"
                    f"{', qcow2 disks' if st['disk'] else ''}"
                    f"{', etcd TLS + roles' if st['etcd_tls'] else ', etcd plain (--insecure)'}"
                    f"{', libvirt TLS' if st['libvirt_tls'] else ''}"
                    f"{', Linux guests' if st.get('guest') == 'linux' else ''}"
                    f"{', Prometheus ' + st['monitoring']['prometheus'] if st.get('monitoring') else ''})")
    for col in ("host", "address", "power", "network", "libvirtd", "etcd", "agent", "bmc", "running VMs"):
        t.add_column(col)
    for h in st["hosts"]:
        etcd = yes(h["etcd"]["running"]) if h["etcd"]["member"] else "-"
        agent = h["agent"]
        if not agent["available"]:
            agent_s = "n/a"
        else:
            agent_s = yes(agent["running"])
            if agent["alive_in_etcd"] is not None:
                agent_s += " (alive key)" if agent["alive_in_etcd"] else " (no alive key)"
        bmc = h["bmc"]
        bmc_s = (f"{bmc['address']} {bmc['power']}" + ("" if bmc["serving"] else " [red]not serving[/]")
                 + ("" if bmc["mode"] == "ok" else f" [yellow]{bmc['mode']}[/]")
                 + (f" off-delay {bmc['off_delay']:g}s" if bmc["off_delay"] else ""))
        vms = h["vms"]
        t.add_row(h["name"], h["address"], yes(h["power"] == "on"), h["network"],
                  yes(h["libvirtd"]["running"]), etcd, agent_s, bmc_s,
                  "?" if vms is None else (", ".join(vms) or "-"))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped or logged: do not squeeze the table to 80 columns
    console.print(t)
    twice = {vm: where for vm, where in st["vms"].items() if len(where) > 1}
    nowhere = sorted(vm for vm, where in st["vms"].items() if not where)
    if twice:
        click.echo(f"WARNING: running on more than one host: {twice}")
    if nowhere:
        click.echo(f"not running anywhere: {', '.join(nowhere)}")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@prefix_option
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(prefix: str, host: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside HOST's namespaces, e.g. `haagent lab exec h1 ip addr`."""
    from haagent.lab.lab import exec_env

    argv = _guard(lambda: _lab(prefix).nsenter_argv(host))
    sys.exit(subprocess.call(argv + list(cmd), env=exec_env()))


@lab.command()
@prefix_option
@click.argument("expr")
def query(prefix: str, expr: str) -> None:
    """Evaluate PromQL EXPR in the lab's Prometheus (`lab up --monitoring`), from inside the lab."""
    for series in _guard(lambda: _lab(prefix).query(expr)):
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(series.get("metric", {}).items()))
        value = series.get("value", [None, None])[1] if "value" in series else series.get("values")
        click.echo(f"{{{labels}}} {value}")


@lab.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@prefix_option
@click.argument("host")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def virsh(prefix: str, host: str, args: tuple[str, ...]) -> None:
    """Run virsh against HOST's libvirtd, from inside HOST."""
    argv = _guard(lambda: _lab(prefix).nsenter_argv(host))
    sys.exit(subprocess.call(argv + ["virsh", *args]))


def _fault(name: str, doc: str) -> None:
    @lab.command(name=name.replace("_", "-"), help=doc)
    @prefix_option
    @click.argument("host")
    def command(prefix: str, host: str) -> None:
        lab_ = _lab(prefix)
        _guard(lambda: getattr(lab_, name)(host))
        click.echo(f"{host}: {name.replace('_', ' ')} done")


_fault("crash", "Power cut: everything in HOST dies at once and its cables are unplugged.")
_fault("revive", "Power HOST back on: libvirtd, etcd member and agent start; its VMs stay off.")
_fault("partition", "Cut HOST's cluster network (management network and VMs untouched).")
_fault("heal", "Reconnect HOST's cluster network.")
_fault("stop_libvirtd", "Stop HOST's libvirtd; its VMs keep running.")
_fault("start_libvirtd", "Start HOST's libvirtd again.")


@lab.command()
@prefix_option
@click.argument("host")
@click.argument("mode", type=click.Choice(["ok", "fail", "hang", "off-delay"]))
@click.argument("seconds", required=False, type=float)
def bmc(prefix: str, host: str, mode: str, seconds: float | None) -> None:
    """Make HOST's BMC misbehave: ok | fail | hang | off-delay SECONDS."""
    if mode == "off-delay" and seconds is None:
        fail("off-delay needs SECONDS", 2)
    if mode != "off-delay" and seconds is not None:
        fail(f"{mode} takes no SECONDS", 2)
    lab_ = _lab(prefix)
    _guard(lambda: lab_.bmc(host, mode, seconds))
    click.echo(f"{host}: BMC {mode}{'' if seconds is None else f' {seconds:g}s'}")


@lab.command()
@prefix_option
@click.argument("vm")
@click.option("--cpu", type=int, default=0, show_default=True, help="vCPUs to keep busy (niced loops)")
@click.option("--mem", type=int, default=0, show_default=True,
              help="MiB of random data to hold in the guest's RAM (a tmpfs file)")
@click.option("--dirty", type=int, default=0, show_default=True,
              help="MiB/s of the held memory to rewrite (for migration tests)")
@click.option("--timeout", type=float, default=60, show_default=True, help="seconds to wait for the guest")
def load(prefix: str, vm: str, cpu: int, mem: int, dirty: int, timeout: float) -> None:
    """Make a Linux guest (`lab up --guest linux`) burn CPU and hold memory; `--cpu 0 --mem 0` clears.

    The command goes over the guest's second serial port, a unix socket in the libvirt
    directory of the host that runs it; the guest answers `ok cpu=N mem=M dirty=D`.
    """
    got = _guard(lambda: _lab(prefix).load(vm, cpu, mem, dirty, timeout=timeout))
    click.echo(f"{vm}: cpu={got['cpu']} mem={got['mem']} MiB dirty={got['dirty']} MiB/s")


@lab.command()
@prefix_option
@click.argument("vm")
@click.option("--lines", "-n", type=int, default=20, show_default=True, help="how many of the last lines")
def console(prefix: str, vm: str, lines: int) -> None:
    """Show the end of a Linux guest's console: boot messages, then `T <seq> <guest seconds>`
    every 10 ms (the file every QEMU of the guest appends to is printed first)."""
    g = _guard(lambda: _lab(prefix).guest(vm))
    click.echo(f"# {g.console}", err=True)
    text = g.console_text(since=max(g.mark() - 200 * max(lines, 1), 0))  # ticks are ~25 bytes
    click.echo("\n".join(text.splitlines()[-lines:]))


@lab.command(hidden=True)
@prefix_option
def bmcd(prefix: str) -> None:
    """Serve every host's fake BMC (started by `lab up` in the management namespace)."""
    from haagent.lab.bmcd import serve
    _guard(lambda: serve(prefix))


@lab.command(name="list")
def list_() -> None:
    """List the labs on this machine."""
    from haagent.lab.lab import labs
    for p in labs():
        click.echo(p)
