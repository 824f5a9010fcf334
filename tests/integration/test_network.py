"""The hub and two gateways as separate processes on loopback, set up with the CLI as an operator would.

Every request between the gateways and the hub goes through a recording TCP proxy, so the
test can show what reached the hub: never a resident registration number.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from network_support import Network, add_gateway, pixport, start_hub, stop

from pixport.samples import HOSPITALS, SAMPLE_RRNS
from pixport.trust import jws
from pixport.trust.assertions import authorization_header
from pixport.trust.keys import SigningKey
from pixport.trust.manifest import build_manifest, manifest_from_payload, manifest_payload, sign_manifest

HANBIT, PUREUN = HOSPITALS[0], HOSPITALS[1]
RRN_FORMS = [rrn.encode() for rrn in SAMPLE_RRNS] + [rrn.replace("-", "").encode() for rrn in SAMPLE_RRNS]


class RecordingProxy:
    """A TCP forwarder that keeps every byte it passes, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.recorded = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.recorded += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self._server.close()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, RecordingProxy]]:
    """The hub and two gateways, every request to the hub (the gateways' and the tests') through a proxy."""
    network = start_hub(tmp_path_factory.mktemp("network"))
    proxy = RecordingProxy(int(network.hub_env["PIXPORT_HUB__PORT"]))
    network.hub_url = f"http://127.0.0.1:{proxy.port}"  # what the gateways are configured with, below
    try:
        for hospital in (HANBIT, PUREUN):
            add_gateway(network, hospital)
        yield network, proxy
    finally:
        stop(network)
        proxy.close()


@pytest.fixture(scope="module")
def network(proxied: tuple[Network, RecordingProxy]) -> Network:
    return proxied[0]


@pytest.fixture(scope="module")
def proxy(proxied: tuple[Network, RecordingProxy]) -> RecordingProxy:
    return proxied[1]


@pytest.fixture(scope="module")
def published(network: Network) -> dict[str, list[dict[str, object]]]:
    results = {}
    for code in (HANBIT.code, PUREUN.code):
        result = pixport(
            "gateway", "publish", *network.gateways[code].studies, "--json", env=network.gateways[code].env
        )
        assert result.returncode == 0, result.stderr
        results[code] = json.loads(result.stdout)
    return results


def test_publish_registers_every_study_with_one_national_key_per_person(
    network: Network, published: dict[str, list[dict[str, object]]]
) -> None:
    hanbit = published[HANBIT.code]
    assert [r["study_instance_uid"] for r in hanbit] == network.gateways[HANBIT.code].studies
    assert all(r["status"] == "current" for r in hanbit)
    # Patient 0 was seen at both hospitals, under different local IDs: one national key.
    pureun_first = published[PUREUN.code][0]
    assert hanbit[0]["national_key"] == pureun_first["national_key"]
    assert hanbit[0]["national_key"] != hanbit[1]["national_key"]
    assert network.operator is not None
    listed = network.hub_get(network.operator, "operator", f"/hub/manifests?national_key={hanbit[0]['national_key']}")
    assert listed.status_code == 200
    assert {m["institution"] for m in listed.json()} == {HANBIT.code, PUREUN.code}


def _parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:-1]:
        body = chunk.partition(b"\r\n\r\n")[2]
        parts.append(body.removesuffix(b"\r\n"))
    return parts


def test_retrieve_through_the_hub_is_the_gateways_bytes_and_verifies(
    network: Network, published: dict[str, list[dict[str, object]]], tmp_path: Path
) -> None:
    study = network.gateways[HANBIT.code].studies[0]
    key = network.gateways[HANBIT.code].key()
    through_hub = network.hub_get(key, HANBIT.code, f"/dicomweb/studies/{study}")
    assert through_hub.status_code == 200, through_hub.text
    direct = httpx.get(
        f"{network.gateways[HANBIT.code].url}/dicomweb/studies/{study}",
        headers={"accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    assert sorted(_parts(through_hub)) == sorted(_parts(direct))
    images = tmp_path / "images"
    images.mkdir()
    for number, part in enumerate(_parts(through_hub)):
        (images / f"{number}.dcm").write_bytes(part)
    manifest = network.hub_get(key, HANBIT.code, f"/hub/manifests/{published[HANBIT.code][0]['manifest_id']}")
    assert manifest.status_code == 200
    (tmp_path / "manifest.jws").write_text(manifest.text)
    env = network.gateways[HANBIT.code].env
    assert pixport("gateway", "directory", tmp_path / "directory.jws", env=env).returncode == 0
    checked = pixport(
        "verify", tmp_path / "manifest.jws", images, "--directory", tmp_path / "directory.jws",
        "--hub-key", network.root / "hub" / "hub-key.jwk", "--json", "--report", env=env,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] is True
    assert "Reported to the hub" in checked.stderr
    # One byte flipped in the last part's pixel data: altered, with its UID.
    victim = max(images.iterdir())
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    tampered = pixport(
        "verify", tmp_path / "manifest.jws", images, "--directory", tmp_path / "directory.jws",
        "--hub-key", network.root / "hub" / "hub-key.jwk", "--json", "--report", env=env,
    )  # fmt: skip
    assert tampered.returncode == 1
    assert json.loads(tampered.stdout)["ok"] is False
    assert "altered" in tampered.stdout
    # Both verifications are in the hub's audit log, under the patient, with their counts.
    manifest_id = str(published[HANBIT.code][0]["manifest_id"])
    national_key = str(published[HANBIT.code][0]["national_key"])
    assert network.operator is not None
    events = network.hub_get(network.operator, "operator", f"/hub/audit?national_key={national_key}").json()
    reports = [
        e["event"]
        for e in events
        if e["event"]["action"] == "verification.performed" and e["event"]["object"] == manifest_id
    ]
    assert [(e["outcome"], e["actor"]) for e in reports[-2:]] == [
        ("success", f"institution:{HANBIT.code}"),
        ("refused", f"institution:{HANBIT.code}"),
    ]
    assert reports[-1]["detail"]["altered"] == 1
    assert reports[-1]["detail"]["intact"] == reports[-2]["detail"]["intact"] - 1
    # Another institution cannot write about a study it may not read.
    other = pixport(
        "verify", tmp_path / "manifest.jws", images, "--directory", tmp_path / "directory.jws",
        "--hub-key", network.root / "hub" / "hub-key.jwk", "--report", env=network.gateways[PUREUN.code].env,
    )  # fmt: skip
    assert other.returncode == 2
    assert "not reported to the hub" in other.stderr
    assert "404" in other.stderr


def test_only_the_publisher_and_the_operator_read_a_study(
    network: Network, published: dict[str, list[dict[str, object]]]
) -> None:
    assert published
    study = network.gateways[HANBIT.code].studies[0]
    other = network.hub_get(network.gateways[PUREUN.code].key(), PUREUN.code, f"/dicomweb/studies/{study}")
    assert other.status_code == 404
    assert network.operator is not None
    assert network.hub_get(network.operator, "operator", f"/dicomweb/studies/{study}").status_code == 200
    anonymous = httpx.get(f"{network.hub_url}/dicomweb/studies/{study}", timeout=30)
    assert anonymous.status_code == 401
    # The gateway serves the hub only: another institution's key is refused there.
    path = f"/hub-access/dicomweb/studies/{study}"
    headers = authorization_header(network.gateways[PUREUN.code].key(), "hub", HANBIT.code, "GET", path)
    refused = httpx.get(network.gateways[HANBIT.code].url + path, headers=headers, timeout=30)
    assert refused.status_code == 401
    assert "pinned key" in refused.text


def test_a_gateway_cannot_act_as_another(network: Network, published: dict[str, list[dict[str, object]]]) -> None:
    hanbit_key = network.gateways[HANBIT.code].key()
    # Claiming to be PUREUN with HANBIT's key.
    response = network.hub_get(hanbit_key, PUREUN.code, "/hub/manifests")
    assert response.status_code == 401
    assert "not in the directory" in response.json()["detail"] or "not trusted" in response.json()["detail"]
    # Registering, as HANBIT, a manifest that says PUREUN issued it (signed with HANBIT's key).
    token = str(
        network.hub_get(hanbit_key, HANBIT.code, f"/hub/manifests/{published[HANBIT.code][0]['manifest_id']}").text
    )
    manifest = manifest_from_payload(jws.read_payload_unverified(token))
    forged = build_manifest(
        issuer=PUREUN.code, patient=manifest.patient, study=manifest.study, instances=list(manifest.instances)
    )
    response = network.hub_post(hanbit_key, HANBIT.code, "/hub/manifests", sign_manifest(forged, hanbit_key).encode())
    assert response.status_code == 403
    assert "cannot register a manifest issued by PUREUN" in response.json()["detail"]
    # Registering PUREUN's manifest as PUREUN but signed with HANBIT's key.
    response = network.hub_post(hanbit_key, PUREUN.code, "/hub/manifests", sign_manifest(forged, hanbit_key).encode())
    assert response.status_code == 401


def test_a_manifest_signed_by_another_institutions_key_is_refused(
    network: Network, published: dict[str, list[dict[str, object]]]
) -> None:
    pureun_key = network.gateways[PUREUN.code].key()
    token = network.hub_get(pureun_key, PUREUN.code, f"/hub/manifests/{published[PUREUN.code][0]['manifest_id']}").text
    manifest = manifest_from_payload(jws.read_payload_unverified(token))
    corrected = build_manifest(
        issuer=PUREUN.code,
        patient=manifest.patient,
        study=manifest.study,
        instances=list(manifest.instances),
        supersedes=manifest.manifest_id,
    )
    signed_by_hanbit = sign_manifest(corrected, network.gateways[HANBIT.code].key())
    response = network.hub_post(pureun_key, PUREUN.code, "/hub/manifests", signed_by_hanbit.encode())
    assert response.status_code == 422
    assert "belongs to institution HANBIT, not to the issuer PUREUN" in response.json()["detail"]


def test_a_replayed_superseded_manifest_is_refused(
    network: Network, published: dict[str, list[dict[str, object]]]
) -> None:
    code = PUREUN.code
    study = network.gateways[code].studies[1]
    first_id = next(r["manifest_id"] for r in published[code] if r["study_instance_uid"] == study)
    key = network.gateways[code].key()
    old_token = network.hub_get(key, code, f"/hub/manifests/{first_id}").text
    republished = pixport("gateway", "publish", study, "--json", env=network.gateways[code].env)
    assert republished.returncode == 0, republished.stderr
    correction = json.loads(republished.stdout)[0]
    assert correction["supersedes"] == first_id
    replay = network.hub_post(key, code, "/hub/manifests", old_token.encode())
    assert replay.status_code == 409
    assert f"superseded by {correction['manifest_id']}: replay refused" in replay.json()["detail"]
    # A new manifest for the study that does not supersede the current one is refused too.
    manifest = manifest_from_payload(jws.read_payload_unverified(old_token))
    rival = build_manifest(
        issuer=code, patient=manifest.patient, study=manifest.study, instances=list(manifest.instances)
    )
    response = network.hub_post(key, code, "/hub/manifests", sign_manifest(rival, key).encode())
    assert response.status_code == 409
    assert "a correction must supersede it" in response.json()["detail"]


def test_a_revoked_key_cannot_publish_or_call(network: Network, published: dict[str, list[dict[str, object]]]) -> None:
    assert published
    # A third institution, admitted for this test, whose key is then revoked.  Its key id begins
    # with "-" (as one in 64 do), which the command line must not take for an option.
    key = next(k for k in iter(SigningKey.generate, None) if k.kid.startswith("-"))
    (network.root / "third.jwk").write_text(json.dumps(key.public_jwk()))
    admitted = pixport(
        "hub", "institutions", "add", "THIRD", "--name-ko", "셋째병원", "--name-en", "Third Hospital",
        "--endpoint", "http://127.0.0.1:9", "--public-key", network.root / "third.jwk", env=network.hub_env,
    )  # fmt: skip
    assert admitted.returncode == 0, admitted.stderr
    assert network.hub_get(key, "THIRD", "/hub/manifests").status_code == 200
    revoked = pixport("hub", "keys", "revoke", "THIRD", key.kid, "--reason", "key compromised", env=network.hub_env)
    assert revoked.returncode == 0, revoked.stderr
    response = network.hub_get(key, "THIRD", "/hub/manifests")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert "key compromised" in response.json()["detail"]


def test_the_audit_log_verifies_and_catches_an_edit(
    network: Network, published: dict[str, list[dict[str, object]]], tmp_path: Path
) -> None:
    assert published
    verified = pixport("hub", "audit", "verify", "--json", env=network.hub_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True
    assert report["events_checked"] >= len(published[HANBIT.code]) + len(published[PUREUN.code])
    # Edit a copy of the database: the hub keeps running on the original.
    copy = tmp_path / "hub"
    copy.mkdir()
    source = sqlite3.connect(network.root / "hub" / "hub.db")
    target = sqlite3.connect(copy / "hub.db")
    source.backup(target)
    source.close()
    target.execute("UPDATE audit_events SET purpose = 'nothing to see' WHERE seq = 2")
    target.commit()
    target.close()
    (copy / "hub-key.pem").write_bytes((network.root / "hub" / "hub-key.pem").read_bytes())
    tampered = pixport("hub", "audit", "verify", env={**network.hub_env, "PIXPORT_HUB__DATA_DIR": str(copy)})
    assert tampered.returncode == 1
    assert "event 2" in tampered.stdout


def test_no_resident_registration_number_reaches_the_hub(
    network: Network, proxy: RecordingProxy, published: dict[str, list[dict[str, object]]]
) -> None:
    assert published
    assert len(proxy.recorded) > 0  # the gateways' calls went through the proxy
    assert b"/hub/manifests" in proxy.recorded
    seen = {"requests": bytes(proxy.recorded)}
    for path in (network.root / "hub").rglob("*"):
        if path.is_file():
            seen[str(path)] = path.read_bytes()
    seen["logs"] = (network.root / "logs").read_bytes()
    for code in (HANBIT.code, PUREUN.code):  # nor is one kept at the gateways
        for path in (network.root / code).rglob("*.db*"):
            seen[str(path)] = path.read_bytes()
    for where, data in seen.items():
        for rrn in RRN_FORMS:
            assert rrn not in data, f"an RRN is in {where}"
    # The national keys, on the other hand, are there: the check above looked at the right bytes.
    national_key = str(published[HANBIT.code][0]["national_key"]).encode()
    assert national_key in seen["requests"]
    assert any(national_key in data for where, data in seen.items() if where.endswith("hub.db"))


def test_manifest_payload_round_trips(published: dict[str, list[dict[str, object]]], network: Network) -> None:
    token = network.hub_get(
        network.gateways[HANBIT.code].key(), HANBIT.code, f"/hub/manifests/{published[HANBIT.code][0]['manifest_id']}"
    ).text
    payload = jws.read_payload_unverified(token)
    assert manifest_payload(manifest_from_payload(payload)) == payload
    assert payload["patient"]["name"].endswith("홍^길동")


def test_a_reader_gone_mid_study_leaves_the_relay_working(
    network: Network, published: dict[str, list[dict[str, object]]]
) -> None:
    assert published
    study = network.gateways[HANBIT.code].studies[0]
    key = network.gateways[HANBIT.code].key()
    path = f"/dicomweb/studies/{study}"
    whole = network.hub_get(key, HANBIT.code, path)
    assert whole.status_code == 200
    # From the gateway, not from the hub's relay cache, which the first read may have filled.
    no_cache = {"Cache-Control": "no-cache"}
    for _ in range(3):  # each leaves the hub's connection to the gateway with a study in flight
        headers = {**authorization_header(key, HANBIT.code, "pixport-hub", "GET", path), **no_cache}
        with httpx.stream("GET", network.hub_url + path, headers=headers, timeout=60) as reply:
            assert reply.status_code == 200
            assert reply.headers["pixport-source"] == "gateway"
            assert next(reply.iter_raw(512))
    for _ in range(3):  # and the next reads get the whole study, every byte
        headers = {**authorization_header(key, HANBIT.code, "pixport-hub", "GET", path), **no_cache}
        again = httpx.get(network.hub_url + path, headers=headers, timeout=60)
        assert again.status_code == 200
        assert again.headers["pixport-source"] == "gateway"
        assert sorted(_parts(again)) == sorted(_parts(whole))


@pytest.mark.parametrize(
    "body",
    [
        b'{"verified": "yes", "signer_valid": true}',
        b'{"verified": true, "signer_valid": true, "counts": {"patient_name": 1}}',
        b'{"verified": true, "signer_valid": true, "counts": {"intact": -1}}',
        b"[1, 2]",
        b"not json",
    ],
)
def test_a_verification_report_is_counts_and_flags_only(
    network: Network, published: dict[str, list[dict[str, object]]], body: bytes
) -> None:
    path = f"/hub/manifests/{published[HANBIT.code][0]['manifest_id']}/verifications"
    refused = network.hub_post(network.gateways[HANBIT.code].key(), HANBIT.code, path, body)
    assert refused.status_code == 400
    assert "a verification report is" in refused.json()["detail"]


def test_dicomweb_within_a_study_through_the_hub_names_the_hub(
    network: Network, published: dict[str, list[dict[str, object]]]
) -> None:
    assert published
    study = network.gateways[HANBIT.code].studies[0]
    key = network.gateways[HANBIT.code].key()
    base = f"/dicomweb/studies/{study}"
    series = network.hub_get(key, HANBIT.code, base + "/series")
    assert series.status_code == 200, series.text
    series_uid = series.json()[0]["0020000E"]["Value"][0]
    assert series.json()[0]["00081190"]["Value"][0].startswith(network.hub_url + "/dicomweb/")
    instances = network.hub_get(key, HANBIT.code, f"{base}/series/{series_uid}/instances?limit=1")
    assert instances.status_code == 200, instances.text
    assert len(instances.json()) == 1
    sop = instances.json()[0]["00080018"]["Value"][0]
    instance = f"{base}/series/{series_uid}/instances/{sop}"
    metadata = network.hub_get(key, HANBIT.code, instance + "/metadata")
    assert metadata.status_code == 200, metadata.text
    pixel_uri = metadata.json()[0]["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(network.hub_url + "/dicomweb/studies/")  # not the gateway's address
    bulk = network.hub_get(key, HANBIT.code, pixel_uri.removeprefix(network.hub_url))
    assert bulk.status_code == 200, bulk.text
    assert len(bulk.content) > 0
    frame = network.hub_get(key, HANBIT.code, instance + "/frames/1")
    assert frame.status_code == 200
    thumbnail = network.hub_get(key, HANBIT.code, instance + "/thumbnail")
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"].startswith("image/")
    direct = httpx.get(
        f"{network.gateways[HANBIT.code].url}/dicomweb/studies/{study}/series/{series_uid}/instances/{sop}",
        headers={"accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    relayed = network.hub_get(key, HANBIT.code, instance)
    assert relayed.status_code == 200
    assert _parts(relayed) == _parts(direct)
    # The gateway's "no such instance" reaches the reader as a 404, not as a broken gateway.
    missing = network.hub_get(key, HANBIT.code, f"{base}/series/{series_uid}/instances/1.2.3.4/metadata")
    assert missing.status_code == 404
    # Another institution still reads nothing of the study.
    refused = network.hub_get(network.gateways[PUREUN.code].key(), PUREUN.code, instance + "/metadata")
    assert refused.status_code == 404


def test_the_operator_lists_one_patients_audit_events_by_a_hospitals_id(
    network: Network, published: dict[str, list[dict[str, object]]]
) -> None:
    first = published[HANBIT.code][0]
    key = network.gateways[HANBIT.code].key()
    token = network.hub_get(key, HANBIT.code, f"/hub/manifests/{first['manifest_id']}").text
    patient = manifest_from_payload(jws.read_payload_unverified(token)).patient
    issuer = patient.issuer_of_patient_id or HANBIT.code
    assert network.hub_get(key, HANBIT.code, f"/dicomweb/studies/{first['study_instance_uid']}").status_code == 200
    by_id = ["--patient-id", patient.patient_id, "--issuer", issuer]
    listed = pixport("hub", "audit", "list", *by_id, env=network.hub_env)
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {e["event"]["national_key"] for e in events} == {patient.national_key}
    actions = {e["event"]["action"] for e in events}
    assert {"manifest.registered", "study.read"} <= actions
    unknown = pixport("hub", "audit", "list", "--patient-id", "NOBODY-123", "--issuer", issuer, env=network.hub_env)
    assert unknown.returncode == 1
    assert "NOBODY-123" not in unknown.stdout + unknown.stderr
