"""``fence_agent``: any ClusterLabs ``fence_*`` agent, driven through its stdin key=value protocol.

Secrets travel only on the agent's stdin (the command line holds just the agent's path), and
``action=`` is always sent: an agent given no action reboots the host. Exit codes: 0 success
(status: on), 2 status off, 1 any failure. NOTE: what an agent does with a secret afterwards is
its own business: fence_ipmilan hands it to ``ipmitool -P`` (which blanks it in its argv at start)
and fence_apc_snmp to ``snmpget -c``; prefer the native plugins where a secret must never show.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from typing import Any

from haagent.errors import FenceAuthError, FenceDeviceError, FenceTimeout, FenceUnreachable
from haagent.log import is_secret_key

from fencing.plugin import FencePlugin, Option, PowerState

_AGENT_RE = re.compile(r"^fence_[A-Za-z0-9_]+$")
_SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
_AUTH_WORDS = ("login", "password", "authenticat", "unauthorized", "credential")
_UNREACHABLE_WORDS = ("connect", "timed out", "timeout", "no route", "unreachable", "refused")


def resolve_agent(agent: str) -> str | None:
    """The agent's absolute path: an absolute path as given, or a ``fence_*`` name found on PATH or /usr/sbin."""
    if os.path.isabs(agent):
        return agent if os.access(agent, os.X_OK) else None
    if not _AGENT_RE.match(agent):
        return None
    return shutil.which(agent, path=_SEARCH_PATH)


class FenceAgentPlugin(FencePlugin):
    """Runs a ClusterLabs fence agent once per call (status, off, on)."""

    name = "fence_agent"
    description = "any ClusterLabs fence_* agent over its stdin protocol"
    options = (
        Option("agent", "string", required=True, help="fence_* name (found in PATH or /usr/sbin) or absolute path"),
        Option("ip", "string", help="device address (sent as ip=)"),
        Option("ipport", "int", minimum=1, maximum=65535),
        Option("username", "string", help="sent as username="),
        Option("password_file", "path", secret=True, help="file whose content is sent on stdin"),
        Option("secret_key", "string", default="password",
               help="stdin key that carries password_file's content (e.g. community for fence_apc_snmp)"),
        Option("plug", "string", per_host=True, help="outlet, VM or port the host hangs on (sent as plug=)"),
        Option("parameters", "string_list", default=(), per_host=True,
               help='extra non-secret "key=value" lines, e.g. ["lanplus=1", "cipher=3"]'),
    )

    @classmethod
    def check_option(cls, name: str, value: Any) -> str | None:
        if name != "parameters":
            return None
        for item in value:
            key, sep, _ = item.partition("=")
            key = key.strip()
            if not sep or not key:
                return f'each entry must be "key=value" (got {item!r:.40})'
            if any(c in item for c in "\n\r\0"):
                # one line each on the agent's stdin: a newline would smuggle in a second line
                return f"{key}: a line break or NUL is not allowed in a parameter"
            if key == "action":
                return "action is chosen by haagent (status, off, on), never set here"
            if is_secret_key(key) or key.endswith("_script"):
                return f"{key}: secrets are not accepted inline; put it in a file and set password_file (and secret_key)"
        return None

    def _stdin(self, action: str, timeout: float) -> tuple[str, str | None]:
        lines = [f"action={action}"]
        for key in ("ip", "ipport", "username", "plug"):
            if self.opts.get(key) not in (None, ""):
                lines.append(f"{key}={self.opts[key]}")
        has_timeout = False
        for item in self.opts.get("parameters") or ():
            key = item.split("=", 1)[0].strip()
            if key == "action" or key == self.opts.get("secret_key", "password"):
                continue  # the action is ours to choose; secrets only come from files
            has_timeout |= key == "power_timeout"
            lines.append(item)
        if not has_timeout:
            lines.append(f"power_timeout={max(1, int(timeout) - 1)}")
        secret = None
        if self.opts.get("password_file"):
            secret = self.secret("password_file")
            lines.append(f"{self.opts.get('secret_key', 'password')}={secret}")
        return "\n".join(lines) + "\n", secret

    def _run(self, action: str, timeout: float) -> int:
        agent = self.opts["agent"]
        path = resolve_agent(agent)
        if path is None:
            raise FenceDeviceError(f"device {self.device}: fence agent {agent} not found or not executable")
        stdin, secret = self._stdin(action, timeout)
        # A new session, so a deadline kills the agent and every helper it started (by its group id).
        proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise FenceTimeout(f"{agent} action={action}: no result within {timeout:.1f}s (killed)") from None
        rc = proc.returncode
        succeeded = rc in (0, 2) if action == "status" else rc == 0
        if succeeded:
            return rc
        text = " ".join((err or out or "").split())
        if secret:
            text = text.replace(secret, "***")
        text = text[-300:] or f"exit code {rc}"
        lowered = text.lower()
        if any(w in lowered for w in _AUTH_WORDS) and "connect" not in lowered:
            raise FenceAuthError(f"{agent} action={action} failed: {text}")
        if any(w in lowered for w in _UNREACHABLE_WORDS):
            raise FenceUnreachable(f"{agent} action={action} failed: {text}")
        raise FenceDeviceError(f"{agent} action={action} failed (exit {rc}): {text}")

    def status(self, timeout: float) -> PowerState:
        return PowerState.OFF if self._run("status", timeout) == 2 else PowerState.ON

    def set_power(self, on: bool, timeout: float) -> None:
        self._run("on" if on else "off", timeout)

    def describe(self, action: str) -> str:
        stdin = [f"action={action}"] + [f"{k}={self.opts[k]}" for k in ("ip", "ipport", "username", "plug")
                                        if self.opts.get(k) not in (None, "")]
        stdin += list(self.opts.get("parameters") or ())
        if self.opts.get("password_file"):
            stdin.append(f"{self.opts.get('secret_key', 'password')}=***")
        return f"{self.opts.get('agent')} <stdin: {' '.join(stdin)}>"
