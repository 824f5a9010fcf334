"""DICOM over TLS (PS3.15 BCP 195) with real peers: our listener, our SCU, DCMTK, Python's ssl.

A throwaway PKI is made for the module with ``cryptography`` (``pki``): a CA, a node
certificate for 127.0.0.1 and localhost (server and client use, as a node presents one
certificate both ways), a client certificate, and a certificate from a second, unknown CA.
Everything is written under pytest's temporary folder and is valid for one hour.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import queue
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from dimse_support import AE_TITLE, CORPUS, Listener, after_meta, dcmtk, free_port, sop_instance_uid, start_listener
from dimse_support import tool as dcmtk_tool
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt

from pixport.config import DimseSettings, RemoteNode, Settings, StorageSettings
from pixport.dimse import scu
from pixport.dimse.commitment import STORAGE_COMMITMENT_PUSH_MODEL
from pixport.errors import PeerUnavailable
from pixport.wiring import build_archive

CT = CORPUS / "modality" / "ct" / "CT_small.dcm"  # 39 kB, Explicit VR Little Endian
# No Data Set Trailing Padding, which DCMTK's storescu drops when it sends (PS3.5 7.7 allows it).
CT_SIGNED = CORPUS / "modality" / "ct" / "ct_SignedCT.dcm"
JPEG = CORPUS / "transfer-syntax" / "jpeg-lossless-sv1_8bit.dcm"  # 215 kB, JPEG Lossless SV1: many TLS records
PIXPORT = Path(sys.executable).with_name("pixport")
SCU_AET = "TLSSCU"
VALIDITY = dt.timedelta(hours=1)


# ---------------------------------------------------------------------------------------------
# A throwaway PKI
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, the node (server) pair, a client pair, a pair from an unknown CA."""

    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PixPort tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(common_name: str, now: dt.datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
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
    return key, certificate


def _leaf(
    issuer: tuple[rsa.RSAPrivateKey, x509.Certificate],
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    now: dt.datetime,
    folder: Path,
    stem: str,
    *,
    names: list[x509.GeneralName] | None = None,
) -> tuple[Path, Path]:
    issuer_key, issuer_cert = issuer
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca = _ca("PixPort test CA", now)
    ca_path = folder / "ca.crt"
    ca_path.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    node = _leaf(ca, "PIXPORT node", both, now, folder, "node", names=loopback)
    client = _leaf(ca, "TLSSCU client", [ExtendedKeyUsageOID.CLIENT_AUTH], now, folder, "client")
    stranger = _leaf(_ca("Unknown CA", now), "stranger", [ExtendedKeyUsageOID.CLIENT_AUTH], now, folder, "stranger")
    return Pki(ca_path, *node, *client, *stranger)


# ---------------------------------------------------------------------------------------------
# Listeners and clients
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tls_listener(tmp_path: Path, pki: Pki) -> Iterator[Listener]:
    """Our listener speaking TLS; any client (with or without a certificate) may connect."""
    yield from start_listener(tmp_path, tls_certificate=pki.node_cert, tls_private_key=pki.node_key)


@pytest.fixture
def mutual_listener(tmp_path: Path, pki: Pki) -> Iterator[Listener]:
    """Our listener speaking TLS and requiring a client certificate issued by the test CA."""
    yield from start_listener(
        tmp_path, tls_certificate=pki.node_cert, tls_private_key=pki.node_key, tls_ca_certificates=pki.ca
    )


def scu_settings(pki: Pki, *, cert: Path | None = None, key: Path | None = None, ca: bool = True) -> DimseSettings:
    """Our SCU's settings: trusts the test CA (unless ``ca`` is off), presents ``cert`` if given."""
    return DimseSettings(
        ae_title=SCU_AET,
        tls_certificate=cert,
        tls_private_key=key,
        tls_ca_certificates=pki.ca if ca else None,
        acse_timeout=10,
        dimse_timeout=30,
        network_timeout=30,
    )


def client_settings(pki: Pki) -> DimseSettings:
    return scu_settings(pki, cert=pki.client_cert, key=pki.client_key)


def tls_node(port: int, ae_title: str = AE_TITLE, host: str = "127.0.0.1", *, tls: bool = True) -> RemoteNode:
    return RemoteNode(ae_title=ae_title, host=host, port=port, tls=tls)


def data_set(path: Path) -> bytes:
    return after_meta(path.read_bytes())


def dcmtk_tls(pki: Pki, cert: Path | None = None, key: Path | None = None) -> list[str | Path]:
    """DCMTK's TLS options: authenticated TLS with PEM files, the test CA trusted."""
    return ["+tls", key or pki.client_key, cert or pki.client_cert, "-pem", "+cf", pki.ca]


def handshake(port: int, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    """A bare TLS handshake with the listener: the version and cipher suite agreed."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None


def python_client(pki: Pki) -> ssl.SSLContext:
    """Python's own client defaults, trusting the test CA."""
    context = ssl.create_default_context(cafile=pki.ca)
    context.check_hostname = True
    return context


# ---------------------------------------------------------------------------------------------
# 1. Our SCU against our TLS listener
# ---------------------------------------------------------------------------------------------


def test_scu_echo_and_store_over_tls_byte_identical(mutual_listener: Listener, pki: Pki) -> None:
    settings = client_settings(pki)
    remote = tls_node(mutual_listener.port)
    assert scu.echo(settings, remote) == 0x0000
    results = scu.send(settings, remote, [CT, JPEG])
    assert [r.ok for r in results] == [True, True], results
    assert not any(r.transcoded for r in results)
    for path in (CT, JPEG):
        assert mutual_listener.dataset_bytes(sop_instance_uid(path)) == data_set(path), path.name
    # The DNS name in the certificate serves as well as its IP address.
    assert scu.echo(settings, tls_node(mutual_listener.port, host="localhost")) == 0x0000


def test_scu_refuses_a_listener_whose_certificate_it_cannot_verify(tls_listener: Listener, pki: Pki) -> None:
    """Without the test CA among its trusted CAs, our SCU does not talk to the listener."""
    untrusting = scu_settings(pki, cert=pki.client_cert, key=pki.client_key, ca=False)
    with pytest.raises(PeerUnavailable, match="is unavailable: no TLS connection could be made"):
        scu.echo(untrusting, tls_node(tls_listener.port))
    with pytest.raises(PeerUnavailable, match="is unavailable: no TLS connection could be made"):
        scu.send(untrusting, tls_node(tls_listener.port), [CT])
    assert list(tls_listener.archive.index.iter_digests()) == []
    assert scu.echo(client_settings(pki), tls_node(tls_listener.port)) == 0x0000


# ---------------------------------------------------------------------------------------------
# 2. DCMTK against our TLS listener
# ---------------------------------------------------------------------------------------------


def test_dcmtk_is_built_with_tls() -> None:
    """The DCMTK tests below need Debian's DCMTK with OpenSSL (``+tls``, ``+px``)."""
    usage = dcmtk("echoscu", "--help").stdout
    assert "--enable-tls" in usage
    assert "--profile-bcp195" in usage


def test_dcmtk_echoscu_over_tls_bcp195(mutual_listener: Listener, pki: Pki) -> None:
    result = dcmtk(
        "echoscu", *dcmtk_tls(pki), "+px", "-aet", "DCMTKSCU", "-aec", AE_TITLE, "127.0.0.1", mutual_listener.port
    )
    assert result.returncode == 0, result.stderr


def test_dcmtk_storescu_over_tls(mutual_listener: Listener, pki: Pki) -> None:
    # DCMTK's default profile: BCP 195, non-downgrading.
    result = dcmtk(
        "storescu", *dcmtk_tls(pki), "-aet", "DCMTKSCU", "-aec", AE_TITLE, "127.0.0.1", mutual_listener.port, CT_SIGNED
    )
    assert result.returncode == 0, result.stderr
    assert mutual_listener.dataset_bytes(sop_instance_uid(CT_SIGNED)) == data_set(CT_SIGNED)


# ---------------------------------------------------------------------------------------------
# 3. Plain associations and silent connections
# ---------------------------------------------------------------------------------------------


def test_plain_association_to_the_tls_listener_fails_and_it_stays_up(mutual_listener: Listener, pki: Pki) -> None:
    plain = dcmtk("echoscu", "-to", "10", "-aec", AE_TITLE, "127.0.0.1", mutual_listener.port)
    assert plain.returncode != 0
    assert "Association Request Failed" in plain.stderr
    with pytest.raises(PeerUnavailable):
        scu.echo(client_settings(pki), tls_node(mutual_listener.port, tls=False))
    stored = dcmtk("storescu", "-to", "10", "-aec", AE_TITLE, "127.0.0.1", mutual_listener.port, CT)
    assert stored.returncode != 0
    assert list(mutual_listener.archive.index.iter_digests()) == []
    # Still listening, still speaking TLS.
    assert scu.echo(client_settings(pki), tls_node(mutual_listener.port)) == 0x0000


def test_a_silent_connection_does_not_hold_up_other_callers(tmp_path: Path, pki: Pki) -> None:
    """A TCP connection that never starts its TLS handshake delays nobody, and is closed.

    pynetdicom does the handshake on the thread that accepts connections: before the fix in
    ``scp.ListenerServer``, the echo below waited for the silent caller, forever.
    """
    handshake_deadline = 3.0
    with contextlib.contextmanager(start_listener)(
        tmp_path,
        tls_certificate=pki.node_cert,
        tls_private_key=pki.node_key,
        acse_timeout=handshake_deadline,
    ) as listener:
        with socket.create_connection(("127.0.0.1", listener.port)) as silent:
            opened = time.monotonic()
            time.sleep(0.2)  # the listener has accepted it by now
            assert scu.echo(client_settings(pki), tls_node(listener.port)) == 0x0000
            assert time.monotonic() - opened < handshake_deadline
            silent.settimeout(handshake_deadline + 10)
            assert silent.recv(1) == b""  # closed by the listener
            assert time.monotonic() - opened < handshake_deadline + 5
        assert scu.echo(client_settings(pki), tls_node(listener.port)) == 0x0000


def test_a_tls_peer_stalling_mid_pdu_is_dropped_after_the_network_timeout(tmp_path: Path, pki: Pki) -> None:
    """Half an A-ASSOCIATE-RQ over TLS, then silence: the listener closes after ``network_timeout``."""
    with contextlib.contextmanager(start_listener)(
        tmp_path, tls_certificate=pki.node_cert, tls_private_key=pki.node_key, network_timeout=1
    ) as listener:
        with (
            socket.create_connection(("127.0.0.1", listener.port), timeout=15) as raw,
            python_client(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            opened = time.monotonic()
            tls.sendall(struct.pack(">BBL", 0x01, 0, 500) + bytes(100))
            with contextlib.suppress(ConnectionError):
                assert tls.recv(1) == b""  # closed by the listener (or reset)
            assert time.monotonic() - opened < 10
        assert scu.echo(client_settings(pki), tls_node(listener.port)) == 0x0000


# ---------------------------------------------------------------------------------------------
# 4. Client certificates
# ---------------------------------------------------------------------------------------------


def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    mutual_listener: Listener, tmp_path: Path, pki: Pki
) -> None:
    no_certificate = scu_settings(pki)
    stranger = scu_settings(pki, cert=pki.stranger_cert, key=pki.stranger_key)
    remote = tls_node(mutual_listener.port)
    refused = r"refused our TLS client certificate|the TLS handshake failed"
    with pytest.raises(PeerUnavailable, match=refused):
        scu.echo(no_certificate, remote)
    with pytest.raises(PeerUnavailable, match=refused):
        scu.send(no_certificate, remote, [CT])
    with pytest.raises(PeerUnavailable):
        scu.echo(stranger, remote)
    anonymous = dcmtk("echoscu", "+tla", "+cf", pki.ca, "-to", "10", "-aec", AE_TITLE, "127.0.0.1", remote.port)
    assert anonymous.returncode != 0
    unknown_ca = dcmtk(
        "echoscu", *dcmtk_tls(pki, pki.stranger_cert, pki.stranger_key), "-aec", AE_TITLE, "127.0.0.1", remote.port
    )
    assert unknown_ca.returncode != 0
    assert list(mutual_listener.archive.index.iter_digests()) == []
    # The same client without a certificate is welcome where client certificates are not required,
    # and a certified one where they are: what was refused above was the certificate.
    with contextlib.contextmanager(start_listener)(
        tmp_path / "one-way", tls_certificate=pki.node_cert, tls_private_key=pki.node_key
    ) as one_way:
        assert scu.echo(no_certificate, tls_node(one_way.port)) == 0x0000
    assert scu.echo(client_settings(pki), remote) == 0x0000


# ---------------------------------------------------------------------------------------------
# 5. BCP 195: versions and cipher suites
# ---------------------------------------------------------------------------------------------


def _legacy_client(pki: Pki) -> tuple[ssl.SSLContext, ssl.TLSVersion]:
    """A client offering nothing newer than the newest version BCP 195 forbids that OpenSSL has."""
    legacy = [v for v in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1) if getattr(ssl, f"HAS_{v.name}")]
    assert legacy, "this OpenSSL offers no TLS version older than 1.2"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: the point here
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = legacy[0]
    context.set_ciphers("ALL:@SECLEVEL=0")  # let our side offer them at all
    return context, legacy[0]


def test_listener_refuses_tls_1_1_and_lower(tls_listener: Listener, pki: Pki) -> None:
    context, version = _legacy_client(pki)
    with pytest.raises(ssl.SSLError) as refused:
        handshake(tls_listener.port, context)
    # The listener's alert, not our own side's inability to offer the version.
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", (version, refused.value)
    assert handshake(tls_listener.port, python_client(pki))[0] in {"TLSv1.2", "TLSv1.3"}


def tls12_client(pki: Pki, ciphers: str | None = None) -> ssl.SSLContext:
    context = python_client(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


# TLS 1.2 suites with an RSA certificate: ECDHE key exchange (forward secrecy) and AEAD only.
# (The DHE suites of BCP 195 are configured but never agreed: Python's server context has no
# Diffie-Hellman parameters.)
BCP195_TLS12 = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"]
# Suites Python's and OpenSSL's defaults would agree to, but BCP 195 does not: CBC, or no forward secrecy.
NOT_BCP195_TLS12 = ["ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA384", "AES128-GCM-SHA256", "AES256-GCM-SHA384"]


def test_listener_agrees_bcp195_cipher_suites_only(tls_listener: Listener, pki: Pki) -> None:
    version, cipher = handshake(tls_listener.port, tls12_client(pki))
    assert version == "TLSv1.2"
    assert cipher in BCP195_TLS12
    for suite in BCP195_TLS12:
        assert handshake(tls_listener.port, tls12_client(pki, suite)) == ("TLSv1.2", suite)
    for suite in NOT_BCP195_TLS12:
        with pytest.raises(ssl.SSLError) as refused:
            handshake(tls_listener.port, tls12_client(pki, suite))
        assert refused.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE", (suite, refused.value)


# ---------------------------------------------------------------------------------------------
# 6. Our SCU against DCMTK storescp over TLS
# ---------------------------------------------------------------------------------------------


@dataclass
class TlsStorescp:
    ae_title: str
    port: int
    folder: Path
    log: Path


@contextlib.contextmanager
def tls_storescp(tmp_path: Path, pki: Pki, ae_title: str = "TLSSCP") -> Iterator[TlsStorescp]:
    """DCMTK storescp over TLS (BCP 195 non-downgrading), client certificates required."""
    folder = tmp_path / "received"
    folder.mkdir()
    log = tmp_path / "storescp.log"
    port = free_port()
    command = [
        dcmtk_tool("storescp"),
        "+tls", str(pki.node_key), str(pki.node_cert), "-pem", "+cf", str(pki.ca), "--require-peer-cert",
        "--bit-preserving", "--accept-all", "-aet", ae_title, "-od", str(folder), str(port),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            probe = dcmtk("echoscu", *dcmtk_tls(pki), "-to", "2", "-aec", ae_title, "127.0.0.1", port, timeout=20)
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.1)
        yield TlsStorescp(ae_title, port, folder, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_scu_sends_to_dcmtk_storescp_over_tls(tmp_path: Path, pki: Pki) -> None:
    # The node's one certificate, presented as a client certificate here.
    settings = scu_settings(pki, cert=pki.node_cert, key=pki.node_key)
    with tls_storescp(tmp_path, pki) as peer:
        remote = tls_node(peer.port, peer.ae_title)
        assert scu.echo(settings, remote) == 0x0000
        results = scu.send(settings, remote, [CT, JPEG])
        assert [r.ok for r in results] == [True, True], results
        assert not any(r.transcoded for r in results)
        with pytest.raises(PeerUnavailable):  # no client certificate: storescp refuses
            scu.echo(scu_settings(pki), remote)
    received = {sop_instance_uid(p): data_set(p) for p in peer.folder.iterdir()}
    assert received == {sop_instance_uid(p): data_set(p) for p in (CT, JPEG)}
    assert "peer did not return a certificate" in peer.log.read_text(errors="replace")


def test_find_get_and_move_over_tls(tmp_path: Path, pki: Pki) -> None:
    """C-FIND and C-GET from our TLS listener, and its C-MOVE sub-association to a TLS storescp."""
    settings = client_settings(pki)
    with tls_storescp(tmp_path, pki) as destination:
        remotes = [{"ae_title": destination.ae_title, "host": "127.0.0.1", "port": destination.port, "tls": True}]
        for node in start_listener(
            tmp_path / "node",
            tls_certificate=pki.node_cert,
            tls_private_key=pki.node_key,
            tls_ca_certificates=pki.ca,
            remotes=remotes,
        ):
            remote = tls_node(node.port)
            assert [r.ok for r in scu.send(settings, remote, [CT])] == [True]
            study = str(pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID)
            matches = scu.find(
                settings, remote, "STUDY", {"StudyInstanceUID": study, "NumberOfStudyRelatedInstances": ""}
            )
            assert [(m.StudyInstanceUID, m.NumberOfStudyRelatedInstances) for m in matches] == [(study, 1)]
            local = build_archive(Settings(storage=StorageSettings(data_dir=tmp_path / "local")))
            try:
                retrieval = scu.get(settings, remote, "STUDY", [study], local)
                assert retrieval.ok, retrieval
                assert [r.status for r in retrieval.instances] == ["stored"]
            finally:
                local.close()
            moved = scu.move(settings, remote, destination.ae_title, "STUDY", [study])
            assert (moved.status, moved.completed, moved.failed) == (0x0000, 1, 0)
    received = {sop_instance_uid(p): data_set(p) for p in destination.folder.iterdir()}
    assert received == {sop_instance_uid(CT): data_set(CT)}


def test_storage_commitment_report_over_tls(tmp_path: Path, pki: Pki) -> None:
    """N-ACTION over TLS; the N-EVENT-REPORT on a new TLS association to the requester (pynetdicom)."""
    port = free_port()
    reports: queue.Queue[Dataset] = queue.Queue()

    def on_report(event: Any) -> int:
        reports.put(event.event_information)
        return 0x0000

    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca)
    server_side.load_cert_chain(pki.node_cert, pki.node_key)
    server_side.verify_mode = ssl.CERT_REQUIRED  # PixPort must present its certificate
    requester = AE(ae_title=SCU_AET)
    requester.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=True)
    requester.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    server = requester.start_server(
        ("127.0.0.1", port), block=False, ssl_context=server_side, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        remotes = [{"ae_title": SCU_AET, "host": "127.0.0.1", "port": port, "tls": True}]
        for node in start_listener(
            tmp_path, tls_certificate=pki.node_cert, tls_private_key=pki.node_key, tls_ca_certificates=pki.ca,
            remotes=remotes,
        ):  # fmt: skip
            settings = client_settings(pki)
            assert [r.ok for r in scu.send(settings, tls_node(node.port), [CT])] == [True]
            ct = pydicom.dcmread(CT, stop_before_pixels=True)
            action = Dataset()
            action.TransactionUID = "2.25.424242"
            item = Dataset()
            item.ReferencedSOPClassUID = ct.SOPClassUID
            item.ReferencedSOPInstanceUID = ct.SOPInstanceUID
            action.ReferencedSOPSequence = [item]
            client_side = ssl.create_default_context(cafile=pki.ca)
            client_side.load_cert_chain(pki.client_cert, pki.client_key)
            assoc = requester.associate(
                "127.0.0.1", node.port, ae_title=AE_TITLE, tls_args=(client_side, "127.0.0.1"),
                ext_neg=[build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True)],
            )  # fmt: skip
            assert assoc.is_established
            status, _ = assoc.send_n_action(action, 1, STORAGE_COMMITMENT_PUSH_MODEL, "1.2.840.10008.1.20.1.1")
            assoc.release()
            assert status.Status == 0x0000
            info = reports.get(timeout=20)
            assert info.TransactionUID == "2.25.424242"
            assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [ct.SOPInstanceUID]
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------
# The command, with a TLS node from the settings
# ---------------------------------------------------------------------------------------------


def test_cli_echo_to_a_configured_tls_node(mutual_listener: Listener, tmp_path: Path, pki: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    env |= {
        "PIXPORT_STORAGE__DATA_DIR": str(tmp_path / "cli"),
        "PIXPORT_DIMSE__AE_TITLE": SCU_AET,
        "PIXPORT_DIMSE__TLS_CERTIFICATE": str(pki.client_cert),
        "PIXPORT_DIMSE__TLS_PRIVATE_KEY": str(pki.client_key),
        "PIXPORT_DIMSE__TLS_CA_CERTIFICATES": str(pki.ca),
        "PIXPORT_DIMSE__REMOTES": (
            f'[{{"ae_title": "SECURE", "host": "127.0.0.1", "port": {mutual_listener.port}, "tls": true}}]'
        ),
    }

    def pixport(*args: Any) -> subprocess.CompletedProcess[str]:
        command = [str(PIXPORT), *map(str, args)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)

    echoed = pixport("dimse", "echo", "SECURE")
    assert echoed.returncode == 0, echoed.stderr
    assert "status 0x0000" in echoed.stdout
    # The same listener called as an ad-hoc node (AET@host:port) is called without TLS: refused.
    plain = pixport("dimse", "echo", f"{AE_TITLE}@127.0.0.1:{mutual_listener.port}")
    assert plain.returncode == 1
    assert "is unavailable" in plain.stderr
