"""``ssh``: soft fencing, running a configured command on the host over SSH (paramiko).

It cannot confirm power-off: ``status()`` only says whether the host still answers. The runner
therefore counts it only before a confirming level, or when the device is ``trusted = true``
(then "the host stopped answering SSH after the command" is taken as off). Host keys are checked
against ``known_hosts`` with RejectPolicy: an unknown or changed key is an error, never accepted.
"""

from __future__ import annotations

import socket
from typing import Any

from haagent.errors import FenceAuthError, FenceDeviceError, FenceUnreachable

from fencing.plugin import FencePlugin, Option, PowerState


class SshPlugin(FencePlugin):
    """Runs ``command`` (default: sysrq power-off) on the host; status is "it still answers"."""

    name = "ssh"
    description = "soft fencing over SSH (paramiko, known_hosts + RejectPolicy)"
    confirms_power = False
    options = (
        Option("address", "string", per_host=True, help="host address (default: the host's name)"),
        Option("port", "int", default=22, minimum=1, maximum=65535, per_host=True),
        Option("username", "string", default="root"),
        Option("key_file", "path", required=True, secret=True, help="private key file"),
        Option("known_hosts", "path", required=True, help="known_hosts file; unknown host keys are rejected"),
        Option("command", "string", default="echo o > /proc/sysrq-trigger",
               help="what powers the host off"),
        Option("status_command", "string", default="true"),
        Option("connect_timeout", "float", default=3.0, minimum=0.1, maximum=60),
    )

    def _connect(self, timeout: float) -> Any:
        import paramiko

        address = self.opts.get("address") or self.host
        port = int(self.opts.get("port", 22))
        where = f"ssh {self.opts.get('username', 'root')}@{address}:{port}"
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(self.opts["known_hosts"])
        except OSError as exc:
            raise FenceDeviceError(f"{where}: cannot read known_hosts {self.opts['known_hosts']}: {exc.strerror}") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        limit = max(0.1, min(float(self.opts.get("connect_timeout", 3.0)), timeout))
        try:
            pkey = _load_key(self.opts["key_file"])
            client.connect(address, port=port, username=self.opts.get("username", "root"), pkey=pkey,
                           timeout=limit, banner_timeout=limit, auth_timeout=limit, channel_timeout=limit,
                           allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException:
            client.close()
            raise FenceAuthError(f"{where}: host key does not match known_hosts (possible impostor)") from None
        except paramiko.AuthenticationException:
            client.close()
            raise FenceAuthError(f"{where}: authentication failed") from None
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc) or "not found in known" in str(exc):
                raise FenceAuthError(f"{where}: host key not in known_hosts (rejected)") from None
            raise FenceUnreachable(f"{where}: {type(exc).__name__}: {exc}") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise FenceUnreachable(f"{where}: no answer within {limit:.1f}s") from None
        except OSError as exc:
            client.close()
            raise FenceUnreachable(f"{where}: {exc.strerror or type(exc).__name__}") from None
        return client, where

    def _exec(self, command: str, timeout: float, dropping_is_success: bool) -> int:
        client, where = self._connect(timeout)
        try:
            _, stdout, _ = client.exec_command(command, timeout=timeout)
            channel = stdout.channel
            if not channel.status_event.wait(timeout):
                if dropping_is_success:
                    return 0  # a host powering off may never send its exit status
                raise FenceUnreachable(f"{where}: command gave no exit status within {timeout:.1f}s")
            return channel.recv_exit_status()
        except (EOFError, OSError, socket.timeout) as exc:
            if dropping_is_success:
                return 0  # the connection died under the command: the host is going down
            raise FenceUnreachable(f"{where}: connection lost ({type(exc).__name__})") from None
        finally:
            client.close()

    def status(self, timeout: float) -> PowerState:
        rc = self._exec(self.opts.get("status_command", "true"), timeout, dropping_is_success=False)
        if rc != 0:
            raise FenceDeviceError(f"status command exited {rc}")
        return PowerState.ON

    def set_power(self, on: bool, timeout: float) -> None:
        if on:
            raise FenceDeviceError(f"device {self.device}: ssh fencing cannot power a host on")
        rc = self._exec(self.opts.get("command", "echo o > /proc/sysrq-trigger"), timeout, dropping_is_success=True)
        if rc != 0:
            raise FenceDeviceError(f"device {self.device}: fencing command exited {rc}")

    def describe(self, action: str) -> str:
        return (f"ssh {self.opts.get('username', 'root')}@{self.opts.get('address') or self.host}:"
                f"{self.opts.get('port', 22)} key=*** {self.opts.get('command') if action == 'off' else action!r}")


def _load_key(path: str) -> Any:
    """Load a private key of any type paramiko supports (the content is never echoed)."""
    import paramiko

    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(path)
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(type(exc).__name__)
        except OSError as exc:
            raise FenceDeviceError(f"cannot read key_file {path}: {exc.strerror}") from None
    raise FenceDeviceError(f"key_file {path}: not a supported private key ({', '.join(errors)})")
