"""Throwaway TLS material for tests: a CA, a server and a client certificate.

Everything is generated in the test run (``cryptography``, EC P-256 keys, which
are quick to make), written as PEM files Mosquitto and ``ssl`` load directly.
Nothing here is fit for anything but loopback tests.

    files = make_tls_files(tmp_path)
    ctx = files.client_context()                 # trusts the CA, checks the hostname
    ctx = files.client_context(client_cert=True) # ... and presents the client certificate
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdated, so that a clock a little behind the one that signed does not matter.
_NOT_BEFORE = datetime.timedelta(days=1)
_LIFETIME = datetime.timedelta(days=30)

SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the generated PEM files.

    ``ca_cert`` signed ``server`` (for ``localhost`` and ``127.0.0.1``) and
    ``client`` (CN ``fieldline-test-client``). ``other_ca_cert`` is an unrelated CA,
    for "the server is not who we trust" tests.
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server: Issued
    client: Issued
    other_ca_cert: Path

    @property
    def server_cert(self) -> Path:
        return self.server.cert

    @property
    def server_key(self) -> Path:
        return self.server.key

    @property
    def client_cert(self) -> Path:
        return self.client.cert

    @property
    def client_key(self) -> Path:
        return self.client.key

    def issue_client(self, name: str, common_name: str | None) -> Issued:
        """Another client certificate signed by ``ca_cert``, with subject CN
        ``common_name`` (None: a subject without one), written as ``name``.crt/.key."""
        ca_cert, ca_key = self._ca()
        cert, key = issue(ca_cert, ca_key, common_name, client=True)
        issued = Issued(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        _write_cert(issued.cert, cert)
        _write_key(issued.key, key)
        return issued

    def issue_server(self, name: str) -> Issued:
        """Another server certificate for ``SERVER_NAMES`` signed by ``ca_cert``
        (a renewal: a new key and serial), written as ``name``.crt/.key."""
        ca_cert, ca_key = self._ca()
        cert, key = issue(ca_cert, ca_key, SERVER_NAMES[0], server_names=SERVER_NAMES)
        issued = Issued(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        _write_cert(issued.cert, cert)
        _write_key(issued.key, key)
        return issued

    def write_crl(self, path: Path, revoked: Sequence[Issued] = ()) -> Path:
        """A certificate revocation list of ``ca_cert`` naming ``revoked``, as PEM at
        ``path``; returns ``path``."""
        ca_cert, ca_key = self._ca()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - _NOT_BEFORE)
            .next_update(now + _LIFETIME)
        )
        for issued in revoked:
            serial = x509.load_pem_x509_certificate(issued.cert.read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - _NOT_BEFORE)
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        return ca_cert, ca_key

    def client_context(self, client_cert: bool = False) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for a client: trusts ``ca_cert`` only, verifies the
        hostname, and presents the client certificate if ``client_cert``.
        """
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        if client_cert:
            ctx.load_cert_chain(str(self.client.cert), str(self.client.key))
        return ctx

    def mosquitto_config(self, require_certificate: bool = False) -> list[str]:
        """Listener lines for Mosquitto (they follow a ``listener`` line)."""
        lines = [
            f"cafile {self.ca_cert}",
            f"certfile {self.server.cert}",
            f"keyfile {self.server.key}",
        ]
        if require_certificate:
            lines.append("require_certificate true")
        return lines


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldline tests")]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _NOT_BEFORE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str | None,
    *,
    server_names: Sequence[str] = (),
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by the CA: for a server when ``server_names`` (DNS
    names and IP addresses, put in the subjectAltName), for a client when ``client``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _NOT_BEFORE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        alt_names: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt_names.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_tls_files(directory: Path, server_names: Sequence[str] = SERVER_NAMES) -> TlsFiles:
    """Generate a CA, a server and a client certificate in ``directory`` (created if
    needed) and return their paths.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca("fieldline test CA")
    server_cert, server_key = issue(ca_cert, ca_key, server_names[0], server_names=server_names)
    client_cert, client_key = issue(ca_cert, ca_key, "fieldline-test-client", client=True)
    other_ca_cert, _ = make_ca("unrelated test CA")

    files = TlsFiles(
        directory=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server=Issued(directory / "server.crt", directory / "server.key"),
        client=Issued(directory / "client.crt", directory / "client.key"),
        other_ca_cert=directory / "other-ca.crt",
    )
    _write_cert(files.ca_cert, ca_cert)
    _write_key(files.ca_key, ca_key)
    _write_cert(files.server.cert, server_cert)
    _write_key(files.server.key, server_key)
    _write_cert(files.client.cert, client_cert)
    _write_key(files.client.key, client_key)
    _write_cert(files.other_ca_cert, other_ca_cert)
    return files
