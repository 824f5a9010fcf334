"""Publishing by API, withdrawing by API and by command, and automatic publishing, against a real hub.

The hub and two gateways run as processes (``network_support``): HANBIT publishes only when
asked; SAEBOM publishes automatically once a study has been quiet for a second, with two
server worker processes, so the single-runner lock is exercised too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import httpx
import pydicom
import pytest
from network_support import Network, link_patient, new_instance, pixport, poll, running_network, stow

from pixport.samples import HOSPITALS
from pixport.trust.assertions import authorization_header

HANBIT = HOSPITALS[0]
SAEBOM = HOSPITALS[2]
UNLINKED_PATIENT_ID = "SB-88888"  # synthetic; linked only halfway through a test
UNLINKED_RRN = "850505-1000004"  # synthetic


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("publishing")
    automatic = {"PIXPORT_GATEWAY__AUTO_PUBLISH_AFTER": "1", "PIXPORT_HTTP__WORKERS": "2"}
    with running_network(root, [(HANBIT, {}), (SAEBOM, automatic)]) as net:
        yield net


def _parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    return [
        chunk.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n")
        for chunk in response.content.split(b"--" + boundary.encode())[1:-1]
    ]


def _api(network: Network, code: str) -> str:
    return network.gateways[code].url + "/gateway/publications"


def _hub_lists(network: Network, code: str, study: str) -> list[dict[str, Any]]:
    """The hub's QIDO-RS answer for one study, asked as the institution ``code``."""
    response = network.as_gateway(code, f"/dicomweb/studies?StudyInstanceUID={study}")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def _template(network: Network, code: str, study: str) -> pydicom.Dataset:
    """One stored instance of a study, read back from the gateway's own DICOMweb."""
    response = httpx.get(
        f"{network.gateways[code].url}/dicomweb/studies/{study}",
        headers={"accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    assert response.status_code == 200
    return pydicom.dcmread(BytesIO(_parts(response)[0]))


# -- publishing and withdrawing by API (HANBIT) -------------------------------------------


def test_publish_by_api_then_retrieve_through_the_hub(network: Network) -> None:
    study = network.gateways[HANBIT.code].studies[0]
    created = httpx.post(_api(network, HANBIT.code), json={"study_instance_uid": study}, timeout=120)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["study_instance_uid"] == study
    assert entry["status"] == "current"
    assert entry["supersedes"] is None
    assert entry["institution"] == HANBIT.code
    assert created.headers["location"] == f"/gateway/publications/{study}"

    one = httpx.get(f"{_api(network, HANBIT.code)}/{study}", timeout=30).json()
    assert (one["manifest_id"], one["status"], one["number_of_instances"]) == (
        entry["manifest_id"],
        "current",
        entry["number_of_instances"],
    )
    listed = httpx.get(_api(network, HANBIT.code), timeout=30).json()
    assert [p["manifest_id"] for p in listed if p["study_instance_uid"] == study] == [entry["manifest_id"]]

    through_hub = network.as_gateway(HANBIT.code, f"/dicomweb/studies/{study}")
    assert through_hub.status_code == 200, through_hub.text
    direct = httpx.get(
        f"{network.gateways[HANBIT.code].url}/dicomweb/studies/{study}",
        headers={"accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    assert sorted(_parts(through_hub)) == sorted(_parts(direct))
    assert len(_parts(through_hub)) == entry["number_of_instances"]

    # Published again: the new manifest supersedes the first, which the hub no longer serves.
    again = httpx.post(_api(network, HANBIT.code), json={"study_instance_uid": study}, timeout=120)
    assert again.status_code == 201, again.text
    assert again.json()["supersedes"] == entry["manifest_id"]
    first = network.as_gateway(HANBIT.code, f"/hub/manifests/{entry['manifest_id']}")
    assert first.headers["pixport-manifest-status"] == "superseded"


def test_withdraw_by_api_removes_the_study_from_the_hub(network: Network) -> None:
    study = network.gateways[HANBIT.code].studies[2]
    api = _api(network, HANBIT.code)
    created = httpx.post(api, json={"study_instance_uid": study}, timeout=120)
    assert created.status_code == 201, created.text
    manifest_id = created.json()["manifest_id"]
    assert [s["0020000D"]["Value"] for s in _hub_lists(network, HANBIT.code, study)] == [[study]]

    withdrawn = httpx.post(f"{api}/{study}/withdraw", json={"reason": "sent in error"}, timeout=60)
    assert withdrawn.status_code == 200, withdrawn.text
    assert (withdrawn.json()["manifest_id"], withdrawn.json()["status"]) == (manifest_id, "withdrawn")
    assert _hub_lists(network, HANBIT.code, study) == []
    assert network.as_gateway(HANBIT.code, f"/dicomweb/studies/{study}").status_code == 404
    assert network.hub_get(network.operator, "operator", f"/dicomweb/studies/{study}").status_code == 404
    local = httpx.get(f"{api}/{study}", timeout=30).json()
    assert local["status"] == "withdrawn"
    assert local["withdrawn_at"]

    twice = httpx.post(f"{api}/{study}/withdraw", json={"reason": "again"}, timeout=60)
    assert twice.status_code == 409
    assert twice.headers["content-type"] == "application/problem+json"
    assert twice.json()["detail"] == f"study {study} is withdrawn already (manifest {manifest_id})"
    no_reason = httpx.post(f"{api}/{study}/withdraw", json={"reason": " "}, timeout=60)
    assert no_reason.status_code == 400

    # Published again after a withdrawal: a new manifest, superseding nothing, served again.
    again = httpx.post(api, json={"study_instance_uid": study}, timeout=120)
    assert again.status_code == 201, again.text
    assert again.json()["supersedes"] is None
    assert network.as_gateway(HANBIT.code, f"/dicomweb/studies/{study}").status_code == 200


def test_withdraw_by_command(network: Network) -> None:
    gateway = network.gateways[HANBIT.code]
    study = gateway.studies[1]
    published = pixport("gateway", "publish", study, "--json", env=gateway.env)
    assert published.returncode == 0, published.stderr
    manifest_id = json.loads(published.stdout)[0]["manifest_id"]
    assert _hub_lists(network, HANBIT.code, study)

    withdrawn = pixport("gateway", "withdraw", study, "--reason", "duplicate of another study", env=gateway.env)
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert withdrawn.stdout.strip() == f"Withdrew {study}: manifest {manifest_id} is withdrawn"
    assert _hub_lists(network, HANBIT.code, study) == []
    assert network.as_gateway(HANBIT.code, f"/dicomweb/studies/{study}").status_code == 404

    listed = pixport("gateway", "publications", "--json", env=gateway.env)
    assert listed.returncode == 0, listed.stderr
    [mine] = [p for p in json.loads(listed.stdout) if p["study_instance_uid"] == study]
    assert (mine["manifest_id"], mine["status"]) == (manifest_id, "withdrawn")
    text = pixport("gateway", "publications", env=gateway.env)
    assert re.search(rf"^{re.escape(study)}\s+withdrawn\s+{re.escape(manifest_id)}", text.stdout, re.MULTILINE)

    again = pixport("gateway", "withdraw", study, "--reason", "again", env=gateway.env)
    assert again.returncode == 1
    assert f"study {study} is withdrawn already" in again.stderr
    unknown = pixport("gateway", "withdraw", "1.2.3.4", "--reason", "test", env=gateway.env)
    assert unknown.returncode == 1
    assert "study 1.2.3.4 is not published" in unknown.stderr


def test_api_errors_are_precise_problem_documents(network: Network) -> None:
    gateway = network.gateways[HANBIT.code]
    api = _api(network, HANBIT.code)
    # A study of a patient this gateway never linked to a national key.
    template = _template(network, HANBIT.code, gateway.studies[1])
    unlinked = new_instance(
        template, study_instance_uid=f"2.25.{int.from_bytes(b'unlinked-hanbit', 'big')}", patient_id="HB-77777"
    )
    stored = stow(gateway.url, [unlinked])
    assert stored.status_code == 200, stored.text
    study = str(unlinked.StudyInstanceUID)

    refused = httpx.post(api, json={"study_instance_uid": study}, timeout=60)
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["status"] == 409
    assert problem["title"] == "Conflict"
    assert problem["detail"] == (
        f"the patient of study {study} is not linked to a national key (pixport gateway patients link)"
    )
    assert "HB-77777" not in refused.text
    assert httpx.get(f"{api}/{study}", timeout=30).status_code == 404

    unknown = httpx.post(api, json={"study_instance_uid": "1.2.3.4.5"}, timeout=60)
    assert (unknown.status_code, unknown.json()["detail"]) == (404, "no study 1.2.3.4.5")
    not_published = httpx.get(f"{api}/1.2.3.4.5", timeout=30)
    assert (not_published.status_code, not_published.json()["detail"]) == (404, "study 1.2.3.4.5 is not published")
    for body in (b"not json", b"[]", b'{"study_instance_uid": "../etc"}', b"{}"):
        bad = httpx.post(api, content=body, headers={"content-type": "application/json"}, timeout=30)
        assert bad.status_code == 400, body
        assert bad.headers["content-type"] == "application/problem+json"
    # The hub's own refusal comes back with its status and reason: here the gateway's record
    # is made stale on purpose, by withdrawing the manifest at the hub directly.
    study = gateway.studies[0]
    current = httpx.get(f"{api}/{study}", timeout=30)
    if current.status_code == 404 or current.json()["status"] != "current":
        assert httpx.post(api, json={"study_instance_uid": study}, timeout=120).status_code == 201
    manifest_id = httpx.get(f"{api}/{study}", timeout=30).json()["manifest_id"]
    _withdraw_at_the_hub(network, HANBIT.code, manifest_id)
    stale = httpx.post(f"{api}/{study}/withdraw", json={"reason": "stale"}, timeout=60)
    assert stale.status_code == 409
    assert stale.json()["detail"] == f"the hub refused (409): manifest {manifest_id} is withdrawn already"


def _withdraw_at_the_hub(network: Network, code: str, manifest_id: str) -> None:
    path = f"/hub/manifests/{manifest_id}/withdraw"
    headers = authorization_header(network.gateways[code].key(), code, "pixport-hub", "POST", path)
    response = httpx.post(network.hub_url + path, headers=headers, json={"reason": "test"}, timeout=60)
    assert response.status_code == 200, response.text


# -- automatic publishing (SAEBOM) --------------------------------------------------------


def _publications(network: Network, code: str) -> dict[str, dict[str, Any]]:
    listed = httpx.get(_api(network, code), timeout=30)
    assert listed.status_code == 200
    return {p["study_instance_uid"]: p for p in listed.json()}


def test_auto_publish_publishes_quiet_studies_and_supersedes_when_one_changes(network: Network) -> None:
    gateway = network.gateways[SAEBOM.code]
    api = _api(network, SAEBOM.code)
    first = poll(
        "every sample study published automatically",
        lambda: (found := _publications(network, SAEBOM.code)) and set(gateway.studies) <= set(found) and found,
    )
    assert isinstance(first, dict)
    assert all(first[study]["status"] == "current" for study in gateway.studies)
    for study in gateway.studies:
        assert [s["0020000D"]["Value"] for s in _hub_lists(network, SAEBOM.code, study)] == [[study]]

    # A withdrawn study stays withdrawn: only a person publishes it again.
    withdrawn_study = gateway.studies[0]
    assert httpx.post(f"{api}/{withdrawn_study}/withdraw", json={"reason": "test"}, timeout=60).status_code == 200

    # One more instance in another study: published again once quiet, superseding.
    changed = gateway.studies[1]
    before = first[changed]
    extra = new_instance(_template(network, SAEBOM.code, changed))
    stored = stow(gateway.url, [extra])
    assert stored.status_code == 200, stored.text
    after = poll(
        "the changed study published again",
        lambda: (p := _publications(network, SAEBOM.code)[changed])["manifest_id"] != before["manifest_id"] and p,
    )
    assert isinstance(after, dict)
    assert after["supersedes"] == before["manifest_id"]
    assert after["number_of_instances"] == before["number_of_instances"] + 1
    assert after["status"] == "current"
    old = network.as_gateway(SAEBOM.code, f"/hub/manifests/{before['manifest_id']}")
    assert old.headers["pixport-manifest-status"] == "superseded"
    [listed] = _hub_lists(network, SAEBOM.code, changed)
    assert listed["00201208"]["Value"] == [before["number_of_instances"] + 1]
    through_hub = network.as_gateway(SAEBOM.code, f"/dicomweb/studies/{changed}")
    assert through_hub.status_code == 200
    assert len(_parts(through_hub)) == before["number_of_instances"] + 1

    publications = _publications(network, SAEBOM.code)
    assert publications[withdrawn_study]["status"] == "withdrawn"
    assert _hub_lists(network, SAEBOM.code, withdrawn_study) == []
    assert publications[gateway.studies[2]]["manifest_id"] == first[gateway.studies[2]]["manifest_id"]

    # Two server workers, one publisher; no study refused.  (A hub error is retried next pass:
    # "auto_publish.hub_unavailable" may appear, e.g. when HANBIT registers the same patient's
    # first manifest at the same moment.)
    log = network.log_text()
    runners = [line for line in log.splitlines() if "auto_publish.running" in line and "SAEBOM" in line]
    assert len(runners) == 1, runners
    assert "auto_publish.failed" not in log


def test_auto_publish_waits_for_the_patient_to_be_linked(network: Network) -> None:
    gateway = network.gateways[SAEBOM.code]
    template = _template(network, SAEBOM.code, gateway.studies[2])
    study = f"2.25.{int.from_bytes(b'unlinked-saebom', 'big')}"
    unlinked = new_instance(template, study_instance_uid=study, patient_id=UNLINKED_PATIENT_ID)
    assert stow(gateway.url, [unlinked]).status_code == 200

    line = poll(
        "the unlinked study to be noticed",
        lambda: next(
            (
                line
                for line in network.log_text().splitlines()
                if "auto_publish.patient_not_linked" in line and study in line
            ),
            None,
        ),
    )
    assert isinstance(line, str)
    assert UNLINKED_PATIENT_ID not in line
    assert str(template.PatientName).split("^")[0] not in line
    assert study not in _publications(network, SAEBOM.code)

    linked = link_patient(gateway.env, UNLINKED_PATIENT_ID, UNLINKED_RRN)
    assert linked.returncode == 0, linked.stderr
    published = poll("the study published once linked", lambda: _publications(network, SAEBOM.code).get(study))
    assert isinstance(published, dict)
    assert published["status"] == "current"
    assert [s["0020000D"]["Value"] for s in _hub_lists(network, SAEBOM.code, study)] == [[study]]
    # Logged once, not once per pass; never with the patient's ID, nor the RRN anywhere.
    log = network.log_text()
    assert sum(1 for x in log.splitlines() if "auto_publish.patient_not_linked" in x and study in x) == 1
    assert UNLINKED_PATIENT_ID not in log
    assert UNLINKED_RRN not in log
    assert UNLINKED_RRN.replace("-", "") not in log


def test_nothing_is_logged_with_patient_data(network: Network) -> None:
    log = network.log_text()
    for code in (HANBIT.code, SAEBOM.code):
        for prefix in (HANBIT.id_prefix, SAEBOM.id_prefix):
            assert f"{prefix}-0000" not in log, code
    assert "Hong^Gildong" not in log
    assert "홍" not in log
