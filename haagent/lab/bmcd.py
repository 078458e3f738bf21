"""The lab's BMC supervisor: one process per lab, in the management network's namespace.

It serves one fake IPMI BMC (fencing.fakes.bmc.FakeBmc) per host, each on its own management
address and port (UDP 6230+N, see layout.BMC_PORT_BASE). A BMC's power is the host's real power: "off" is ``Lab.crash``, "on" starts
``Lab.revive`` and returns at once (a real BMC does not wait for the OS to boot), and "status"
reads whether the host's init is alive. One process for all BMCs keeps the lab small; it runs
in the root PID and mount namespaces, so it can crash and revive hosts like the CLI does.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

from haagent.lab import layout as L
from haagent.lab import proc
from haagent.lab.lab import Lab, _write
from haagent.log import configure, get_logger

log = get_logger("haagent.lab.bmcd")


class LabPower:
    """The power a lab host's BMC switches (fencing.fakes.power.PowerBackend)."""

    def __init__(self, lab: Lab, host: str):
        self.lab = lab
        self.host = host
        self._booting: threading.Thread | None = None
        self._lock = threading.Lock()

    def is_on(self) -> bool:
        with self._lock:
            booting = self._booting is not None and self._booting.is_alive()
        return booting or self.lab.init_pid(self.host) is not None

    def power_off(self) -> None:
        log.info("bmc power off", host=self.host)
        self.lab.crash(self.host)

    def power_on(self) -> None:
        with self._lock:
            if self._booting is not None and self._booting.is_alive():
                return
            if self.lab.init_pid(self.host) is not None:
                return
            log.info("bmc power on", host=self.host)
            self._booting = threading.Thread(target=self._boot, name=f"boot-{self.host}", daemon=True)
            self._booting.start()

    def _boot(self) -> None:
        try:
            self.lab.revive(self.host)
        except Exception as e:  # the host stays off; the BMC keeps answering with the truth
            log.error("power on failed", host=self.host, error=str(e))


def serve(prefix: str) -> None:
    """Serve every host's BMC until SIGTERM."""
    from fencing.fakes.bmc import FakeBmc

    configure("json")
    lab = Lab(prefix)
    password = lab.bmc_password_file.read_text().strip()
    bmcs: list[Any] = []
    for h in lab.hosts():
        bmc = FakeBmc({L.BMC_USER: password}, address=L.bmc_address(h), port=L.bmc_port(h),
                      backend=LabPower(lab, h), fault_file=str(lab.layout.bmc_fault_file(h)))
        bmcs.append(bmc.start())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    me = proc.ref(os.getpid())
    assert me is not None
    _write(lab.layout.bmcd_pidfile, json.dumps({"proc": me.to_json(), "ready": True}))
    log.info("bmcs serving", lab=prefix, hosts=lab.hosts(), ports=[L.bmc_port(h) for h in lab.hosts()])
    while not stop.wait(1.0):
        pass
    for bmc in bmcs:
        bmc.stop()
    log.info("bmcs stopped", lab=prefix)
