"""A small certificate authority for etcd's TLS: what the lab and the TLS tests make.

etcd maps a client certificate's Common Name to its user when auth is on, so a client
certificate's CN is the etcd user it acts as (docs/security.md). Keys are ECDSA P-256, written
0600; certificates 0644. Production clusters bring their own PKI; nothing here is needed there.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haagent.config import certificate_problem  # noqa: F401  (re-exported: the rule lives with the config's)

DEFAULT_DAYS = 825


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key, as files."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)  # the umask may have narrowed it; a 0644 cert must be readable by clients
    os.replace(tmp, path)


def _save(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertFiles:
    files = CertFiles(directory / f"{name}.crt", directory / f"{name}.key")
    _write(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


class CertificateAuthority:
    """A CA kept in ``directory`` (``ca.crt``, ``ca.key``), made on first use."""

    def __init__(self, directory: Path | str, name: str = "haagent etcd CA", days: int = 3650):
        self.dir = Path(directory)
        self.files = CertFiles(self.dir / "ca.crt", self.dir / "ca.key")
        if self.files.cert.exists() and self.files.key.exists():
            self._cert = x509.load_pem_x509_certificate(self.files.cert.read_bytes())
            loaded = serialization.load_pem_private_key(self.files.key.read_bytes(), None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            self._key = loaded
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self._cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - dt.timedelta(minutes=5))
                      .not_valid_after(now + dt.timedelta(days=days))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                   content_commitment=False, key_encipherment=False,
                                                   data_encipherment=False, key_agreement=False,
                                                   encipher_only=False, decipher_only=False), critical=True)
                      .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
                      .sign(self._key, hashes.SHA256()))
        _save(self.dir, "ca", self._cert, self._key)

    @property
    def cert_path(self) -> Path:
        return self.files.cert

    def issue(self, name: str, common_name: str, *, server_names: Sequence[str] = (),
              server: bool = False, days: int = DEFAULT_DAYS,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> CertFiles:
        """Issue ``<name>.crt``/``<name>.key`` in the CA's directory.

        Every certificate may act as a TLS client (etcd members dial each other with theirs);
        ``server`` adds server use for ``server_names`` (DNS names or IP addresses).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        start = not_before or now - dt.timedelta(minutes=5)
        end = not_after or now + dt.timedelta(days=days)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self._cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   # key_encipherment: libvirt refuses a certificate without it, whatever the key type
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_agreement=True,
                                                content_commitment=False, data_encipherment=False,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                                  critical=False))
        if server_names:
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _save(self.dir, name, builder.sign(self._key, hashes.SHA256()), key)


def issued_by(path: str, ca_path: str) -> bool | None:
    """Whether the certificate at ``path`` is signed by the CA at ``ca_path`` (None: unreadable)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        ca = x509.load_pem_x509_certificates(Path(ca_path).read_bytes())
    except (OSError, ValueError):
        return None
    for c in ca:
        try:
            cert.verify_directly_issued_by(c)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def common_name(path: str) -> str | None:
    """The Common Name of a PEM certificate (the etcd user it acts as), or None."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None
