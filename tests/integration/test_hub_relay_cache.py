"""The hub's relay cache with real processes: a hub and hospital gateways started with the CLI.

What is checked: the first read of a study goes to the gateway and fills the cache, the next is
served from it (byte for byte, even with the gateway stopped); ``Cache-Control: no-cache``
goes to the gateway; a superseded or withdrawn study is never served from the cache; a gateway
serving altered bytes is relayed but not cached, and audited; a reader gone midway or a gateway
breaking off leaves no entry and no temporary file; the size limit evicts the least recently
used study.  All data is synthetic (``pixport.samples``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import network_support
import pytest
from network_support import (
    Network,
    add_gateway,
    pixport,
    poll,
    stop,
    stow,
)

from pixport.hub.relay_cache import FOLDER, entry_name
from pixport.samples import HOSPITALS, PATIENTS, SAMPLE_RRNS, SampleHospital, SamplePatient, ct_series
from pixport.trust import jws
from pixport.trust.assertions import authorization_header
from pixport.trust.keys import SigningKey
from pixport.trust.manifest import (
    ManifestInstance,
    PatientIdentity,
    StudyAttributes,
    build_manifest,
    manifest_from_payload,
    sign_manifest,
)

HANBIT, PUREUN, SAEBOM = HOSPITALS
AS_STORED = 'multipart/related; type="application/dicom"'
NO_CACHE = {"Cache-Control": "no-cache"}
KEEP_AFTER = "PIXPORT_HUB__RELAY_CACHE_KEEP_AFTER"


def start_hub(root: Path, settings: dict[str, str] | None = None) -> Network:
    """The hub, keeping a copy of a study from its first read (most tests here are about copies)."""
    return network_support.start_hub(root, {KEEP_AFTER: "1", **(settings or {})})


def publish(network: Network, code: str, *studies: str) -> dict[str, dict[str, Any]]:
    """``pixport gateway publish``: the registry entries by study."""
    done = pixport("gateway", "publish", *studies, "--json", env=network.gateways[code].env)
    assert done.returncode == 0, done.stderr
    return {entry["study_instance_uid"]: entry for entry in json.loads(done.stdout)}


def read(network: Network, study: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """The whole study through the hub, as the operator."""
    path = f"/dicomweb/studies/{study}"
    auth = authorization_header(network.operator, "operator", "pixport-hub", "GET", path)
    return httpx.get(network.hub_url + path, headers={"Accept": AS_STORED, **auth, **(headers or {})}, timeout=120)


def cache_dir(network: Network) -> Path:
    return network.root / "hub" / FOLDER


def is_cached(network: Network, manifest_id: str) -> bool:
    return (cache_dir(network) / entry_name(manifest_id)).exists()


def temporary_files(network: Network) -> list[str]:
    return sorted(p.name for p in cache_dir(network).glob("tmp-*"))


def events(network: Network, action: str) -> list[dict[str, Any]]:
    path = "/hub/audit"
    auth = authorization_header(network.operator, "operator", "pixport-hub", "GET", path)
    listed = httpx.get(network.hub_url + path, headers=auth, timeout=60)
    assert listed.status_code == 200, listed.text
    return [e["event"] for e in listed.json() if e["event"]["action"] == action]


def read_sources(network: Network, manifest_id: str) -> list[str]:
    """Where the successful reads of a manifest's study came from, in order (the audit log's word)."""
    return [
        e["detail"].get("source")
        for e in events(network, "study.read")
        if e["detail"].get("manifest_id") == manifest_id and e["outcome"] == "success"
    ]


def boundary_of(response: httpx.Response) -> str:
    return response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')


def parts_of(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer, in order (boundaries differ from read to read)."""
    delimiter = b"--" + boundary_of(response).encode()
    return [chunk.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n") for chunk in response.content.split(delimiter)[1:-1]]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("relay-cache")
    net = start_hub(root)
    try:
        for hospital in (HANBIT, PUREUN, SAEBOM):
            add_gateway(net, hospital)
        yield net
    finally:
        stop(net)


@pytest.fixture(scope="module")
def manifests(network: Network) -> dict[str, dict[str, Any]]:
    """Every sample study published; the registry entries by study."""
    found: dict[str, dict[str, Any]] = {}
    for code, gateway in network.gateways.items():
        found.update(publish(network, code, *gateway.studies))
    return found


def test_the_first_read_fills_the_cache_and_the_second_is_served_from_it(
    network: Network, manifests: dict[str, dict[str, Any]]
) -> None:
    study = network.gateways[HANBIT.code].studies[0]
    manifest_id = manifests[study]["manifest_id"]
    first = read(network, study)
    assert first.status_code == 200, first.text
    assert first.headers["pixport-source"] == "gateway"
    poll("the study in the cache", lambda: is_cached(network, manifest_id))
    second = read(network, study)
    assert second.status_code == 200, second.text
    assert second.headers["pixport-source"] == "cache"
    # The same instances, byte for byte; the copy was fetched once more from the gateway after
    # the first read (no reader waits on it), so its multipart boundary is the gateway's next.
    assert parts_of(second) == parts_of(first)
    assert len(parts_of(second)) == manifests[study]["number_of_instances"]
    assert int(second.headers["content-length"]) == len(first.content)
    assert read_sources(network, manifest_id)[-2:] == ["gateway", "cache"]
    assert temporary_files(network) == []
    # The file is named after the manifest's random UUID: no UID, no patient data.
    names = [p.name for p in cache_dir(network).iterdir()]
    assert all(study not in name for name in names)


def test_no_cache_reads_from_the_gateway_and_refreshes_the_entry(
    network: Network, manifests: dict[str, dict[str, Any]]
) -> None:
    study = network.gateways[HANBIT.code].studies[2]
    manifest_id = manifests[study]["manifest_id"]
    first = read(network, study)
    assert first.status_code == 200
    poll("the study in the cache", lambda: is_cached(network, manifest_id))
    cached_before = read(network, study)
    assert cached_before.headers["pixport-source"] == "cache"
    fresh = read(network, study, NO_CACHE)
    assert fresh.status_code == 200
    assert fresh.headers["pixport-source"] == "gateway"
    assert boundary_of(fresh) != boundary_of(first)  # the gateway makes a new boundary each time
    # The entry is replaced by a fresh copy (fetched after the no-cache read), once verified.
    before = cached_before.headers["content-type"]
    poll("the refreshed entry", lambda: read(network, study).headers["content-type"] != before)
    assert parts_of(read(network, study)) == parts_of(fresh)
    # Other forms of the study are never served from the cache.
    transcoded = read(network, study, {"Accept": AS_STORED + "; transfer-syntax=1.2.840.10008.1.2.1"})
    assert transcoded.status_code == 200
    assert transcoded.headers["pixport-source"] == "gateway"


def test_a_cached_study_is_served_with_its_gateway_stopped(
    network: Network, manifests: dict[str, dict[str, Any]]
) -> None:
    gateway = network.gateways[SAEBOM.code]
    study = gateway.studies[0]
    manifest_id = manifests[study]["manifest_id"]
    first = read(network, study)
    assert first.status_code == 200
    poll("the study in the cache", lambda: is_cached(network, manifest_id))
    gateway.process.terminate()
    gateway.process.wait(20)
    assert read(network, study, NO_CACHE).status_code == 502  # the gateway is gone indeed
    cached = read(network, study)
    assert cached.status_code == 200, cached.text
    assert cached.headers["pixport-source"] == "cache"
    assert parts_of(cached) == parts_of(first)
    # Another study of the same gateway, never read, cannot be served.
    assert read(network, gateway.studies[1]).status_code == 502


def test_a_superseded_or_withdrawn_study_is_not_served_from_the_cache(
    network: Network, manifests: dict[str, dict[str, Any]]
) -> None:
    corrected, withdrawn = network.gateways[PUREUN.code].studies
    for study in (corrected, withdrawn):
        assert read(network, study).status_code == 200
        poll("the study in the cache", lambda study=study: is_cached(network, manifests[study]["manifest_id"]))
    old_id = manifests[corrected]["manifest_id"]
    correction = publish(network, PUREUN.code, corrected)[corrected]
    assert correction["supersedes"] == old_id
    assert not is_cached(network, old_id)  # removed when the correction was registered
    again = read(network, corrected)
    assert again.status_code == 200
    assert again.headers["pixport-source"] == "gateway"
    assert read_sources(network, correction["manifest_id"]) == ["gateway"]
    withdrawn_id = manifests[withdrawn]["manifest_id"]
    done = pixport("gateway", "withdraw", withdrawn, "--reason", "test", env=network.gateways[PUREUN.code].env)
    assert done.returncode == 0, done.stderr
    assert not is_cached(network, withdrawn_id)
    assert read(network, withdrawn).status_code == 404


def test_altered_bytes_are_relayed_but_not_cached_and_are_audited(
    network: Network, manifests: dict[str, dict[str, Any]]
) -> None:
    gateway = network.gateways[HANBIT.code]
    study = gateway.studies[1]  # the chest radiograph: one instance
    manifest_id = manifests[study]["manifest_id"]
    token = read_manifest(network, manifest_id)
    (instance,) = manifest_from_payload(jws.read_payload_unverified(token)).instances
    blob = gateway.folder / "archive" / "blobs" / instance.sha256[:2] / instance.sha256
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0x01  # one bit of pixel data, on the gateway's disk
    blob.write_bytes(bytes(data))
    relayed = read(network, study)
    assert relayed.status_code == 200
    assert bytes(data) in relayed.content  # what the gateway sent, for the reader to verify
    failed = poll(
        "the integrity event",
        lambda: [e for e in events(network, "relay.integrity_failed") if e["object"] == manifest_id],
    )
    assert isinstance(failed, list)
    assert len(failed) == 1
    assert failed[0]["outcome"] == "error"
    assert failed[0]["actor"] == "hub"
    assert {k: failed[0]["detail"][k] for k in ("listed", "received", "matched", "missing", "extra")} == {
        "listed": 1,
        "received": 1,
        "matched": 0,
        "missing": 1,
        "extra": 1,
    }
    assert not is_cached(network, manifest_id)
    assert temporary_files(network) == []
    assert read(network, study).headers["pixport-source"] == "gateway"
    assert "relay_cache.integrity_failed" in network.log_text()


def read_manifest(network: Network, manifest_id: str) -> str:
    path = f"/hub/manifests/{manifest_id}"
    auth = authorization_header(network.operator, "operator", "pixport-hub", "GET", path)
    response = httpx.get(network.hub_url + path, headers=auth, timeout=60)
    assert response.status_code == 200
    return response.text


def test_a_reader_gone_midway_leaves_no_entry_and_no_temporary_file(network: Network) -> None:
    gateway = network.gateways[HANBIT.code]
    base = PATIENTS[0]
    patient = SamplePatient(f"{HANBIT.id_prefix}-00001", base.name, base.birth_date, base.sex, base.charset)
    datasets = list(ct_series(patient, "relay-cache-large", slices=40, size=512))  # about 21 MB
    for dataset in datasets:
        dataset.IssuerOfPatientID = HANBIT.code
    assert stow(gateway.url, datasets).status_code == 200
    study = str(datasets[0].StudyInstanceUID)
    manifest_id = publish(network, HANBIT.code, study)[study]["manifest_id"]
    path = f"/dicomweb/studies/{study}"

    # A small receive buffer, so that the study cannot be in flight whole when the reader goes
    # (loopback buffers grow to 32 MB here otherwise).
    def small_buffer() -> httpx.HTTPTransport:  # a new one for each client: a client closes its transport
        return httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)])

    with httpx.Client(transport=small_buffer(), timeout=60) as client:
        for _ in range(2):
            auth = authorization_header(network.operator, "operator", "pixport-hub", "GET", path)
            with client.stream("GET", network.hub_url + path, headers={"Accept": AS_STORED, **auth}) as reply:
                assert reply.status_code == 200
                assert reply.headers["pixport-source"] == "gateway"
                assert next(reply.iter_raw(512))
    poll("the temporary files deleted", lambda: temporary_files(network) == [])
    assert not is_cached(network, manifest_id)
    # The same study read whole is cached: the reads above could have been.
    whole = read(network, study)
    assert whole.headers["pixport-source"] == "gateway"
    assert len(whole.content) > 20_000_000
    poll("the study in the cache", lambda: is_cached(network, manifest_id))
    poll("the temporary files deleted", lambda: temporary_files(network) == [])
    whole = read(network, study)  # from now on, the cached copy itself
    assert whole.headers["pixport-source"] == "cache"
    # A slow reader of the cached study gets all of it; one gone in the middle leaves the entry
    # closed.  (Whether the hub still holds the entry when the reader goes depends on how much
    # the kernel has buffered by then, so that is not asserted.)
    entry = (cache_dir(network) / entry_name(manifest_id)).resolve()
    with httpx.Client(transport=small_buffer(), timeout=60) as client:
        auth = authorization_header(network.operator, "operator", "pixport-hub", "GET", path)
        slow = client.get(network.hub_url + path, headers={"Accept": AS_STORED, **auth})
        assert slow.headers["pixport-source"] == "cache"
        assert slow.content == whole.content
        auth = authorization_header(network.operator, "operator", "pixport-hub", "GET", path)
        with client.stream("GET", network.hub_url + path, headers={"Accept": AS_STORED, **auth}) as reply:
            assert reply.headers["pixport-source"] == "cache"
            assert next(reply.iter_raw(512))
    poll("the entry closed by the hub", lambda: entry not in open_files(network.processes[0].pid))
    assert read(network, study).content == whole.content


def open_files(pid: int) -> set[Path]:
    """The files a process has open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found.add(fd.readlink())
    return found


class BreakingGateway:
    """A scripted gateway for one fault: it announces a study's whole length, sends part of it and hangs up."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.cut: int | None = len(body) // 2
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with client:
                request = b""
                while b"\r\n\r\n" not in request:
                    received = client.recv(65536)
                    if not received:
                        break
                    request += received
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
                    f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                with contextlib.suppress(OSError):
                    client.sendall(head + self.body[: self.cut])  # then the connection is closed

    def close(self) -> None:
        self._server.close()


def test_a_gateway_that_breaks_off_leaves_no_entry_and_no_temporary_file(network: Network) -> None:
    parts = [hashlib.shake_256(f"part {n}".encode()).digest(400_000) for n in range(3)]
    boundary = "broken-gateway-boundary"
    body = (
        b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts)
        + f"--{boundary}--\r\n".encode()
    )
    fake = BreakingGateway(body, f'multipart/related; type="application/dicom"; boundary={boundary}')
    try:
        manifest_id, study = register_for_fake_gateway(network, fake.port, parts)
        with pytest.raises(httpx.HTTPError):
            read(network, study)  # the hub passed on what it got, then the connection ended short
        poll("the temporary file deleted", lambda: temporary_files(network) == [])
        assert not is_cached(network, manifest_id)
        fake.cut = None  # the same gateway sending the whole body: kept
        whole = read(network, study)
        assert whole.status_code == 200
        assert whole.content == body
        poll("the study in the cache", lambda: is_cached(network, manifest_id))
        assert not [e for e in events(network, "relay.integrity_failed") if e["object"] == manifest_id]
    finally:
        fake.close()


def register_for_fake_gateway(network: Network, port: int, parts: list[bytes]) -> tuple[str, str]:
    """Admit institution BROKEN (endpoint: the fake) and register its signed manifest of ``parts``."""
    key = SigningKey.generate()
    (network.root / "broken.jwk").write_text(json.dumps(key.public_jwk()))
    admitted = pixport(
        "hub", "institutions", "add", "BROKEN", "--name-ko", "끊김병원", "--name-en", "Broken Hospital",
        "--endpoint", f"http://127.0.0.1:{port}", "--public-key", network.root / "broken.jwk", env=network.hub_env,
    )  # fmt: skip
    assert admitted.returncode == 0, admitted.stderr
    study = "2.25.4242424242"
    national_key = "nk1." + base64.urlsafe_b64encode(hashlib.sha256(b"broken").digest()).decode().rstrip("=")
    manifest = build_manifest(
        issuer="BROKEN",
        patient=PatientIdentity(national_key=national_key, patient_id="BR-1", issuer_of_patient_id="BROKEN"),
        study=StudyAttributes(study_instance_uid=study, modalities=("OT",)),
        instances=[
            ManifestInstance(
                series_instance_uid=study + ".1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                sop_instance_uid=f"{study}.1.{n + 1}",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                size=len(part),
                sha256=hashlib.sha256(part).hexdigest(),
                dataset_sha256="0" * 64,
                pixel_sha256=None,
            )
            for n, part in enumerate(parts)
        ],
    )
    path = "/hub/manifests"
    auth = authorization_header(key, "BROKEN", "pixport-hub", "POST", path)
    registered = httpx.post(network.hub_url + path, headers=auth, content=sign_manifest(manifest, key), timeout=60)
    assert registered.status_code == 201, registered.text
    return manifest.manifest_id, study


def test_no_patient_data_in_the_cache_folders_names_or_the_logs(
    network: Network, manifests: dict[str, dict[str, Any]]
) -> None:
    assert manifests
    names = [p.name for p in cache_dir(network).iterdir()]
    entries = [name for name in names if re.fullmatch(r"[0-9a-f]{32}\.study", name)]
    assert entries
    assert sorted(names) == sorted([".lock", *entries])  # a UUID each: nothing else, no temporary file left
    log = network.log_text()
    assert "relay_cache.stored" in log
    for patient, rrn in zip(PATIENTS, SAMPLE_RRNS, strict=True):
        for text in (patient.name.split("=")[0], rrn):
            assert text not in log


# -- the size limit: a hub of its own ----------------------------------------------------------

LIMIT = 1_300_000  # two of the three chest radiographs below (about 530 kB each), not three
RADIOGRAPHS = SampleHospital("LRUHOSP", "엘알유병원", "LRU Hospital", "LR", ((0, "cr"), (1, "cr"), (2, "cr")))


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("relay-cache-small")
    net = start_hub(root, {"PIXPORT_HUB__RELAY_CACHE_MAX_BYTES": str(LIMIT)})
    try:
        add_gateway(net, RADIOGRAPHS)
        yield net
    finally:
        stop(net)


def test_the_size_limit_evicts_the_least_recently_used_study(small_cache: Network) -> None:
    network = small_cache
    a, b, c = network.gateways[RADIOGRAPHS.code].studies
    ids = {study: entry["manifest_id"] for study, entry in publish(network, RADIOGRAPHS.code, a, b, c).items()}
    for study in (a, b):
        assert read(network, study).headers["pixport-source"] == "gateway"
        poll("the study in the cache", lambda study=study: is_cached(network, ids[study]))
    sizes = {study: (cache_dir(network) / entry_name(ids[study])).stat().st_size for study in (a, b)}
    assert sum(sizes.values()) <= LIMIT < sum(sizes.values()) + min(sizes.values())  # room for two, not three
    assert read(network, a).headers["pixport-source"] == "cache"  # a is now the more recently used
    assert read(network, c).headers["pixport-source"] == "gateway"
    poll("c cached and b evicted", lambda: is_cached(network, ids[c]) and not is_cached(network, ids[b]))
    assert is_cached(network, ids[a])
    assert read(network, a).headers["pixport-source"] == "cache"  # now c is the least recently used
    assert read(network, b).headers["pixport-source"] == "gateway"
    poll("b cached and c evicted", lambda: is_cached(network, ids[b]) and not is_cached(network, ids[c]))
    assert is_cached(network, ids[a])
    total = sum(p.stat().st_size for p in cache_dir(network).glob("*.study"))
    assert total <= LIMIT
    assert "relay_cache.evicted" in network.log_text()


@pytest.fixture(scope="module")
def default_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A hub with the default admission: a copy from a study's second read from the gateway on."""
    root = tmp_path_factory.mktemp("relay-cache-default")
    net = network_support.start_hub(root)
    try:
        add_gateway(net, RADIOGRAPHS)
        yield net
    finally:
        stop(net)


def test_a_study_read_once_is_only_relayed_and_one_read_again_is_kept(default_hub: Network) -> None:
    network = default_hub
    once, twice = network.gateways[RADIOGRAPHS.code].studies[:2]
    ids = {study: entry["manifest_id"] for study, entry in publish(network, RADIOGRAPHS.code, once, twice).items()}
    assert read(network, once).headers["pixport-source"] == "gateway"
    first = read(network, twice)
    assert first.headers["pixport-source"] == "gateway"
    second = read(network, twice)
    assert second.headers["pixport-source"] == "gateway"  # relayed, then fetched once more to be kept
    poll("the study read twice in the cache", lambda: is_cached(network, ids[twice]))
    third = read(network, twice)
    assert third.headers["pixport-source"] == "cache"
    assert parts_of(third) == parts_of(second)
    assert not is_cached(network, ids[once])
    assert temporary_files(network) == []
    # no-cache keeps a copy at once, whatever the count.
    assert read(network, once, NO_CACHE).headers["pixport-source"] == "gateway"
    poll("the study asked for with no-cache in the cache", lambda: is_cached(network, ids[once]))
