"""The lab's CA and the reading of refused TLS handshakes: what each refusal is blamed on."""

from __future__ import annotations

import datetime as dt

from haagent.store.client import tls_refusal
from haagent.store.pki import CertificateAuthority, certificate_problem, common_name, issued_by

REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Unwrap failed (TSI_DATA_CORRUPTED)"
UNTRUSTED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
             "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED")
DOWN = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"


def test_certificates_name_their_user_and_keys_are_private(tmp_path):
    ca = CertificateAuthority(tmp_path)
    files = ca.issue("agent-h1", "h1")
    assert common_name(str(files.cert)) == "h1"
    assert files.key.stat().st_mode & 0o777 == 0o600 and files.cert.stat().st_mode & 0o777 == 0o644
    assert issued_by(str(files.cert), str(ca.cert_path)) is True
    assert certificate_problem(str(files.cert)) is None
    again = CertificateAuthority(tmp_path).issue("again", "x")  # reloaded from its files: the same CA
    assert issued_by(str(again.cert), str(ca.cert_path)) is True


def test_each_refusal_is_blamed_on_its_cause(tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    other = CertificateAuthority(tmp_path / "other")
    now = dt.datetime.now(dt.timezone.utc)
    good = ca.issue("good", "alice")
    expired = ca.issue("old", "alice", not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1))
    foreign = other.issue("foreign", "alice")
    cacert = str(ca.cert_path)
    assert tls_refusal(DOWN, cacert, str(good.cert)) is None  # the network, not TLS
    assert "none is configured" in tls_refusal(REFUSED, cacert, None)
    assert "expired on" in tls_refusal(REFUSED, cacert, str(expired.cert))
    assert "not issued by the CA in etcd.ca_cert" in tls_refusal(REFUSED, cacert, str(foreign.cert))
    assert "not issued by a CA the server trusts" in tls_refusal(REFUSED, cacert, str(good.cert))
    assert "server's certificate is not trusted" in tls_refusal(UNTRUSTED, cacert, str(good.cert))
    assert certificate_problem(str(tmp_path / "missing.crt")).startswith("cannot read")
    (tmp_path / "junk.crt").write_text("junk")
    assert certificate_problem(str(tmp_path / "junk.crt")).endswith("is not a PEM certificate")
