"""etcd over TLS with client certificates and haagent's roles (docs/security.md), on a real etcd:
who may do what, and the one line each refused client gets instead of a gRPC error."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from haagent.errors import StoreAccessDenied
from haagent.store.client import EtcdStore
from haagent.store.keys import Keys
from haagent.store.pki import CertificateAuthority
from haagent.store.port import Compare, Put

pytestmark = pytest.mark.etcd

K = Keys("it")


def _store(etcd_tls, cn: str | None) -> EtcdStore:
    if cn is None:
        return EtcdStore(etcd_tls.endpoints, 1.0, ca_cert=str(etcd_tls.ca.cert_path))
    return EtcdStore(etcd_tls.endpoints, 1.0, **etcd_tls.tls_kwargs(etcd_tls.client_cert(cn)))


def _config(tmp_path, etcd_tls, name: str, cert=None, users: dict | None = None) -> str:
    """A CLI config for cluster "it" presenting ``cert`` (CertFiles, or None for none)."""
    lines = [f'cluster = "it"', f'host = "{name}"', "[etcd]", f"endpoints = {json.dumps(etcd_tls.endpoints)}",
             "timeout = 0.5", f'ca_cert = "{etcd_tls.ca.cert_path}"']
    if cert is not None:
        lines += [f'cert = "{cert.cert}"', f'key = "{cert.key}"']
    if users:
        lines += ["[etcd.users]"] + [f'{u} = "{r}"' for u, r in users.items()]
    lines += ["[metrics]", 'listen = ""', "[libvirt]", "enabled = false"]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "haagent.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def root(etcd_tls):
    store = EtcdStore(etcd_tls.endpoints, 1.0, **etcd_tls.tls_kwargs())
    try:
        yield store
    finally:
        store.close()


def test_each_role_reaches_only_its_keys(etcd_tls, root):
    root.put(K.host_state("h9"), "{}")
    cases = {  # user: (may read the cluster's keys, may write requests/, may write elsewhere in the cluster)
        "h1": (True, True, True),
        "alice": (True, True, False),
        "graf": (True, False, False),
    }
    for cn, (read, write_requests, write_other) in cases.items():
        store = _store(etcd_tls, cn)
        try:
            for allowed, action in ((read, lambda: store.get_prefix(K.root)),
                                    (write_requests, lambda: store.put(K.request(f"probe-{cn}"), "{}")),
                                    (write_other, lambda: store.put(K.vm_placement("u1"), "h1"))):
                if allowed:
                    action()
                else:
                    with pytest.raises(StoreAccessDenied, match=f"etcd user '{cn}'"):
                        action()
            # no role reaches another cluster's keys, or etcd's own
            with pytest.raises(StoreAccessDenied):
                store.get("/haagent/other/leader")
        finally:
            store.close()


def test_operator_acks_a_fence_but_cannot_change_placement(tmp_path, etcd_tls, root):
    root.put(K.host_state("h3"), json.dumps({"state": "fencing", "reason": "test", "epoch": 1, "since": 0.0,
                                             "failover": "failover-h3-1-500"}))
    root.put(K.vm_placement("u3"), "h3")
    alice = _config(tmp_path, etcd_tls, "alice", etcd_tls.client_cert("alice"))
    res = _cli("fence", "ack", "h3", "--yes", "--config", alice)
    assert res.returncode == 0, res.stderr
    assert "failover failover-h3-1-500" in res.stdout
    acks = [json.loads(kv.value) for kv in root.get_prefix(K.requests)[0] if kv.key.startswith(K.request("fence_ack-h3"))]
    assert [a["failover"] for a in acks] == ["failover-h3-1-500"]
    store = _store(etcd_tls, "alice")
    try:
        with pytest.raises(StoreAccessDenied, match="permission denied: etcd user 'alice'"):
            store.put(K.vm_placement("u3"), "h1")
        with pytest.raises(StoreAccessDenied):  # nor inside a transaction with a request
            store.txn([Compare(K.vm_placement("u3"), "value", "==", "h3")],
                      [Put(K.request("sneaky"), "{}"), Put(K.vm_placement("u3"), "h1")])
    finally:
        store.close()
    assert root.get(K.vm_placement("u3")).value == b"h3"
    assert root.get(K.request("sneaky")) is None


def test_reader_and_operator_see_the_status(tmp_path, etcd_tls):
    for cn in ("graf", "alice"):
        res = _cli("status", "--json", "--config", _config(tmp_path, etcd_tls, cn, etcd_tls.client_cert(cn)))
        assert res.returncode == 0, res.stderr
        assert "hosts" in json.loads(res.stdout)


def _expired(etcd_tls):
    now = dt.datetime.now(dt.timezone.utc)
    return etcd_tls.ca.issue("expired-alice", "alice", not_before=now - dt.timedelta(days=30),
                             not_after=now - dt.timedelta(days=1))


def _other_ca(etcd_tls, tmp_path):
    return CertificateAuthority(tmp_path / "other-ca", name="someone else's CA").issue("alice", "alice")


@pytest.mark.parametrize("case, cause", [
    ("no cert", "TLS: etcd requires a client certificate and none is configured (set etcd.cert and etcd.key)"),
    ("another CA", "it was not issued by the CA in etcd.ca_cert"),
    ("reader writes", "permission denied: etcd user 'graf'"),
])
def test_a_refused_client_gets_one_line_naming_the_cause(tmp_path, etcd_tls, root, case, cause):
    cert = {"no cert": lambda: None, "another CA": lambda: _other_ca(etcd_tls, tmp_path),
            "reader writes": lambda: etcd_tls.client_cert("graf")}[case]()
    res = _cli("host", "return", "h9", "--config", _config(tmp_path, etcd_tls, "client", cert))
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.startswith("haagent: etcd refused the request: ") and cause in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr  # one line: no traceback, no gRPC core log
    assert not [kv for kv in root.get_prefix(K.requests)[0] if kv.key.startswith(K.request("host_return-h9"))]


def test_an_expired_certificate_is_named_by_check_config_and_by_etcd(tmp_path, etcd_tls):
    expired = _expired(etcd_tls)
    res = _cli("check-config", "--config", _config(tmp_path, etcd_tls, "client", expired))
    assert res.returncode == 2
    [problem] = res.stderr.splitlines()[1:]  # after the "invalid configuration FILE" header
    assert problem.startswith(f"etcd.cert: certificate {expired.cert} expired on "), res.stderr
    # a client built past the config (or whose certificate expired since) hears it from the handshake
    store = EtcdStore(etcd_tls.endpoints, 1.0, ca_cert=str(etcd_tls.ca.cert_path), cert=str(expired.cert),
                      key=str(expired.key))
    try:
        with pytest.raises(StoreAccessDenied, match=r"TLS: etcd refused the client certificate: certificate .* expired on"):
            store.put(K.request("x"), "{}")
    finally:
        store.close()


def test_a_server_the_ca_does_not_vouch_for_is_named(tmp_path, etcd_tls):
    other = CertificateAuthority(tmp_path / "other-ca")
    cert = etcd_tls.client_cert("alice")
    store = EtcdStore(etcd_tls.endpoints, 1.0, ca_cert=str(other.cert_path), cert=str(cert.cert), key=str(cert.key))
    try:
        with pytest.raises(StoreAccessDenied, match="the server's certificate is not trusted by etcd.ca_cert"):
            store.get(K.leader)
    finally:
        store.close()


def test_setup_rbac_is_idempotent_and_narrows_a_widened_role(tmp_path, etcd_tls):
    users = {"h1": "haagent-agent", "h2": "haagent-agent", "alice": "haagent-operator", "graf": "haagent-reader"}
    cfg = _config(tmp_path, etcd_tls, "admin", etcd_tls.root, users)
    res = _cli("etcd", "setup-rbac", "--config", cfg)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("nothing to change; auth is enabled")
    tls = etcd_tls.tls_kwargs()
    subprocess.run(["etcdctl", f"--endpoints={etcd_tls.endpoints[0]}", f"--cacert={tls['ca_cert']}",
                    f"--cert={tls['cert']}", f"--key={tls['key']}",
                    "role", "grant-permission", "haagent-reader", "--prefix=true", "readwrite", "/"],
                   check=True, capture_output=True, timeout=30)
    res = _cli("etcd", "setup-rbac", "--config", _config(tmp_path, etcd_tls, "admin2", etcd_tls.root,
                                                        {**users, "bob": "haagent-operator"}))
    assert res.returncode == 0, res.stderr
    assert "role haagent-reader: revoked readwrite /" in res.stdout
    assert "user bob added" in res.stdout and "user bob granted haagent-operator" in res.stdout
    graf = _store(etcd_tls, "graf")
    try:
        with pytest.raises(StoreAccessDenied):
            graf.put(K.request("x"), "{}")
    finally:
        graf.close()


def test_setup_rbac_refuses_a_certificate_that_is_not_root(tmp_path, etcd_tls):
    res = _cli("etcd", "setup-rbac", "--config", _config(tmp_path, etcd_tls, "alice", etcd_tls.client_cert("alice")))
    assert res.returncode == 2
    assert "needs the certificate of etcd's root user (CN root), got CN 'alice'" in res.stderr


def test_the_documented_etcdctl_commands_set_up_what_setup_rbac_would(tmp_path):
    """docs/security.md's etcdctl commands, run on a fresh etcd, leave setup-rbac nothing to change."""
    from haagent.store.etcd_server import EtcdCluster
    from haagent.store.rbac import etcdctl_commands, setup_rbac

    users = {"kvm1": "haagent-agent", "alice": "haagent-operator", "grafana": "haagent-reader"}
    with EtcdCluster(1, tmp_path / "etcd", tls=True) as fresh:
        tls = fresh.tls_kwargs()
        base = ["etcdctl", f"--endpoints={fresh.endpoints[0]}", f"--cacert={tls['ca_cert']}",
                f"--cert={tls['cert']}", f"--key={tls['key']}"]
        for line in etcdctl_commands("prod", users):
            subprocess.run(base + line.split()[1:], check=True, capture_output=True, timeout=30,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        store = EtcdStore(fresh.endpoints, 1.0, **tls)
        try:
            assert setup_rbac(store, "prod", users) == []
        finally:
            store.close()
