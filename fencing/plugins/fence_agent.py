"""``fence_agent``: any ClusterLabs ``fence_*`` agent, driven through its stdin key=value protocol.

Secrets travel only on the agent's stdin (the command line holds just the agent's path), and
``action=`` is always sent: an agent given no action reboots the host. Exit codes: 0 success
(status: on), 2 status off, 1 any failure. A status reads "off" only when the agent both exits 2
and prints ``Status: OFF`` (fencing.py's own answer): a shell script with a syntax error, or a
Python that cannot start, also exits 2. NOTE: what an agent does with a secret afterwards is
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

from fencing.plugin import FenceBadReply, FencePlugin, Option, PowerState, secret_file_ok

_AGENT_RE = re.compile(r"^fence_[A-Za-z0-9_]+$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_STATUS_RE = re.compile(r"^\s*Status:\s*(\S+)\s*$", re.M | re.I)
_LINE_BREAKS = "\n\r\0"
# Parameters the runner owns: fencing.py reads action= (older agents also took option= for it).
_ACTION_KEYS = ("action", "option")
# Parameter keys (lower case, '-' as '_') that carry a secret inline, as fence agents name them:
# passwd, passwd_script, snmp_priv_passwd, secret_key (aws), apikey (ibm_vpc), token (ibm_powervs)...
_SECRET_WORDS = ("pass", "secret", "token", "apikey", "api_key", "community", "credential", "auth_key",
                 "priv_key", "private_key")
# Parameters naming a file that holds a secret: allowed, but the file must be private like ours.
_SECRET_FILE_KEYS = ("identity_file", "token_file", "tlskey")
_SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
_AUTH_WORDS = ("login", "password", "authenticat", "unauthorized", "credential")
_UNREACHABLE_WORDS = ("connect", "timed out", "timeout", "no route", "unreachable", "refused")


def _normal_key(key: str) -> str:
    """A parameter key as fencing.py matches it (it maps '-' and '_' alike)."""
    return key.strip().lower().replace("-", "_")


def _is_secret_parameter(key: str) -> bool:
    k = _normal_key(key)
    return k not in _SECRET_FILE_KEYS and (is_secret_key(k) or k.endswith("_script")
                                           or any(word in k for word in _SECRET_WORDS))


def _parameter_problem(item: str, check_files: bool = True) -> str | None:
    """The problem with one ``key=value`` stdin line from ``parameters``, or None."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        return f'each entry must be "key=value" (got {item!r:.40})'
    if any(c in item for c in _LINE_BREAKS):
        # one line each on the agent's stdin: a newline would smuggle in a second line
        shown = repr(key)[:40] if any(c in key for c in _LINE_BREAKS) else key  # error lines stay one line
        return f"{shown}: a line break or NUL is not allowed in a parameter"
    k = _normal_key(key)
    if k in _ACTION_KEYS:
        return f"{key}: the action is chosen by haagent (status, off, on), never set here"
    if _is_secret_parameter(key):
        return f"{key}: secrets are not accepted inline; put it in a file and set password_file (and secret_key)"
    if k in _SECRET_FILE_KEYS and check_files:
        problem = secret_file_ok(value.strip())
        if problem:
            return f"{key}: {problem}"
    return None


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
        if name == "secret_key":
            if not _KEY_RE.match(value) or value.lower() in _ACTION_KEYS:
                return f"must be the agent's stdin key for the secret, e.g. password or community (got {value!r:.40})"
            return None
        if name == "parameters":
            for item in value:
                problem = _parameter_problem(item)
                if problem:
                    return problem
            return None
        if isinstance(value, str) and any(c in value for c in _LINE_BREAKS):
            # every option becomes one line on the agent's stdin: a line break would add another
            return "a line break or NUL is not allowed (it would add a line to the agent's stdin)"
        return None

    def _stdin(self, action: str, timeout: float) -> tuple[str, str | None]:
        # NOTE: config validation refuses all of this already; these checks hold for a plugin built
        # by other code, because one smuggled line (action=reboot) changes what the agent does.
        lines = [f"action={action}"]
        for key in ("ip", "ipport", "username", "plug"):
            if self.opts.get(key) not in (None, ""):
                lines.append(f"{key}={self.opts[key]}")
        has_timeout = False
        secret_key = self.opts.get("secret_key", "password")
        for item in self.opts.get("parameters") or ():
            problem = _parameter_problem(item, check_files=False)
            if problem:
                raise FenceDeviceError(f"device {self.device}: parameters: {problem}")
            key = item.split("=", 1)[0].strip()
            if key == secret_key:
                raise FenceDeviceError(f"device {self.device}: parameters: {key}: secrets only come from password_file")
            has_timeout |= key == "power_timeout"
            lines.append(item)
        if not has_timeout:
            lines.append(f"power_timeout={max(1, int(timeout) - 1)}")
        for line in lines:
            if any(c in line for c in _LINE_BREAKS):
                raise FenceDeviceError(f"device {self.device}: {repr(line.split('=', 1)[0])[:40]}: holds a line "
                                       "break or NUL")
        if not _KEY_RE.match(secret_key) or secret_key.lower() in _ACTION_KEYS:
            raise FenceDeviceError(f"device {self.device}: secret_key {secret_key!r:.40} is not a stdin key")
        secret = None
        if self.opts.get("password_file"):
            secret = self.secret("password_file")
            if any(c in secret for c in _LINE_BREAKS):
                raise FenceDeviceError(f"device {self.device}: password_file {self.opts['password_file']} holds "
                                       "more than one line (a line break or NUL inside the secret)")
            lines.append(f"{secret_key}={secret}")
        return "\n".join(lines) + "\n", secret

    def _run(self, action: str, timeout: float) -> tuple[int, str]:
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
            return rc, out or ""
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
        rc, out = self._run("status", timeout)
        said = {word.upper() for word in _STATUS_RE.findall(out)}
        if rc == 2 and said == {"OFF"}:
            return PowerState.OFF
        if rc == 0 and "OFF" not in said:
            return PowerState.ON  # exit 0 is "on" (reading on is the safe side: the runner switches off)
        shown = ", ".join(f"Status: {w[:12]}" for w in sorted(said)) or "no 'Status:' line"
        raise FenceBadReply(f"{self.opts['agent']} action=status: exit {rc} with {shown}; only exit 2 with "
                            "'Status: OFF' reads as off")

    def set_power(self, on: bool, timeout: float) -> None:
        self._run("on" if on else "off", timeout)

    def describe(self, action: str) -> str:
        stdin = [f"action={action}"] + [f"{k}={self.opts[k]}" for k in ("ip", "ipport", "username", "plug")
                                        if self.opts.get(k) not in (None, "")]
        for item in self.opts.get("parameters") or ():
            # validation refuses inline secrets; mask anything secret-looking all the same
            key = item.split("=", 1)[0].strip()
            stdin.append(f"{key}=***" if _is_secret_parameter(key) else repr(item)[1:-1])
        if self.opts.get("password_file"):
            stdin.append(f"{self.opts.get('secret_key', 'password')}=***")
        return f"{self.opts.get('agent')} <stdin: {' '.join(stdin)}>"
