"""The lab: N libvirt hosts, an etcd cluster, agents and fake BMCs in namespaces on one machine.

Each host is a tiny init (haagent/lab/init.py) that is PID 1 of the host's own PID, mount, UTS
and IPC namespaces, inside a network namespace that outlives it. Its daemons (libvirtd, the etcd
member, the agent) are started with ``nsenter`` into those namespaces; killing the init is a
power cut. The cluster network is a bridge in ``<prefix>-br``; the management network, where
the BMCs answer, is a bridge in ``<prefix>-mgmt`` that ``partition`` never touches.

Every method works from a fresh process: what must survive is in the lab directory (state.json,
hosts/<h>/host.json with recorded PIDs). Mutating methods hold an flock on the lab's lock file,
because the BMC supervisor crashes and revives hosts from its own process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from haagent.errors import LabError
from haagent.lab import layout as L
from haagent.lab import proc
from haagent.lab.layout import Layout

if TYPE_CHECKING:
    from haagent.lab.guest import Guest

Progress = Callable[[str], None]
INIT_SCRIPT = str(Path(__file__).with_name("init.py"))
NETNS_DIR = Path("/run/netns")
PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"  # Debian's name for alertmanager
RULES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-rules.yml"
# Run inside a lab namespace by monitoring_get: print the body of a GET (a JSON API).
_FETCH = ("import sys, urllib.request\n"
          "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
          "    sys.stdout.write(r.read().decode())\n")


def _quiet(_msg: str) -> None:
    pass


def _run(argv: Sequence[str], timeout: float = 30, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv[:6])}: no answer within {timeout:g}s") from e
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]}: not installed (run scripts/install-system-deps.sh)") from e
    if check and res.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip() or 'failed'}")
    return res


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", *args], check=check)


def _haagent_argv() -> list[str]:
    """How to run this installation's ``haagent`` command from inside a lab host."""
    script = Path(sys.executable).with_name("haagent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'haagent'; from haagent.cli import main; main()"]


def _agent_available() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("haagent.daemon") is not None
    except ImportError:
        return False


def _bmc_available() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("fencing.fakes.bmc") is not None
    except ImportError:
        return False


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def machine_cpus() -> list[int]:
    """The machine's online CPUs (what every lab host's cells split between them)."""
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
    except OSError:
        return sorted(os.sched_getaffinity(0))
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def exec_env() -> dict[str, str]:
    """The environment for commands run inside a lab host: this installation's ``haagent``
    (e.g. in a venv that is not on root's PATH) comes first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


class Lab:
    """One lab, named by its prefix. Cheap to construct; every method reads the lab directory."""

    def __init__(self, prefix: str = L.DEFAULT_PREFIX):
        try:
            self.prefix = L.check_prefix(prefix)
        except ValueError as e:
            raise LabError(str(e)) from e
        self.layout = Layout(self.prefix)

    # == accessors: what a client in the root namespace needs =================================

    @property
    def dir(self) -> Path:
        return self.layout.dir

    @property
    def state(self) -> dict[str, Any]:
        return _read_json(self.layout.state_file)

    def exists(self) -> bool:
        return self.layout.dir.exists() or any(self._netns_names())

    def hosts(self) -> list[str]:
        return list(self.state.get("hosts", []))

    def etcd_members(self) -> list[str]:
        return list(self.state.get("etcd_members", []))

    @property
    def tls(self) -> bool:
        """etcd speaks TLS with client certificates and roles (the default; ``up(insecure=True)``: plain)."""
        return bool(self.state.get("tls", False))

    def vms(self) -> dict[str, str]:
        """VM name -> the host the lab first started it on."""
        return {name: v["home"] for name, v in self.state.get("vms", {}).items()}

    def vm_uuid(self, vm: str) -> str:
        return self.layout.vm_uuid(vm)

    def address(self, host: str) -> str:
        """The host's address on the lab's cluster network (only reachable inside the lab)."""
        return L.address(self._host(host))

    def libvirt_uri(self, host: str) -> str:
        """The host's libvirtd from the root namespace, through its unix socket."""
        return f"qemu+unix:///system?socket={self.layout.libvirt_socket(self._host(host))}"

    def migration_uri(self, host: str) -> str:
        """Destination URI for peer-to-peer migration, resolved by the source host's libvirtd
        (``qemu+tls://`` in a ``--libvirt-tls`` lab: migrate with ``--tls`` there)."""
        if self.state.get("libvirt_tls"):
            return L.libvirt_uri_tls(self.address(host))
        return f"qemu+tcp://{self.address(host)}/system"

    def etcd_endpoint(self, host: str) -> str:
        """A member's client socket from the root namespace: ``unixs:///abs/dir/localhost:2379``
        (``unix://`` in an insecure lab)."""
        scheme = "unixs" if self.tls else "unix"
        return f"{scheme}://{self.layout.etcd_dir(self._host(host))}/localhost:{L.ETCD_CLIENT_PORT}"

    def etcd_endpoints(self) -> list[str]:
        return [self.etcd_endpoint(h) for h in self.etcd_members()]

    def etcd_lab_endpoints(self) -> list[str]:
        """The members' client URLs as seen from inside the lab (what agents use)."""
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://{L.address(h)}:{L.ETCD_CLIENT_PORT}" for h in self.etcd_members()]

    def etcd_cert(self, user: str) -> tuple[str, str, str] | None:
        """(ca_cert, cert, key) of an etcd user of the lab (root, operator, reader, a host); None if insecure."""
        if not self.tls:
            return None
        pki = self.layout.pki_dir
        name = f"agent-{user}" if user in self.hosts() else user
        return str(pki / "ca.crt"), str(pki / f"{name}.crt"), str(pki / f"{name}.key")

    def etcd_tls(self, user: str = "root") -> dict[str, str]:
        """``EtcdStore(..., **lab.etcd_tls())``: the CA and a user's certificate ({} if insecure)."""
        files = self.etcd_cert(user)
        return dict(zip(("ca_cert", "cert", "key"), files)) if files else {}

    def etcd_store(self, endpoints: Sequence[str] | None = None, timeout: float = 1.0, user: str = "root") -> Any:
        """An EtcdStore on the members' sockets (or ``endpoints``), as etcd's root user by default."""
        from haagent.store.client import EtcdStore
        return EtcdStore(list(endpoints or self.etcd_endpoints()), timeout=timeout, **self.etcd_tls(user))

    def etcd_client(self, host: str, timeout: float = 2.0) -> Any:
        """A python3-etcd3 client bound to one member's unix socket, as etcd's root user."""
        import etcd3

        from haagent.store.client import grpc_tls_options
        files = self.etcd_cert("root") or (None, None, None)
        return etcd3.client(host=f"unix:{self.layout.etcd_dir(self._host(host))}/localhost",
                            port=L.ETCD_CLIENT_PORT, timeout=timeout,
                            ca_cert=files[0], cert_cert=files[1], cert_key=files[2],
                            grpc_options=grpc_tls_options("unixs" if self.tls else "unix"))

    def bmc_address(self, host: str) -> str:
        """The host's BMC as seen from inside the lab (any host reaches it on the mgmt network)."""
        return L.bmc_address(self._host(host))

    def bmc_port(self, host: str) -> int:
        return L.bmc_port(self._host(host))

    @property
    def bmc_user(self) -> str:
        return L.BMC_USER

    @property
    def bmc_password_file(self) -> Path:
        """File (mode 0600) holding the BMCs' password: pass it by file, never on a command line."""
        return self.layout.bmc_password_file

    def agent_config_path(self, host: str) -> Path:
        return self.layout.agent_config(self._host(host))

    @property
    def shared_dir(self) -> Path:
        return self.layout.shared_dir

    def netns(self, host: str) -> str:
        return self.layout.netns(self._host(host))

    def numa(self, host: str) -> tuple[L.LabCell, ...]:
        """The NUMA cells the host's libvirtd reports (the layout's, or the last ``set_numa``)."""
        cells = self.state.get("numa", {}).get(self._host(host))
        if not cells:
            raise LabError(f"lab {self.prefix}: no NUMA cells recorded for {host}")
        return tuple(L.LabCell.from_json(c) for c in cells)

    def set_numa(self, host: str, cells: Sequence[L.LabCell]) -> None:
        """Change the host's cells; its libvirtd reports them on the next call (it reads sysfs
        for capabilities, getInfo, getCellsFreeMemory and getFreePages alike), also a different
        number of cells (see docs/lab.md for the one thing that lags until a restart)."""
        h = self._host(host)
        new = tuple(cells)
        if not 1 <= len(new) <= len(machine_cpus()):
            raise LabError(f"numa {h}: 1 to {len(machine_cpus())} cells, got {len(new)}")
        with self._locked():
            state = self.state
            state.setdefault("numa", {})[h] = [c.to_json() for c in new]
            L.write_numa_tree(self.layout.numa_dir(h), new, machine_cpus())
            self._save_state(state)

    def init_pid(self, host: str) -> int | None:
        """PID (root namespace) of the host's init while the host is powered, else None."""
        r = self._init_ref(host)
        return r.pid if proc.alive(r) else None

    # == building and tearing down ===============================================================

    def up(self, hosts: int = 3, vms: int = 6, kvm: bool = False, disk: bool = False,
           progress: Progress | None = None, keep_on_failure: bool = False, ha: bool = True,
           insecure: bool = False, libvirt_tls: bool = False, guest: str = "none",
           memory_mib: int | None = None, vcpus: int = 1,
           numa: dict[str, Sequence[L.LabCell]] | None = None, monitoring: bool = False,
           agent_config: Mapping[str, Mapping[str, Any]] | None = None) -> "Lab":
        """Build the whole lab; on failure tear down what was built (unless keep_on_failure).

        etcd speaks TLS to clients and peers and requires client certificates from the lab's CA,
        with haagent's roles on (docs/security.md); ``insecure``: plain, no auth, for debugging.
        ``libvirt_tls``: libvirtds (and QEMU's migration streams) talk TLS with the lab's CA.
        ``guest="linux"`` boots every VM into the lab's Linux guest (see ``Lab.guest``);
        ``memory_mib`` defaults to 64 without a guest and 192 with one. ``numa``: host -> the NUMA
        cells its libvirtd reports; hosts not named get ``layout.default_cells``. ``monitoring``:
        Prometheus and Alertmanager on the cluster network, scraping every agent (docs/monitoring.md).
        ``agent_config``: more agent config, section -> {key: value}, e.g. ``{"migration":
        {"max_outgoing": 4}, "policy": {"cpu_overcommit": 6}}`` (sections the lab writes itself,
        other than ``migration``, are refused)."""
        say = progress or _quiet
        if memory_mib is None:
            memory_mib = L.GUEST_MEMORY_MIB if guest == "linux" else L.VM_MEMORY_MIB
        self._preflight(hosts, vms, kvm, guest, memory_mib, vcpus, numa or {}, monitoring, agent_config or {})
        t0 = time.monotonic()

        def step(msg: str) -> None:
            say(f"[{time.monotonic() - t0:5.1f}s] {msg}")

        try:
            self._build(hosts, vms, kvm, disk, step, ha, not insecure, libvirt_tls, guest, memory_mib, vcpus,
                        numa or {}, monitoring, {k: dict(v) for k, v in (agent_config or {}).items()})
        except BaseException:
            if not keep_on_failure:
                step("failed: tearing the half-built lab down")
                self.down()
            raise
        step(f"lab {self.prefix} is up: {hosts} hosts, {vms} VMs" +
             (" (Linux guests)" if guest == "linux" else ""))
        return self

    @contextlib.contextmanager
    def running(self, hosts: int = 3, vms: int = 6, kvm: bool = False, disk: bool = False,
                progress: Progress | None = None, ha: bool = True,
                keep_logs: Path | None = None, insecure: bool = False,
                libvirt_tls: bool = False, guest: str = "none", memory_mib: int | None = None,
                vcpus: int = 1, numa: dict[str, Sequence[L.LabCell]] | None = None,
                monitoring: bool = False,
                agent_config: Mapping[str, Mapping[str, Any]] | None = None) -> Iterator["Lab"]:
        """``with Lab(p).running(3, 6) as lab:`` - removes a leftover lab first, always tears down."""
        self.down()
        try:
            yield self.up(hosts, vms, kvm=kvm, disk=disk, progress=progress, ha=ha, insecure=insecure,
                          libvirt_tls=libvirt_tls, guest=guest, memory_mib=memory_mib, vcpus=vcpus, numa=numa,
                          monitoring=monitoring, agent_config=agent_config)
        finally:
            self.down(keep_logs=keep_logs)

    def _preflight(self, hosts: int, vms: int, kvm: bool, guest: str, memory_mib: int, vcpus: int,
                   numa: dict[str, Sequence[L.LabCell]], monitoring: bool = False,
                   agent_config: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        own = sorted(set(agent_config or {}) & L.AGENT_SECTIONS)
        if own:
            raise LabError(f"agent_config: the lab writes [{', '.join(own)}] itself (only [migration] "
                           "takes more keys)")
        if os.geteuid() != 0:
            raise LabError("the lab needs root: it creates namespaces, bridges and runs libvirtd")
        if not L.MIN_HOSTS <= hosts <= L.MAX_HOSTS:
            raise LabError(f"--hosts must be between {L.MIN_HOSTS} and {L.MAX_HOSTS} (got {hosts})")
        if not 0 <= vms <= L.MAX_VMS:
            raise LabError(f"--vms must be between 0 and {L.MAX_VMS} (got {vms})")
        names = L.host_names(hosts) if L.MIN_HOSTS <= hosts <= L.MAX_HOSTS else []
        for h, cells in numa.items():
            if h not in names:
                raise LabError(f"numa: no host {h!r} in a {hosts}-host lab")
            if not 1 <= len(cells) <= len(machine_cpus()):
                raise LabError(f"numa {h}: 1 to {len(machine_cpus())} cells (one CPU each at "
                               f"least; this machine has {len(machine_cpus())}), got {len(cells)}")
        if kvm and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise LabError("--kvm: /dev/kvm is missing or not usable here; leave --kvm off for TCG")
        if guest not in L.GUESTS:
            raise LabError(f"--guest must be one of {', '.join(L.GUESTS)} (got {guest!r})")
        low = L.MIN_GUEST_MEMORY_MIB if guest == "linux" else L.VM_MEMORY_MIB
        if not low <= memory_mib <= L.MAX_MEMORY_MIB:
            raise LabError(f"--memory must be between {low} and {L.MAX_MEMORY_MIB} MiB"
                           f"{' for --guest linux' if guest == 'linux' else ''} (got {memory_mib})")
        if not 1 <= vcpus <= L.MAX_VCPUS:
            raise LabError(f"--vcpus must be between 1 and {L.MAX_VCPUS} (got {vcpus})")
        if guest == "linux":
            from haagent.lab.guest_image import BUSYBOX, find_kernel
            find_kernel()
            if not BUSYBOX.exists():
                raise LabError(f"--guest linux: {BUSYBOX} is missing (install busybox-static: "
                               "scripts/install-system-deps.sh)")
        tools = ["ip", "nsenter", "setsid", "libvirtd", "etcd", "qemu-system-x86_64", "qemu-img"]
        if monitoring:
            tools += [PROMETHEUS, ALERTMANAGER]
            if not RULES_FILE.is_file():
                raise LabError(f"--monitoring: {RULES_FILE} is missing (it ships in haagent's source tree)")
        for tool in tools:
            if shutil.which(tool) is None:
                raise LabError(f"{tool}: not installed (run scripts/install-system-deps.sh)")
        if self.exists():
            raise LabError(f"lab {self.prefix!r} already exists; `haagent lab down --prefix "
                           f"{self.prefix}` removes it")
        if len(str(self.layout.libvirt_socket("h6"))) > 100:
            raise LabError(f"{self.layout.dir}: too long for unix socket paths; set a shorter "
                           f"HAAGENT_LAB_ROOT")

    def _build(self, n: int, m: int, kvm: bool, disk: bool, step: Progress, ha: bool, tls: bool,
               libvirt_tls: bool, guest: str, memory_mib: int, vcpus: int,
               numa: dict[str, Sequence[L.LabCell]], monitoring: bool = False,
               agent_config: dict[str, dict[str, Any]] | None = None) -> None:
        names = L.host_names(n)
        members = names[:min(n, 3)]
        vm_list = L.vm_names(m)
        homes = L.spread(vm_list, names)
        lay = self.layout
        lay.dir.mkdir(parents=True, exist_ok=False)
        os.chmod(lay.dir, 0o711)
        # Written first, so `down` knows the lab even if this process dies half way.
        self._save_state({
            "prefix": self.prefix, "phase": "building", "hosts": names, "etcd_members": members,
            "kvm": kvm, "disk": disk, "ha": ha, "tls": tls, "libvirt_tls": libvirt_tls, "created": time.time(),
            "guest": guest, "memory_mib": memory_mib, "vcpus": vcpus, "monitoring": monitoring,
            "agent_config": agent_config or {},
            "vms": {vm: {"home": homes[vm], "uuid": lay.vm_uuid(vm)} for vm in vm_list},
            "numa": {h: [c.to_json() for c in (numa.get(h) or L.default_cells(h))] for h in names},
        })
        with self._locked():
            step(f"namespaces and bridges for {n} hosts (cluster {L.CLUSTER_NET}.0/{L.NETMASK}, "
                 f"management {L.MGMT_NET}.0/{L.NETMASK})")
            self._build_network(names)
            if monitoring:
                _ip("-n", lay.bridge_netns, "addr", "add", f"{L.MONITOR_ADDRESS}/{L.NETMASK}", "dev", "br0")
            step("host files: libvirt configs, agent configs, shared storage")
            lay.shared_dir.mkdir()
            lay.bmc_dir.mkdir(mode=0o700)
            _write(lay.bmc_password_file, secrets.token_urlsafe(12) + "\n", 0o600)
            if tls:
                self._make_certificates(names, members)
            if libvirt_tls:
                self._make_libvirt_certificates(names)
            users = L.etcd_users(names)
            _write(lay.operator_config, L.cli_toml(self.prefix, self.etcd_endpoints(), self.etcd_cert(L.OPERATOR_USER)))
            _write(lay.admin_config, L.cli_toml(self.prefix, self.etcd_endpoints(), self.etcd_cert("root"), users))
            for h in names:
                self._write_host_files(h, members)
                from_fencing_faults_write(lay.bmc_fault_file(h), "ok", 0.0)
            if guest == "linux":
                self._install_guest(step)
            step("powering hosts on: init, libvirtd" + (", etcd members on " + ", ".join(members)))
            for h in names:
                self._boot(h, wait=False)
            self._start_bmcd(step)
            if monitoring:
                self._start_monitoring(names)
        self._wait_libvirtd(names, timeout=60)
        step("libvirtd answers on every host")
        self._wait_etcd(members, timeout=30)
        step(f"etcd cluster healthy ({len(members)} members, --pre-vote"
             + (", TLS with client certificates)" if tls else ", plain: --insecure)"))
        if tls:
            self._setup_rbac(users)
            step(f"etcd auth on: {len(names)} agents (haagent-agent), {L.OPERATOR_USER} (haagent-operator), "
                 f"{L.READER_USER} (haagent-reader); the CLI: --config {lay.operator_config}")
        if _bmc_available():
            self.wait_bmcs()
            step(f"{n} BMCs answer IPMI on the management network")
        if monitoring:
            self.wait_monitoring()
            step(f"Prometheus {L.prometheus_url()} and Alertmanager {L.alertmanager_url()} answer "
                 f"on the cluster network (from inside the lab), scraping {n} agents every "
                 f"{L.SCRAPE_INTERVAL}s; fence path check every {L.FENCE_CHECK_INTERVAL}s")
        if m:
            self._create_vms(vm_list, homes, kvm, disk, ha, memory_mib, vcpus)
            step(f"{m} VMs running: " + ", ".join(f"{h}={sum(1 for v in homes.values() if v == h)}"
                                                  for h in names))
        state = self.state
        state["phase"] = "up"
        self._save_state(state)

    def down(self, progress: Progress | None = None, keep_logs: Path | None = None) -> None:
        """Remove every process, namespace, mount and file of this lab. Idempotent.

        ``keep_logs``: copy the daemons' logs there first (what a failed test wants to read).
        """
        say = progress or _quiet
        if os.geteuid() != 0:
            raise LabError("the lab needs root to be taken down")
        lay = self.layout
        if keep_logs is not None and lay.dir.exists():
            self._copy_logs(Path(keep_logs))
        netns_names = list(self._netns_names())
        inodes = {proc.ns_inode(str(NETNS_DIR / name), "net") for name in netns_names} - {None}
        # Every lab process: recorded PIDs, anything in a lab network namespace, anything that
        # names the lab directory. The inits go first: killing one kills its whole host at once.
        refs: list[proc.ProcRef] = []
        for h in self._host_dirs():
            r = self._init_ref(h)
            if r:
                refs.append(r)
        bmcd = proc.ProcRef.from_json(_read_json(lay.bmcd_pidfile).get("proc"))
        if bmcd:
            refs.append(bmcd)
        for r in refs:
            proc.kill(r)
        me = os.getpid()
        labdir = str(lay.dir) + "/"
        for pid in proc.pids():
            if pid == me:
                continue
            if proc.ns_inode(pid, "net") in inodes or any(labdir in a for a in proc.cmdline(pid)):
                r = proc.ref(pid)
                if r:
                    refs.append(r)
                    proc.kill(r)
        left = proc.wait_gone(refs, timeout=10)
        if left:
            say(f"still alive after SIGKILL: {[r.pid for r in left]}")
        if refs:
            say(f"stopped {len(refs)} processes")
        for name in netns_names:
            _ip("netns", "delete", name, check=False)
        if netns_names:
            say(f"deleted namespaces {', '.join(sorted(netns_names))}")
        for target in self._mounts_under(lay.dir):
            _run(["umount", "-l", target], check=False)
        if lay.dir.exists():
            shutil.rmtree(lay.dir, ignore_errors=True)
            say(f"removed {lay.dir}")
        leftovers = list(self._netns_names())
        if leftovers or lay.dir.exists():
            raise LabError(f"lab {self.prefix}: could not remove {leftovers or lay.dir}")

    def _copy_logs(self, dest: Path) -> None:
        shutil.rmtree(dest, ignore_errors=True)
        for h in self._host_dirs():
            for src in (self.layout.logs_dir(h), self.layout.host_dir(h) / "var-log-libvirt"):
                if src.exists():
                    shutil.copytree(src, dest / h / src.name, dirs_exist_ok=True)
        for log in sorted(self.layout.monitoring_dir.glob("*.log")):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, dest / log.name)
        if (self.layout.bmc_dir / "bmcd.log").exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.layout.bmc_dir / "bmcd.log", dest / "bmcd.log")

    # == faults ==================================================================================

    def crash(self, host: str) -> None:
        """Power cut: every process of the host dies at once and its cables are unplugged."""
        h = self._host(host)
        with self._locked():
            self._power_off(h)

    def revive(self, host: str) -> None:
        """Power on: init, libvirtd, etcd member and agent start again; VMs stay off."""
        h = self._host(host)
        with self._locked():
            if self.init_pid(h) is None:
                self._boot(h, wait=False)
        self._wait_libvirtd([h], timeout=60)

    def partition(self, host: str) -> None:
        """Cut the host's cluster network only (management network and VMs untouched)."""
        h = self._host(host)
        with self._locked():
            self._update_host(h, partitioned=True)
            self._apply_links(h)

    def heal(self, host: str) -> None:
        h = self._host(host)
        with self._locked():
            self._update_host(h, partitioned=False)
            self._apply_links(h)

    def stop_libvirtd(self, host: str, timeout: float = 15) -> None:
        """Stop the host's libvirtd (SIGTERM, then SIGKILL); its QEMUs keep running."""
        h = self._host(host)
        with self._locked():
            refs = [r for r in map(proc.ref, self._service_pids(h, "libvirtd")) if r]
            for r in refs:
                proc.kill(r, signal.SIGTERM)
            left = proc.wait_gone(refs, timeout)
            for r in left:
                proc.kill(r)
            proc.wait_gone(left, 5)

    def start_libvirtd(self, host: str) -> None:
        h = self._host(host)
        with self._locked():
            self._require_powered(h)
            if not self._service_pids(h, "libvirtd"):
                self._start_libvirtd(h)
        self._wait_libvirtd([h], timeout=60)

    def bmc(self, host: str, mode: str, off_delay: float | None = None) -> None:
        """Make the host's BMC misbehave: mode ok|fail|hang, or only change off_delay (mode='off-delay')."""
        h = self._host(host)
        path = self.layout.bmc_fault_file(h)
        current = _read_json(path)
        if mode == "off-delay":
            if off_delay is None or off_delay < 0:
                raise LabError("off-delay needs a number of seconds >= 0")
            mode, delay = current.get("mode", "ok"), float(off_delay)
        else:
            delay = float(off_delay if off_delay is not None else current.get("off_delay", 0.0))
        if mode not in ("ok", "fail", "hang"):
            raise LabError(f"BMC mode must be ok, fail, hang or off-delay (got {mode!r})")
        from_fencing_faults_write(path, mode, delay)

    # == running commands inside a host ==========================================================

    def nsenter_argv(self, host: str) -> list[str]:
        pid = self.init_pid(host)
        if pid is None:
            raise LabError(f"host {host} is powered off (`haagent lab revive {host}`)")
        return ["nsenter", f"--target={pid}", "--net", "--mount", "--uts", "--ipc", "--pid", "--"]

    def exec(self, host: str, argv: Sequence[str], timeout: float | None = 60, check: bool = False,
             input: str | None = None, env: dict[str, str] | None = None,
             capture: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the host's namespaces (network, mount, UTS, IPC, PID)."""
        cmd = self.nsenter_argv(self._host(host)) + list(argv)
        try:
            res = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout,
                                 input=input, env=env if env is not None else exec_env())
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{host}: {' '.join(argv)}: no answer within {timeout:g}s") from e
        if check and res.returncode != 0:
            raise LabError(f"{host}: {' '.join(argv)}: exit {res.returncode}: "
                           f"{(res.stderr or '').strip()}")
        return res

    def mgmt_exec(self, argv: Sequence[str], timeout: float | None = 60) -> subprocess.CompletedProcess:
        """Run a command in the management network's namespace (where the BMCs answer)."""
        return _run(["nsenter", f"--net={NETNS_DIR / self.layout.mgmt_netns}", "--", *argv],
                    timeout=timeout or 60, check=False)

    # == status ==================================================================================

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """Each host's namespaces, daemons, BMC, network and running VMs, read from the daemons."""
        st = self.state
        if not st and not self.exists():
            raise LabError(f"no lab {self.prefix!r} (`haagent lab up --prefix {self.prefix}`)")
        names = list(st.get("hosts", []))
        bmcd = proc.ProcRef.from_json(_read_json(self.layout.bmcd_pidfile).get("proc"))
        bmcd_alive = proc.alive(bmcd)
        netns = set(self._netns_names())
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            running = dict(zip(names, pool.map(lambda h: self._running_vms(h, timeout), names)))
        alive_keys = self._agent_keys(names, timeout)
        hosts = []
        for h in names:
            hs = _read_json(self.layout.host_state_file(h))
            powered = self.init_pid(h) is not None
            faults = _read_json(self.layout.bmc_fault_file(h))
            agent_pids = self._service_pids(h, "agent") if powered else []
            hosts.append({
                "name": h,
                "address": L.address(h),
                "namespaces": {"net": self.layout.netns(h) in netns, "pid_mnt_uts": powered},
                "power": "on" if powered else "off",
                "init_pid": self.init_pid(h),
                "network": ("unplugged" if not powered else
                            "partitioned" if hs.get("partitioned") else "connected"),
                "libvirtd": {"running": bool(powered and self._service_pids(h, "libvirtd")),
                             "uri": self.libvirt_uri(h)},
                "etcd": ({"member": True, "running": bool(powered and self._service_pids(h, "etcd")),
                          "endpoint": self.etcd_endpoint(h)}
                         if h in st.get("etcd_members", []) else {"member": False}),
                "agent": {"running": bool(agent_pids), "pids": agent_pids,
                          "alive_in_etcd": alive_keys.get(h), "available": _agent_available(),
                          "config": str(self.layout.agent_config(h))},
                "bmc": {"address": f"{L.bmc_address(h)}:{L.bmc_port(h)}", "serving": bmcd_alive,
                        "power": "on" if powered else "off", "mode": faults.get("mode", "ok"),
                        "off_delay": faults.get("off_delay", 0.0)},
                "numa": st.get("numa", {}).get(h, []),
                "vms": running[h],
            })
        where: dict[str, list[str]] = {vm: [] for vm in st.get("vms", {})}
        for h in hosts:
            for vm in h["vms"] or []:
                where.setdefault(vm, []).append(h["name"])
        return {"prefix": self.prefix, "dir": str(self.layout.dir), "phase": st.get("phase", "unknown"),
                "kvm": st.get("kvm", False), "disk": st.get("disk", False), "guest": st.get("guest", "none"),
                "etcd_tls": st.get("tls", False), "libvirt_tls": st.get("libvirt_tls", False),
                "etcd_endpoints": self.etcd_endpoints(), "hosts": hosts, "vms": where,
                "monitoring": ({"prometheus": L.prometheus_url(), "alertmanager": L.alertmanager_url()}
                               if st.get("monitoring") else None)}

    def running_vms(self, host: str, timeout: float = 5.0) -> list[str] | None:
        """Names of the VMs running on the host, from its libvirtd; None if it does not answer."""
        return self._running_vms(self._host(host), timeout)

    def agent_alive_in_etcd(self, host: str, timeout: float = 2.0) -> bool | None:
        """Whether the host's agent holds its ``alive`` key (None: no etcd member answers)."""
        return self._agent_keys([self._host(host)], timeout).get(host)

    def agent_running(self, host: str) -> bool:
        return bool(self._service_pids(self._host(host), "agent"))

    def libvirtd_running(self, host: str) -> bool:
        return bool(self._service_pids(self._host(host), "libvirtd"))

    # == internals: network ======================================================================

    def _netns_names(self) -> Iterator[str]:
        try:
            entries = os.listdir(NETNS_DIR)
        except OSError:
            return
        for name in entries:
            if self.layout.owns_netns(name):
                yield name

    def _build_network(self, names: list[str]) -> None:
        lay = self.layout
        br, mg = lay.bridge_netns, lay.mgmt_netns
        for ns in (br, mg, *(lay.netns(h) for h in names)):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        _ip("-n", mg, "link", "add", "mgmt", "type", "bridge")
        _ip("-n", mg, "link", "set", "mgmt", "up")
        for h in names:
            ns = lay.netns(h)
            # Created directly inside the lab namespaces: nothing ever appears in the root one.
            _ip("-n", br, "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", br, "link", "set", h, "master", "br0")
            _ip("-n", ns, "addr", "add", f"{L.address(h)}/{L.NETMASK}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", mg, "link", "add", h, "type", "veth", "peer", "name", "mgmt0", "netns", ns)
            _ip("-n", mg, "link", "set", h, "master", "mgmt")
            _ip("-n", ns, "addr", "add", f"{L.mgmt_address(h)}/{L.NETMASK}", "dev", "mgmt0")
            _ip("-n", ns, "link", "set", "mgmt0", "up")
            # The BMC's address lives on the management bridge, where the BMC supervisor listens.
            _ip("-n", mg, "addr", "add", f"{L.bmc_address(h)}/{L.NETMASK}", "dev", "mgmt")
            self._update_host(h, powered=False, partitioned=False)

    def _apply_links(self, h: str) -> None:
        """Cables follow power and partition: cluster link up iff powered and not partitioned."""
        hs = _read_json(self.layout.host_state_file(h))
        powered = self.init_pid(h) is not None
        cluster = "up" if powered and not hs.get("partitioned") else "down"
        _ip("-n", self.layout.bridge_netns, "link", "set", h, cluster)
        _ip("-n", self.layout.mgmt_netns, "link", "set", h, "up" if powered else "down")

    # == internals: hosts ========================================================================

    def _host(self, host: str) -> str:
        names = self.hosts()
        if not names:
            raise LabError(f"no lab {self.prefix!r} (`haagent lab up --prefix {self.prefix}`)")
        if host not in names:
            raise LabError(f"lab {self.prefix} has no host {host!r} (hosts: {', '.join(names)})")
        return host

    def _host_dirs(self) -> list[str]:
        try:
            return sorted(os.listdir(self.layout.dir / "hosts"))
        except OSError:
            return []

    def _init_ref(self, host: str) -> proc.ProcRef | None:
        return proc.ProcRef.from_json(_read_json(self.layout.host_state_file(host)).get("init"))

    def _update_host(self, h: str, **changes: Any) -> None:
        path = self.layout.host_state_file(h)
        data = _read_json(path)
        data.update(changes)
        _write(path, json.dumps(data))

    def _require_powered(self, h: str) -> int:
        pid = self.init_pid(h)
        if pid is None:
            raise LabError(f"host {h} is powered off (`haagent lab revive {h}`)")
        return pid

    def _write_host_files(self, h: str, members: list[str]) -> None:
        lay = self.layout
        hd = lay.host_dir(h)
        for sub, _ in L.LIBVIRT_BINDS:
            (hd / sub).mkdir(parents=True, exist_ok=True)
        lay.guest_socket_on(h, "vm").parent.mkdir(exist_ok=True)
        lay.logs_dir(h).mkdir(exist_ok=True)
        libvirt_tls = bool(self.state.get("libvirt_tls"))
        _write(hd / "etc-libvirt" / "libvirtd.conf", L.libvirtd_conf(lay.host_uuid(h), libvirt_tls))
        _write(hd / "etc-libvirt" / "qemu.conf", L.qemu_conf(L.address(h), libvirt_tls))
        _write(hd / "etc-libvirt" / "libvirt.conf", 'uri_default = "qemu:///system"\n')
        L.write_numa_tree(lay.numa_dir(h), self.numa(h), machine_cpus())
        # The host's init bind-mounts the real QEMU onto qemu/qemu-system-x86_64 (an empty file
        # until then) and the wrapper over /usr/bin/qemu-system-x86_64, so every domain keeps
        # the packaged emulator path the agents' domain allowlist wants. QEMU finds its modules
        # and firmware relative to where it runs from, through qemu-bundle/usr -> /usr (a
        # symlink: removing the lab never follows it).
        qemu = lay.real_qemu(h)
        qemu.parent.mkdir(exist_ok=True)
        qemu.touch()
        (qemu.parent / "qemu-bundle").mkdir(exist_ok=True)
        if not (qemu.parent / "qemu-bundle" / "usr").is_symlink():
            (qemu.parent / "qemu-bundle" / "usr").symlink_to("/usr")
        _write(hd / "qemu-wrapper", L.qemu_wrapper(str(qemu)), 0o755)
        if h in members:
            (lay.etcd_dir(h) / "data").mkdir(parents=True, exist_ok=True)
            os.chmod(lay.etcd_dir(h) / "data", 0o700)
        scheme = "https" if self.tls else "http"
        endpoints = [f"{scheme}://{L.address(m)}:{L.ETCD_CLIENT_PORT}" for m in members]
        _write(lay.agent_config(h), L.agent_toml(self.prefix, h, endpoints, self._fencing_section(h),
                                                 str(lay.shared_dir), self.etcd_cert(h),
                                                 L.migration_toml(self.hosts(), bool(self.state.get("libvirt_tls")),
                                                                  self.state.get("agent_config") or {})))

    def _make_certificates(self, names: list[str], members: list[str]) -> None:
        """The lab's CA; a server/peer certificate per etcd member; a client certificate per agent
        (CN = host), for the operator, the reader and etcd's root user."""
        from haagent.store.pki import CertificateAuthority

        ca = CertificateAuthority(self.layout.pki_dir, name=f"haagent lab {self.prefix} etcd CA")
        for h in members:
            # 127.0.0.1 and localhost: the member's loopback and unix-socket listeners
            ca.issue(f"member-{h}", h, server=True, server_names=(L.address(h), "127.0.0.1", "localhost"))
        for h in names:
            ca.issue(f"agent-{h}", h)
        for user in ("root", L.OPERATOR_USER, L.READER_USER):
            ca.issue(user, user)

    def _make_libvirt_certificates(self, names: list[str]) -> None:
        """One certificate per host (its lab address; server and client use), from the lab's CA,
        copied where that host's libvirtd and QEMU read them (its own /etc/libvirt/pki)."""
        from haagent.store.pki import CertificateAuthority

        ca = CertificateAuthority(self.layout.pki_dir, name=f"haagent lab {self.prefix} CA")
        for h in names:
            files = ca.issue(f"libvirt-{h}", h, server=True, server_names=(L.address(h),))
            source = {"ca": ca.cert_path, "cert": files.cert, "key": files.key}
            for sub, entries in L.LIBVIRT_PKI_FILES.items():
                for role, name in entries:
                    dest = self.layout.host_dir(h) / "etc-libvirt" / "pki" / sub / name
                    _write(dest, source[role].read_bytes(), 0o600 if role == "key" else 0o644)

    def _setup_rbac(self, users: dict[str, str]) -> None:
        from haagent.errors import StoreError
        from haagent.store.rbac import setup_rbac

        store = self.etcd_store(timeout=2.0)
        try:
            setup_rbac(store, self.prefix, users)
        except StoreError as e:
            raise LabError(f"etcd RBAC setup failed: {e}") from e
        finally:
            store.close()

    def _fencing_section(self, h: str) -> str:
        """Every host's BMC as an IPMI fence device: any host may be the leader that fences."""
        return L.fencing_toml(self.hosts(), str(self.layout.bmc_password_file),
                              L.FENCE_CHECK_INTERVAL if self.state.get("monitoring") else None)

    def _boot(self, h: str, wait: bool = True) -> None:
        """Power a host on: a fresh init (new PID/mount namespaces), then its daemons."""
        lay = self.layout
        run_dir = lay.host_dir(h) / "run-libvirt"
        # /run is empty after a power cycle: stale pid and status files would make libvirtd
        # believe its dead QEMUs still run.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        pidfile = lay.init_pidfile(h)
        pidfile.unlink(missing_ok=True)
        binds = [f"{lay.host_dir(h) / sub}:{dst}" for sub, dst in L.LIBVIRT_BINDS]
        binds += [f"{lay.numa_dir(h)}:{L.SYS_NODE}", f"{L.QEMU}:{lay.real_qemu(h)}",
                  f"{lay.host_dir(h) / 'qemu-wrapper'}:{L.QEMU}"]
        _run(["nsenter", f"--net={NETNS_DIR / lay.netns(h)}", "--",
              sys.executable, "-I", INIT_SCRIPT, lay.hostname(h), str(pidfile), *binds], timeout=20)
        pid = int(pidfile.read_text())
        r = proc.ref(pid)
        if r is None:
            raise LabError(f"host {h}: init exited at once")
        self._update_host(h, init=r.to_json(), powered=True)
        self._apply_links(h)
        self._start_libvirtd(h)
        if h in self.etcd_members():
            self._start_etcd(h)
        self._start_agent(h)
        if wait:
            self._wait_libvirtd([h], timeout=60)

    def _power_off(self, h: str) -> None:
        r = self._init_ref(h)
        pidns = proc.ns_inode(r.pid, "pid") if proc.alive(r) else None
        netns = proc.ns_inode(str(NETNS_DIR / self.layout.netns(h)), "net")
        proc.kill(r)  # the kernel kills every other process of the PID namespace with it
        victims = [r] if r else []
        for pid in proc.pids():
            if pid != os.getpid() and (proc.ns_inode(pid, "net") == netns or
                                       (pidns and proc.ns_inode(pid, "pid") == pidns)):
                pr = proc.ref(pid)
                if pr:
                    proc.kill(pr)
                    victims.append(pr)
        self._update_host(h, powered=False)
        self._apply_links(h)
        left = proc.wait_gone(victims, timeout=10)
        if left:
            raise LabError(f"host {h}: processes {[x.pid for x in left]} survived SIGKILL")

    def _spawn(self, h: str, name: str, argv: list[str], cwd: str = "/") -> None:
        """Start a daemon inside the host, detached: its parent becomes the host's init."""
        pid = self._require_powered(h)
        log = self.layout.logs_dir(h) / f"{name}.log"
        with open(log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
            out.flush()
            subprocess.run(["nsenter", f"--target={pid}", "--net", "--mount", "--uts", "--ipc",
                            "--pid", f"--wd={cwd}", "--", "setsid", "-f", *argv],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=20, check=True)

    def _start_libvirtd(self, h: str) -> None:
        # Foreground under setsid: the init is its parent; the pid file stays in the host's /run.
        self._spawn(h, "libvirtd", ["libvirtd", "--listen", "--pid-file", "/run/libvirt/libvirtd.pid"])

    def _start_etcd(self, h: str) -> None:
        members = self.etcd_members()
        ip = L.address(h)
        http, unix = ("https", "unixs") if self.tls else ("http", "unix")
        cluster = ",".join(f"{m}={http}://{L.address(m)}:{L.ETCD_PEER_PORT}" for m in members)
        tls: list[str] = []
        if self.tls:
            from haagent.store.etcd_server import MemberTls
            pki = self.layout.pki_dir
            tls = MemberTls(pki / "ca.crt", pki / f"member-{h}.crt", pki / f"member-{h}.key").argv()
        # A power cut leaves the socket file behind, and etcd will not bind over it.
        (self.layout.etcd_dir(h) / f"localhost:{L.ETCD_CLIENT_PORT}").unlink(missing_ok=True)
        # The unix listener is a file literally named localhost:2379 in etcd's working
        # directory: how clients in the root namespace reach the member without a lab address.
        self._spawn(h, "etcd", [
            "etcd", "--name", h, "--data-dir", str(self.layout.etcd_dir(h) / "data"),
            "--listen-peer-urls", f"{http}://{ip}:{L.ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"{http}://{ip}:{L.ETCD_PEER_PORT}",
            "--listen-client-urls",
            f"{http}://{ip}:{L.ETCD_CLIENT_PORT},{http}://127.0.0.1:{L.ETCD_CLIENT_PORT},"
            f"{unix}://localhost:{L.ETCD_CLIENT_PORT}",
            "--advertise-client-urls", f"{http}://{ip}:{L.ETCD_CLIENT_PORT}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"haagent-lab-{self.prefix}",
            # Raft timings for a LAN (docs/timings.md): when the etcd leader's host dies, the new
            # etcd leader extends every lease by its election timeout, which a failover then waits.
            "--heartbeat-interval", str(L.ETCD_HEARTBEAT_MS), "--election-timeout", str(L.ETCD_ELECTION_MS),
            "--pre-vote", "--logger", "zap", "--log-level", "warn", *tls,
        ], cwd=str(self.layout.etcd_dir(h)))

    def _start_agent(self, h: str) -> None:
        if not _agent_available():
            with open(self.layout.logs_dir(h) / "agent.log", "a") as f:
                f.write("haagent agent is not available in this installation; not started\n")
            return
        self._spawn(h, "agent", [*_haagent_argv(), "agent", "--config", str(self.layout.agent_config(h))])

    def _service_pids(self, h: str, service: str) -> list[int]:
        """PIDs (root namespace) of one daemon of a powered host: libvirtd, etcd or agent."""
        r = self._init_ref(h)
        if not proc.alive(r):
            return []
        assert r is not None
        pidns = proc.ns_inode(r.pid, "pid")
        found = []
        for pid in proc.in_namespace("pid", pidns) if pidns else []:
            if pid == r.pid:
                continue
            if service == "agent":
                args = proc.cmdline(pid)
                if "agent" in args and str(self.layout.agent_config(h)) in args:
                    found.append(pid)
            elif proc.comm(pid) == service:
                found.append(pid)
        return found

    # == internals: waiting and VMs ==============================================================

    def _connect(self, h: str, timeout: float) -> Any:
        import libvirt
        libvirt.registerErrorHandler(lambda *_a: None, None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return libvirt.open(self.libvirt_uri(h))
            except libvirt.libvirtError as e:
                if time.monotonic() > deadline:
                    raise LabError(f"host {h}: libvirtd does not answer on "
                                   f"{self.layout.libvirt_socket(h)}: {e}") from e
                time.sleep(0.05)

    def _wait_libvirtd(self, names: list[str], timeout: float) -> None:
        for h in names:
            self._connect(h, timeout).close()

    def _wait_etcd(self, members: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for h in members:
            last: Exception | None = None
            while True:
                try:
                    client = self.etcd_client(h, timeout=1.0)
                    try:
                        client.get("/haagent-lab/ready")  # linearizable: needs a leader
                    finally:
                        client.close()
                    break
                except Exception as e:  # grpc errors of every kind while the member starts
                    last = e
                    if time.monotonic() > deadline:
                        raise LabError(f"etcd member {h} not healthy after {timeout:g}s: {last}") from e
                    time.sleep(0.1)

    def _install_guest(self, step: Progress) -> None:
        from haagent.lab import guest_image
        image = guest_image.install(guest_image.build(), self.layout.guest_dir)
        self.layout.guest_console("vm").parent.mkdir(exist_ok=True)
        state = self.state
        state["guest_image"] = {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline}
        self._save_state(state)
        step(f"Linux guest: {image.kernel.name}, {image.initrd.name} "
             f"({image.initrd.stat().st_size // 1024} KiB) from {guest_image.cache_dir()}")

    def guest_boot(self, vm: str) -> L.GuestBoot | None:
        """How the lab boots ``vm`` into its Linux guest; None in a lab without guests."""
        image = self.state.get("guest_image")
        if not image:
            return None
        return L.GuestBoot(kernel=image["kernel"], initrd=image["initrd"], cmdline=image["cmdline"],
                           console=str(self.layout.guest_console(vm)), socket=self.layout.guest_socket(vm))

    def guest(self, vm: str) -> "Guest":
        """The Linux guest ``vm``: its ticks and its load channel (``lab up --guest linux``)."""
        from haagent.lab.guest import Guest
        if vm not in self.state.get("vms", {}):
            raise LabError(f"lab {self.prefix} has no VM {vm!r}")
        if self.guest_boot(vm) is None:
            raise LabError(f"lab {self.prefix} runs VMs without an OS; `haagent lab up --guest linux` "
                           "boots them into the Linux guest")
        return Guest(self, vm)

    def load(self, vm: str, cpu: int, mem: int, dirty: int = 0, timeout: float = 30) -> dict[str, int]:
        """Make the guest burn ``cpu`` vCPUs and hold ``mem`` MiB (rewriting ``dirty`` MiB/s of it)."""
        return self.guest(vm).load(cpu, mem, dirty, timeout=timeout)

    def _create_vms(self, vm_list: list[str], homes: dict[str, str], kvm: bool, disk: bool, ha: bool,
                    memory_mib: int, vcpus: int) -> None:
        def on_host(h: str) -> None:
            conn = self._connect(h, 10)
            try:
                for vm in [v for v in vm_list if homes[v] == h]:
                    image = None
                    if disk:
                        image = str(self.layout.shared_dir / f"{vm}.qcow2")
                        _run(["qemu-img", "create", "-q", "-f", "qcow2", image, L.DISK_SIZE])
                    dom = conn.defineXML(L.domain_xml(vm, self.layout.vm_uuid(vm), self.prefix, kvm, image, ha,
                                                      memory_mib, vcpus, self.guest_boot(vm)))
                    dom.setAutostart(0)  # a host that comes back must start nothing by itself
                    dom.create()
            finally:
                conn.close()

        hosts = sorted(set(homes.values()))
        with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
            for f in [pool.submit(on_host, h) for h in hosts]:
                f.result()

    def _running_vms(self, h: str, timeout: float) -> list[str] | None:
        if not self.layout.libvirt_socket(h).exists() or self.init_pid(h) is None:
            return None
        import libvirt
        libvirt.registerErrorHandler(lambda *_a: None, None)
        try:
            conn = libvirt.open(self.libvirt_uri(h))
        except libvirt.libvirtError:
            return None
        try:
            return sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        except libvirt.libvirtError:
            return None
        finally:
            conn.close()

    def _agent_keys(self, names: list[str], timeout: float) -> dict[str, bool | None]:
        """Which hosts' agents hold their ``alive`` key in etcd (None: etcd not reachable)."""
        try:
            from haagent.store.keys import Keys
        except ImportError:
            return {}
        keys = Keys(self.prefix)
        for m in self.etcd_members():
            if self.init_pid(m) is None or not self._service_pids(m, "etcd"):
                continue
            try:
                client = self.etcd_client(m, timeout=min(timeout, 1.0))
                try:
                    return {h: client.get(keys.host_alive(h))[0] is not None for h in names}
                finally:
                    client.close()
            except Exception:  # this member has no quorum or is restarting: try the next one
                continue
        return {h: None for h in names}

    # == internals: BMCs =========================================================================

    def _start_bmcd(self, step: Progress) -> None:
        if not _bmc_available():
            step("fake BMCs not available in this installation (fencing.fakes.bmc): skipped")
            return
        log = self.layout.bmc_dir / "bmcd.log"
        with open(log, "ab") as out:
            subprocess.run(["nsenter", f"--net={NETNS_DIR / self.layout.mgmt_netns}", "--",
                            "setsid", "-f", *_haagent_argv(), "lab", "bmcd", "--prefix", self.prefix],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=20, check=True)
        step(f"BMC supervisor starting on the management network ({L.MGMT_NET}.101-)")

    def wait_bmcs(self, timeout: float = 20) -> None:
        """Wait until the BMC supervisor has bound every BMC's port."""
        if not _bmc_available():
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = _read_json(self.layout.bmcd_pidfile)
            if data.get("ready") and proc.alive(proc.ProcRef.from_json(data.get("proc"))):
                return
            time.sleep(0.05)
        raise LabError(f"BMC supervisor not ready after {timeout:g}s; see {self.layout.bmc_dir / 'bmcd.log'}")

    # == monitoring =============================================================================

    @property
    def monitoring(self) -> bool:
        return bool(self.state.get("monitoring"))

    def _start_monitoring(self, names: list[str]) -> None:
        """Prometheus and Alertmanager in the bridge's namespace, on MONITOR_ADDRESS."""
        d = self.layout.monitoring_dir
        for sub in ("prometheus-data", "alertmanager-data"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # A copy: the lab evaluates the rules as they were when it was built.
        _write(d / "rules.yml", RULES_FILE.read_text())
        _write(d / "prometheus.yml", L.prometheus_yml(self.prefix, names, str(d / "rules.yml")))
        _write(d / "alertmanager.yml", L.alertmanager_yml(self.prefix))
        self._spawn_monitor("alertmanager", [
            ALERTMANAGER, f"--config.file={d / 'alertmanager.yml'}", f"--storage.path={d / 'alertmanager-data'}",
            f"--web.listen-address={L.MONITOR_ADDRESS}:{L.ALERTMANAGER_PORT}",
            f"--web.external-url={L.alertmanager_url()}",
            "--cluster.listen-address=",  # one Alertmanager: no gossip port
        ])
        self._spawn_monitor("prometheus", [
            PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'prometheus-data'}",
            f"--web.listen-address={L.MONITOR_ADDRESS}:{L.PROMETHEUS_PORT}",
            f"--web.external-url={L.prometheus_url()}", "--storage.tsdb.retention.time=1d",
        ])

    def _spawn_monitor(self, name: str, argv: list[str]) -> None:
        # Detached in the bridge's namespace, like the BMC supervisor in the management one;
        # `down` stops it with everything else in the lab's namespaces.
        with open(self.layout.monitoring_dir / f"{name}.log", "ab") as out:
            subprocess.run(["nsenter", f"--net={NETNS_DIR / self.layout.bridge_netns}", "--",
                            "setsid", "-f", *argv], cwd=self.layout.monitoring_dir,
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=20, check=True)

    def monitoring_get(self, url: str, timeout: float = 5.0) -> Any:
        """GET a Prometheus or Alertmanager URL from inside the lab (the bridge's namespace); JSON."""
        if not self.monitoring:
            raise LabError(f"lab {self.prefix} has no monitoring (`haagent lab up --monitoring`)")
        res = _run(["nsenter", f"--net={NETNS_DIR / self.layout.bridge_netns}", "--",
                    sys.executable, "-I", "-c", _FETCH, url, str(timeout)], timeout=timeout + 10, check=False)
        if res.returncode != 0:
            raise LabError(f"{url}: {(res.stderr or '').strip().splitlines()[-1:] or ['no answer']}")
        return json.loads(res.stdout)

    def query(self, expr: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Evaluate PromQL now in the lab's Prometheus: the result vector (or matrix)."""
        from urllib.parse import urlencode
        data = self.monitoring_get(L.prometheus_url("/api/v1/query?" + urlencode({"query": expr})), timeout)
        if data.get("status") != "success":
            raise LabError(f"Prometheus refused {expr!r}: {data.get('error')}")
        result = data["data"]["result"]
        if data["data"].get("resultType") in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return result

    def wait_monitoring(self, timeout: float = 30) -> None:
        """Wait until Prometheus and Alertmanager answer and Prometheus scrapes an agent."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.monitoring_get(L.alertmanager_url("/api/v2/status"), timeout=2)
                if self.query("up == 1", timeout=2):
                    return
                last = "no agent scraped yet"
            except LabError as e:
                last = str(e)
            time.sleep(0.5)
        raise LabError(f"monitoring not ready after {timeout:g}s ({last}); see {self.layout.monitoring_dir}/*.log")

    # == internals: state and locking ============================================================

    def _save_state(self, state: dict[str, Any]) -> None:
        _write(self.layout.state_file, json.dumps(state, indent=1))

    @contextlib.contextmanager
    def _locked(self, timeout: float = 120) -> Iterator[None]:
        self.layout.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LabError(f"lab {self.prefix} is busy (lock held for {timeout:g}s)") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _mounts_under(path: Path) -> list[str]:
        prefix = str(path) + "/"
        found = []
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    target = line.split()[4]
                    if target.startswith(prefix) or target == str(path):
                        found.append(target)
        except OSError:
            pass
        return sorted(found, key=len, reverse=True)


def from_fencing_faults_write(path: Path, mode: str, off_delay: float) -> None:
    """Write a BMC fault file in the format fencing/fakes/faults.py reads on every request."""
    try:
        from fencing.fakes.faults import write_fault_file
    except ImportError:
        _write(path, json.dumps({"mode": mode, "off_delay": float(off_delay)}))
        return
    write_fault_file(str(path), mode, off_delay)


def labs() -> list[str]:
    """Prefixes of the labs that have a directory on this machine."""
    try:
        return sorted(p.name for p in L.lab_root().iterdir() if (p / "state.json").exists())
    except OSError:
        return []
