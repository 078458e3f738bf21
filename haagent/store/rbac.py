"""etcd roles for haagent, in one place: what ``haagent etcd setup-rbac`` creates and what
docs/security.md shows as ``etcdctl`` commands.

With ``--client-cert-auth`` and auth enabled, etcd takes a TLS client's user from its
certificate's Common Name; the user's roles decide what it may read and write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from haagent.config import ETCD_ROLES
from haagent.errors import StoreError
from haagent.store.keys import Keys

ROOT_USER = "root"  # etcd's own: auth cannot be enabled without it; it may do everything


@dataclass(frozen=True)
class Permission:
    kind: str  # read, write or readwrite (etcd's names)
    prefix: str  # every key starting with it


def role_permissions(cluster: str) -> dict[str, tuple[Permission, ...]]:
    """Each haagent role and its permissions on the cluster's keys (nothing outside them)."""
    keys = Keys(cluster)
    return {
        # the agents: heartbeats, reports, election, placement, fencing records, events
        "haagent-agent": (Permission("readwrite", keys.root),),
        # people and tools that act: read everything, write only requests to the leader (fence ack,
        # host return): the leader checks and carries them out
        "haagent-operator": (Permission("read", keys.root), Permission("readwrite", keys.requests)),
        # dashboards and automation
        "haagent-reader": (Permission("read", keys.root),),
    }


ROLES = ETCD_ROLES  # check-config knows the names; a unit test holds role_permissions to them


def etcdctl_commands(cluster: str, users: Mapping[str, str]) -> list[str]:
    """The ``etcdctl`` commands that do what ``setup_rbac`` does (docs/security.md shows them)."""
    out = [f"etcdctl user add {ROOT_USER} --no-password", f"etcdctl user grant-role {ROOT_USER} root"]
    for role, perms in role_permissions(cluster).items():
        out.append(f"etcdctl role add {role}")
        for p in perms:
            out.append(f"etcdctl role grant-permission {role} --prefix=true {p.kind} {p.prefix}")
    for user, role in sorted(users.items()):
        out.append(f"etcdctl user add {user} --no-password")
        out.append(f"etcdctl user grant-role {user} {role}")
    out.append("etcdctl auth enable")
    return out


def _already(exc: BaseException, *phrases: str) -> bool:
    text = str(exc) + " " + str(getattr(exc, "__cause__", "") or "")
    return any(p in text for p in phrases)


def setup_rbac(store: Any, cluster: str, users: Mapping[str, str], say: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Create haagent's roles (exactly their permissions), the users (CN -> role), etcd's root
    user, and enable auth. Idempotent: run it again after adding users. Returns what changed.

    ``store`` must act as etcd's root user (a certificate with CN root) once auth is on.
    """
    from etcd3 import etcdrpc
    from etcd3.etcdrpc import auth_pb2

    for user, role in users.items():
        if role not in ROLES:
            raise ValueError(f"user {user!r}: unknown role {role!r} (roles: {', '.join(ROLES)})")
    kinds = {"read": auth_pb2.Permission.READ, "write": auth_pb2.Permission.WRITE,
             "readwrite": auth_pb2.Permission.READWRITE}
    changed: list[str] = []

    def auth(method: str, request: Any) -> Any:
        def run(c: Any) -> Any:
            return getattr(etcdrpc.AuthStub(c.channel), method)(request, c.timeout, credentials=c.call_credentials,
                                                                metadata=c.metadata)
        return store.call(f"auth {method}", run)

    def add_user(name: str) -> None:
        # NOTE: python3-etcd3's protos predate UserAddOptions; field 3 {no_password: true} is appended
        # as raw bytes (etcd 3.4 reads it). A user without a password can only be a certificate's CN.
        request = etcdrpc.AuthUserAddRequest.FromString(
            etcdrpc.AuthUserAddRequest(name=name).SerializeToString() + b"\x1a\x02\x08\x01")
        try:
            auth("UserAdd", request)
        except StoreError as exc:
            if _already(exc, "user name already exists"):
                return
            raise
        changed.append(f"user {name} added")

    def grant_role(user: str, role: str) -> None:
        got = auth("UserGet", etcdrpc.AuthUserGetRequest(name=user))
        if role in got.roles:
            return
        auth("UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user=user, role=role))
        changed.append(f"user {user} granted {role}")

    add_user(ROOT_USER)
    grant_role(ROOT_USER, "root")
    for role, perms in role_permissions(cluster).items():
        try:
            auth("RoleAdd", etcdrpc.AuthRoleAddRequest(name=role))
            changed.append(f"role {role} added")
        except StoreError as exc:
            if not _already(exc, "role name already exists"):
                raise
        want = {(kinds[p.kind], p.prefix.encode(), _prefix_end(p.prefix)) for p in perms}
        have = {(p.permType, p.key, p.range_end) for p in auth("RoleGet", etcdrpc.AuthRoleGetRequest(role=role)).perm}
        for kind, key, end in sorted(have - want):
            # a permission someone added by hand, or a wider one from before: the role is exactly its list
            auth("RoleRevokePermission", etcdrpc.AuthRoleRevokePermissionRequest(role=role, key=key, range_end=end))
            changed.append(f"role {role}: revoked {auth_pb2.Permission.Type.Name(kind).lower()} {key.decode(errors='replace')}")
        for kind, key, end in sorted(want - have):
            perm = auth_pb2.Permission(permType=kind, key=key, range_end=end)
            auth("RoleGrantPermission", etcdrpc.AuthRoleGrantPermissionRequest(name=role, perm=perm))
            changed.append(f"role {role}: granted {auth_pb2.Permission.Type.Name(kind).lower()} {key.decode()}")
    for user, role in sorted(users.items()):
        add_user(user)
        grant_role(user, role)
    auth("AuthEnable", etcdrpc.AuthEnableRequest())  # already on: etcd ignores it
    for line in changed:
        say(line)
    return changed


def _prefix_end(prefix: str) -> bytes:
    from haagent.store.client import prefix_end
    return prefix_end(prefix)
