"""DICOM TLS (PS3.15 Annex B.9) with client certificates, against a CA the test creates.

What came in: pynetdicom associations over TLS with a client certificate signed by the
test CA (accepted), without a certificate, with a self-signed certificate, and in plain
TCP to the TLS port (all refused); the calling AE title is still checked over TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE

from conftest import CLI_ADMIN, free_port, make_settings
from dicomhub.context import Context, build_context
from dicomhub.dimse.server import DimseServer

VERIFICATION = "1.2.840.10008.1.1"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def tls_node(tmp_path: Path) -> Iterator[tuple[Context, DimseServer, Path]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key = ec.generate_private_key(ec.SECP256R1())
    _write(tmp_path / "server", _cert("localhost", server_key, "test-ca", ca_key), server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write(tmp_path / "client", _cert("ct-scanner", client_key, "test-ca", ca_key), client_key)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    _write(tmp_path / "rogue", _cert("rogue", rogue_key, "rogue", rogue_key), rogue_key)
    ctx = build_context(
        make_settings(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'i.sqlite3'}",
            None,
            dimse_port=free_port(),
            tls_port=free_port(),
            tls_cert=tmp_path / "server.crt",
            tls_key=tmp_path / "server.key",
            tls_ca=tmp_path / "ca.crt",
        )
    )
    ctx.auth.add_subscriber(CLI_ADMIN, "h", None, "t")
    ctx.auth.add_device(CLI_ADMIN, "h", "ct-scanner", ["CTSCANNER"], ["127.0.0.1"], "t")
    server = DimseServer(ctx)
    server.start()
    yield ctx, server, tmp_path
    server.stop()
    ctx.close()


def _client_context(tmp: Path, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp / "ca.crt"))
    if cert:
        context.load_cert_chain(str(tmp / f"{cert}.crt"), str(tmp / f"{cert}.key"))
    return context


def _echo(port: int, calling: str, tls: tuple[ssl.SSLContext, str] | None) -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB", tls_args=tls)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status and status.Status == 0)


def test_tls_with_client_certificates(tls_node: tuple[Context, DimseServer, Path]) -> None:
    _ctx, server, tmp = tls_node
    port = server.tls_port
    assert port is not None
    assert _echo(port, "CTSCANNER", (_client_context(tmp, "client"), "localhost"))
    # the AE title is still checked inside TLS
    assert not _echo(port, "INTRUDER", (_client_context(tmp, "client"), "localhost"))
    # no client certificate, a certificate of another CA, or no TLS at all: refused
    assert not _echo(port, "CTSCANNER", (_client_context(tmp, None), "localhost"))
    assert not _echo(port, "CTSCANNER", (_client_context(tmp, "rogue"), "localhost"))
    assert not _echo(port, "CTSCANNER", None)
    # the plain port keeps working
    assert _echo(server.port, "CTSCANNER", None)
