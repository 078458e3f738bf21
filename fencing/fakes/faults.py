"""Live fault control for simulated devices: a JSON file another process rewrites at will.

The file looks like ``{"mode": "ok" | "fail" | "hang" | "empty" | "garbled", "off_delay": 0}``. It is re-read on every
request, so ``haagent lab bmc HOST hang`` takes effect on the very next packet. A missing or
half-written file means "no fault" rather than a crashed simulator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

MODES = ("ok", "fail", "hang", "empty", "garbled")


@dataclass(frozen=True)
class Faults:
    """The behaviour a simulated device should show right now."""

    # ok: behave; fail: answer every power request with an error; hang: stay silent; empty: answer
    # a power status request with success but no state (a BMC: no data bytes; a PDU: an empty
    # string); garbled: a status answer too short or out of range (a BMC: one byte 0x00, which a
    # careless reader takes for "off"; a PDU: outlet state 0). Neither may ever be read as "off".
    mode: str = "ok"
    off_delay: float = 0.0  # seconds between accepting "off" and the power really going off


def write_fault_file(path: str, mode: str = "ok", off_delay: float = 0.0) -> None:
    """Atomically replace a fault file (what ``lab bmc HOST ...`` calls)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"mode": mode, "off_delay": float(off_delay)}, f)
    os.replace(tmp, path)


class FaultControl:
    """Reads the current faults: from the file when one is given, else the constructor defaults."""

    def __init__(self, path: str | None = None, off_delay: float = 0.0):
        self.path = path
        self.default = Faults("ok", float(off_delay))

    def current(self) -> Faults:
        if not self.path:
            return self.default
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return self.default
        if not isinstance(data, dict):
            return self.default
        mode = data.get("mode", "ok")
        delay = data.get("off_delay", self.default.off_delay)
        if mode not in MODES:
            mode = "ok"
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            delay = self.default.off_delay
        return Faults(mode, float(delay))
