"""The hub's registry under concurrent registrations: several hospitals publishing at once."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pixport.config import HubSettings
from pixport.hub.institutions import Actor
from pixport.hub.node import Hub
from pixport.hub.registry import RegisteredManifest
from pixport.hub.schema import patient_ids, patients
from pixport.trust.keys import SigningKey
from pixport.trust.manifest import (
    ManifestInstance,
    PatientIdentity,
    StudyAttributes,
    build_manifest,
    sign_manifest,
)

CODES = ("HOSP-A", "HOSP-B", "HOSP-C", "HOSP-D")
ACTOR = Actor("operator:test")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.scale)])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Hub, dict[str, SigningKey]]]:
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url").render_as_string(hide_password=False)
    hub = Hub.open(HubSettings(data_dir=tmp_path / "hub", database_url=url))
    keys = {}
    for code in CODES:
        hub.institutions.admit_institution(
            code, name_ko="병원", name_en="Hospital", endpoint="http://127.0.0.1:1", contact="", actor=ACTOR
        )
        keys[code] = SigningKey.generate()
        hub.institutions.add_key(code, keys[code].public_jwk(), actor=ACTOR)
    yield hub, keys
    hub.close()


def _national_key(n: int) -> str:
    digest = hashlib.sha256(f"person {n}".encode()).digest()
    return "nk1." + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _token(code: str, key: SigningKey, person: int) -> str:
    study = f"2.25.{person}{CODES.index(code) + 1}"
    instance = ManifestInstance(
        series_instance_uid=study + ".1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=study + ".1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1000,
        sha256="a" * 64,
        dataset_sha256="b" * 64,
        pixel_sha256="c" * 64,
    )
    manifest = build_manifest(
        issuer=code,
        patient=PatientIdentity(national_key=_national_key(person), patient_id=f"P{person}", issuer_of_patient_id=code),
        study=StudyAttributes(study_instance_uid=study, modalities=("CT",)),
        instances=[instance],
    )
    return sign_manifest(manifest, key)


def _register_at_once(node: Hub, tokens: dict[str, str]) -> dict[str, RegisteredManifest | Exception]:
    """Each institution's token registered from its own thread, all released together."""
    start = threading.Barrier(len(tokens))
    results: dict[str, RegisteredManifest | Exception] = {}

    def register(code: str) -> None:
        start.wait()
        try:
            results[code] = node.registry.register_manifest(tokens[code], caller=code, actor=Actor(code))
        except Exception as exc:  # noqa: BLE001  collected and asserted by the caller
            results[code] = exc

    threads = [threading.Thread(target=register, args=(code,)) for code in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_hospitals_registering_one_new_patient_at_once_all_succeed(hub: tuple[Hub, dict[str, SigningKey]]) -> None:
    node, keys = hub
    people = range(1, 9)
    for person in people:
        tokens = {code: _token(code, keys[code], person) for code in CODES}
        results = _register_at_once(node, tokens)
        failures = {code: repr(r) for code, r in results.items() if isinstance(r, Exception)}
        assert not failures
        assert {r.status for r in results.values() if isinstance(r, RegisteredManifest)} == {"current"}
    with node.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(patients)).scalar_one() == len(people)
        assert connection.execute(select(func.count()).select_from(patient_ids)).scalar_one() == len(people) * len(
            CODES
        )
    for person in people:
        assert len(node.registry.list_manifests(national_key=_national_key(person))) == len(CODES)
    verified = node.audit.verify()
    assert verified.ok, verified.problems


def test_a_registration_retried_after_a_lost_answer_is_the_same_registration(
    hub: tuple[Hub, dict[str, SigningKey]],
) -> None:
    node, keys = hub
    token = _token(CODES[0], keys[CODES[0]], 100)
    first = node.registry.register_manifest(token, caller=CODES[0], actor=ACTOR)
    again = node.registry.register_manifest(token, caller=CODES[0], actor=ACTOR)
    assert again.manifest_id == first.manifest_id
    assert len(node.registry.list_manifests(national_key=_national_key(100))) == 1
