"""Publishing when the hub cannot be reached, in one process: the API's 502, the publisher's retries.

A real gateway (archive on disk, institution key, network key, linked patient) whose hub URL
is a loopback port nobody listens on.  The network tests (``test_gateway_publishing.py``)
cover the cases with a hub.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import structlog
from dimse_support import free_port
from network_support import served_in_thread

from pixport.archive.node import Archive
from pixport.config import load_settings
from pixport.dicomweb.app import create_app
from pixport.gateway.auto_publish import AutoPublisher, SingleRunnerLock
from pixport.gateway.node import Gateway
from pixport.samples import HOSPITALS, SAMPLE_RRNS, hospital_studies
from pixport.trust.keys import SigningKey
from pixport.trust.national_key import ResidentRegistrationNumber, generate_network_key
from pixport.wiring import build_archive

PUREUN = HOSPITALS[1]  # two MR studies: PB-00001 (linked here) and PB-00002 (never linked)


@dataclass
class Offline:
    archive: Archive
    gateway: Gateway
    client: httpx.Client
    linked_study: str
    unlinked_study: str


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[Offline]:
    signing_key = tmp_path / "key.pem"
    SigningKey.generate().save(signing_key)
    hub_key = tmp_path / "hub.jwk"
    hub_key.write_text(json.dumps(SigningKey.generate().public_jwk()))
    generate_network_key(tmp_path / "network.key")
    settings = load_settings(
        storage={"data_dir": tmp_path / "archive"},
        gateway={
            "institution_code": PUREUN.code,
            "signing_key": signing_key,
            "network_key": tmp_path / "network.key",
            "hub_url": f"http://127.0.0.1:{free_port()}",  # nobody listens there
            "hub_key": hub_key,
        },
    )
    archive = build_archive(settings)
    files: dict[str, list[Path]] = {}
    for number, dataset in enumerate(hospital_studies(PUREUN)):
        path = tmp_path / f"{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.setdefault(str(dataset.StudyInstanceUID), []).append(path)
    linked_study, unlinked_study = files
    # The unlinked patient's study is received first, so the publisher meets it first.
    for study in (unlinked_study, linked_study):
        assert {r.status for r in archive.ingest.ingest_paths(files[study])} == {"stored"}
    app = create_app(archive)
    gateway: Gateway = app.state.gateway
    gateway.link_patient("PB-00001", PUREUN.code, ResidentRegistrationNumber.parse(SAMPLE_RRNS[0]))
    with served_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield Offline(archive, gateway, client, linked_study, unlinked_study)
    gateway.close()
    archive.close()


def test_hub_unreachable_is_a_502_problem_and_nothing_is_recorded(offline: Offline) -> None:
    response = offline.client.post("/gateway/publications", json={"study_instance_uid": offline.linked_study})
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Bad Gateway",
        "status": 502,
        "detail": "the hub is unreachable: ConnectError",
    }
    assert offline.client.get(f"/gateway/publications/{offline.linked_study}").status_code == 404
    assert offline.client.get("/gateway/publications").json() == []
    # The unlinked patient is refused before the hub is asked anything.
    unlinked = offline.client.post("/gateway/publications", json={"study_instance_uid": offline.unlinked_study})
    assert unlinked.status_code == 409
    assert "is not linked to a national key" in unlinked.json()["detail"]
    withdraw = offline.client.post(f"/gateway/publications/{offline.linked_study}/withdraw", json={"reason": "x"})
    assert withdraw.status_code == 404


def test_the_publisher_retries_without_stopping_and_logs_no_patient_data(offline: Offline) -> None:
    publisher = AutoPublisher(offline.gateway, quiet_seconds=0.001)
    with structlog.testing.capture_logs() as first_logs:
        first = publisher.run_pass()
    # The unlinked study is skipped and kept; the hub being down ends the pass, nothing raised.
    assert first.waiting_for_link == [offline.unlinked_study]
    assert first.failed == [offline.linked_study]
    assert first.published == []
    assert [(e["event"], e["study_instance_uid"]) for e in first_logs] == [
        ("auto_publish.patient_not_linked", offline.unlinked_study),
        ("auto_publish.hub_unavailable", offline.linked_study),
    ]
    with structlog.testing.capture_logs() as second_logs:
        second = publisher.run_pass()
    # Both tried again next pass; the unlinked one is not logged again.
    assert second.waiting_for_link == [offline.unlinked_study]
    assert second.failed == [offline.linked_study]
    assert [e["event"] for e in second_logs] == ["auto_publish.hub_unavailable"]
    logged = repr(first_logs + second_logs)
    for patient_data in ("PB-0000", "Hong", "Kim", "홍", "김", "1992", "1980"):
        assert patient_data not in logged
    assert offline.gateway.list_publications() == []


def test_one_runner_holds_the_lock_at_a_time(tmp_path: Path) -> None:
    first, second = SingleRunnerLock(tmp_path / "lock"), SingleRunnerLock(tmp_path / "lock")
    assert first.try_acquire()
    assert first.try_acquire()  # held already
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    assert not first.try_acquire()
    second.release()


def test_an_older_gateway_database_gains_the_new_publication_columns(offline: Offline) -> None:
    """A gateway.db made before publications recorded their coverage still opens and reads."""
    settings = offline.gateway.settings
    old = settings.storage.data_dir / "older"
    old.mkdir()
    with sqlite3.connect(old / "gateway.db") as connection:
        connection.execute(
            "CREATE TABLE publications (study_instance_uid VARCHAR(64) PRIMARY KEY, manifest_id VARCHAR(64) NOT NULL,"
            " status VARCHAR(16) NOT NULL, published_at VARCHAR(32) NOT NULL, token TEXT NOT NULL)"
        )
        connection.execute(
            "INSERT INTO publications VALUES (?, 'urn:uuid:0', 'current', '2020-01-01T00:00:00Z', 'x')",
            (offline.linked_study,),
        )
    gateway = Gateway(
        settings.model_copy(update={"storage": settings.storage.model_copy(update={"data_dir": old})}), offline.archive
    )
    try:
        publication = gateway.get_publication(offline.linked_study)
        assert (publication.manifest_id, publication.number_of_instances, publication.received_through) == (
            "urn:uuid:0",
            None,
            None,
        )
        # Received after 2020: the publication does not cover it, by its publication time.
        [activity] = offline.archive.index.list_study_activity(study_instance_uids=[offline.linked_study])
        assert publication.is_behind(activity)
    finally:
        gateway.close()
