"""IndexStore contract: store outcomes, search at every level with every Match kind, listings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from contract_support import InstanceSpec
from pydicom.uid import generate_uid

from pixport.archive.node import Archive
from pixport.dicom.names import normalize
from pixport.errors import BadQuery
from pixport.storage.base import IndexStore, Match, NewInstance, Outcome, Query

# The standard's own examples of Korean Person Names (PS3.5 Annex H); no real patient.
HONG_GILDONG = "Hong^Gildong=洪^吉洞=홍^길동"
HONG_MINSU = "Hong^Minsu=洪^民秀=홍^민수"
KIM_HEEJUNG = "Kim^Heejung=金^熙中=김^희중"


@dataclass
class Populated:
    """Four studies ingested in this order; UIDs of studies and series, files per SOP UID."""

    archive: Archive
    studies: dict[str, str]
    series: dict[str, str]
    files: dict[str, Path]

    @property
    def index(self) -> IndexStore:
        return self.archive.index

    def study_uids(self, rows: list) -> list[str]:
        names = {uid: name for name, uid in self.studies.items()}
        return [names[row.study_instance_uid] for row in rows]

    def search_studies(self, *matches: Match, limit: int = 1000, offset: int = 0) -> list[str]:
        return self.study_uids(self.index.search(Query("study", list(matches), limit=limit, offset=offset)))


@pytest.fixture
def populated(archive: Archive, instance_writer: Callable[[InstanceSpec], Path]) -> Populated:
    studies = {name: generate_uid() for name in ("S1", "S2", "S3", "S4")}
    series = {name: generate_uid() for name in ("S1-CT", "S1-MR", "S2-PT", "S3-OT", "S4-CT")}
    s1 = {
        "study_instance_uid": studies["S1"],
        "patient_name": HONG_GILDONG,
        "patient_id": "PX-001",
        "study_date": "20240115",
        "study_time": "093000",
        "accession_number": "ACC-001",
    }
    specs = [
        # S1: series number 2 (CT) arrives first, then series number 1 (MR), instances out of order.
        InstanceSpec(series_instance_uid=series["S1-CT"], modality="CT", series_number=2, instance_number=2, **s1),
        InstanceSpec(series_instance_uid=series["S1-CT"], modality="CT", series_number=2, instance_number=1, **s1),
        InstanceSpec(series_instance_uid=series["S1-MR"], modality="MR", series_number=1, instance_number=3, **s1),
        InstanceSpec(series_instance_uid=series["S1-MR"], modality="MR", series_number=1, instance_number=1, **s1),
        InstanceSpec(series_instance_uid=series["S1-MR"], modality="MR", series_number=1, instance_number=2, **s1),
        InstanceSpec(
            study_instance_uid=studies["S2"],
            series_instance_uid=series["S2-PT"],
            patient_name=KIM_HEEJUNG,
            patient_id="PX-002",
            study_date="20240210",
            study_time="141500",
            accession_number="ACC-002",
            modality="PT",
        ),
        InstanceSpec(
            study_instance_uid=studies["S3"],
            series_instance_uid=series["S3-OT"],
            patient_name="Doe^Jane",
            patient_id="px-003",
            study_date="20231231",
            study_time="235959",
            accession_number="B-003",
            modality=None,
        ),
        InstanceSpec(
            study_instance_uid=studies["S4"],
            series_instance_uid=series["S4-CT"],
            patient_name=HONG_MINSU,
            patient_id="PX-004",
            study_date="20240301",
            study_time="080000",
            accession_number="ACC-004",
            modality="CT",
        ),
    ]
    paths = [instance_writer(spec) for spec in specs]
    results = archive.ingest.ingest_paths(paths, source="contract")
    assert [r.status for r in results] == ["stored"] * len(specs), [r.reason for r in results]
    return Populated(archive, studies, series, {spec.sop_instance_uid: p for spec, p in zip(specs, paths, strict=True)})


# -- store outcomes ------------------------------------------------------------------------


def test_store_stored_duplicate_conflict(archive: Archive, instance_writer) -> None:
    spec = InstanceSpec(study_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    original = instance_writer(spec)
    altered = instance_writer(replace(spec, study_description="ALTERED", pixel_value=7))

    first = archive.ingest.ingest_paths([original], source="first")
    again = archive.ingest.ingest_paths([original], source="again")
    other = archive.ingest.ingest_paths([altered], source="altered")

    assert [r.status for r in first] == ["stored"]
    assert [r.status for r in again] == ["duplicate"]
    assert [r.status for r in other] == ["conflict"]
    assert other[0].reason
    assert archive.index.count_instances() == 1
    original_digest = hashlib.sha256(original.read_bytes()).hexdigest()
    altered_digest = hashlib.sha256(altered.read_bytes()).hexdigest()
    assert list(archive.index.iter_digests()) == [(spec.sop_instance_uid, original_digest)]
    conflicts = archive.index.list_conflicts()
    assert [(c.sop_instance_uid, c.stored_digest, c.offered_digest, c.source) for c in conflicts] == [
        (spec.sop_instance_uid, original_digest, altered_digest, "altered")
    ]
    assert conflicts[0].received_at
    # The stored instance still has its first bytes: a conflict never overwrites.
    [stored] = archive.index.list_instances(spec.study_instance_uid)
    assert stored.digest == original_digest
    with archive.blobs.open(stored.digest) as stream:
        assert stream.read() == original.read_bytes()


def _new_instance(sop_uid: str, study_uid: str, series_uid: str, digest: str, source: str) -> NewInstance:
    document = orjson.dumps({"00080018": {"vr": "UI", "Value": [sop_uid]}})
    return NewInstance(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        sop_instance_uid=sop_uid,
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        digest=digest,
        size=10,
        attributes={"transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": 1, "modality": "OT"},
        metadata_json=document,
        study_json=b"{}",
        series_json=b"{}",
        instance_json=document,
        source=source,
    )


def test_store_instances_batch_outcomes_in_order(archive: Archive) -> None:
    study, series = generate_uid(), generate_uid()
    a, b = generate_uid(), generate_uid()
    batch = [
        _new_instance(a, study, series, "a" * 64, "batch"),
        _new_instance(b, study, series, "b" * 64, "batch"),
        _new_instance(a, study, series, "a" * 64, "batch"),
        _new_instance(b, study, series, "c" * 64, "batch"),
    ]
    assert archive.index.store_instances(batch) == [
        Outcome.STORED,
        Outcome.STORED,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
    ]
    assert archive.index.store_instances([_new_instance(a, study, series, "d" * 64, "later")]) == [Outcome.CONFLICT]
    conflicts = archive.index.list_conflicts()
    assert [(c.sop_instance_uid, c.stored_digest, c.offered_digest, c.source) for c in conflicts] == [
        (b, "b" * 64, "c" * 64, "batch"),
        (a, "a" * 64, "d" * 64, "later"),
    ]
    assert archive.index.count_instances() == 2
    assert dict(archive.index.iter_digests()) == {a: "a" * 64, b: "b" * 64}


def test_before_commit_runs_inside_the_transaction(archive: Archive) -> None:
    """Rows are not visible while ``before_commit`` runs; if it raises, none are kept."""
    index = archive.index
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    seen_meanwhile: list[int] = []

    def fail() -> None:
        seen_meanwhile.append(index.count_instances())
        msg = "blob store failed"
        raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="blob store failed"):
        index.store_instances([_new_instance(sop, study, series, "d" * 64, "first")], fail)
    assert seen_meanwhile == [0]
    assert index.count_instances() == 0
    assert index.list_instances(study) == []
    calls: list[int] = []
    outcomes = index.store_instances(
        [_new_instance(sop, study, series, "d" * 64, "again")], lambda: calls.append(index.count_instances())
    )
    assert outcomes == [Outcome.STORED]
    assert calls == [0]  # called before the commit made the row visible
    assert index.count_instances() == 1


def test_list_study_activity(archive: Archive) -> None:
    """Each study's newest reception and instance count, bounded on either side, or by UID."""
    index = archive.index
    first, second = generate_uid(), generate_uid()
    first_series, second_series = generate_uid(), generate_uid()
    a, b, c, d = (generate_uid() for _ in range(4))
    before = datetime.now(UTC)
    index.store_instances(
        [_new_instance(a, first, first_series, "a" * 64, "s"), _new_instance(b, first, first_series, "b" * 64, "s")]
    )
    between = datetime.now(UTC)
    index.store_instances([_new_instance(c, second, second_series, "c" * 64, "s")])
    after = datetime.now(UTC)

    everything = index.list_study_activity()
    assert [(s.study_instance_uid, s.number_of_instances) for s in everything] == [(first, 2), (second, 1)]
    assert before <= everything[0].last_received_at <= between <= everything[1].last_received_at <= after
    assert everything[0].last_received_at.tzinfo is not None
    assert [s.study_instance_uid for s in index.list_study_activity(received_until=between)] == [first]
    assert [s.study_instance_uid for s in index.list_study_activity(received_after=between)] == [second]
    assert index.list_study_activity(received_after=after) == []
    assert index.list_study_activity(received_until=before) == []
    assert [s.study_instance_uid for s in index.list_study_activity(study_instance_uids=[second])] == [second]
    assert index.list_study_activity(study_instance_uids=[]) == []

    # A duplicate changes nothing; a new instance moves its study past the others.
    index.store_instances([_new_instance(a, first, first_series, "a" * 64, "again")])
    assert index.list_study_activity(received_after=after) == []
    index.store_instances([_new_instance(d, first, first_series, "d" * 64, "later")])
    [moved] = index.list_study_activity(received_after=after)
    assert (moved.study_instance_uid, moved.number_of_instances) == (first, 3)
    assert [s.study_instance_uid for s in index.list_study_activity()] == [second, first]


def test_empty_index(archive: Archive) -> None:
    assert archive.index.count_instances() == 0
    assert list(archive.index.iter_digests()) == []
    assert archive.index.list_conflicts() == []
    assert archive.index.list_study_activity() == []
    assert archive.index.search(Query("study")) == []
    assert archive.index.list_instances(generate_uid()) == []


# -- study level --------------------------------------------------------------------------


def test_study_single_is_exact_and_case_sensitive(populated: Populated) -> None:
    assert populated.search_studies(Match("patient_id", "single", "PX-002")) == ["S2"]
    assert populated.search_studies(Match("patient_id", "single", "px-002")) == []
    assert populated.search_studies(Match("patient_id", "single", "PX-00")) == []
    assert populated.search_studies(Match("issuer_of_patient_id", "single", "HOSPITAL-A")) == ["S1", "S2", "S3", "S4"]


def test_study_uids(populated: Populated) -> None:
    uids = [populated.studies["S3"], populated.studies["S1"], generate_uid()]
    assert populated.search_studies(Match("study_instance_uid", "uids", uids)) == ["S1", "S3"]


def test_study_wildcard(populated: Populated) -> None:
    assert populated.search_studies(Match("patient_id", "wildcard", "PX-00*")) == ["S1", "S2", "S4"]
    assert populated.search_studies(Match("accession_number", "wildcard", "ACC-00?")) == ["S1", "S2", "S4"]
    assert populated.search_studies(Match("accession_number", "wildcard", "*-003")) == ["S3"]
    # SQL's own wildcards are literal characters in DICOM.
    assert populated.search_studies(Match("patient_id", "wildcard", "PX_00*")) == []
    assert populated.search_studies(Match("patient_id", "wildcard", "PX-%")) == []


def test_study_range(populated: Populated) -> None:
    assert populated.search_studies(Match("study_date", "range", ("20240101", "20240228"))) == ["S1", "S2"]
    assert populated.search_studies(Match("study_date", "range", ("", "20231231"))) == ["S3"]
    assert populated.search_studies(Match("study_date", "range", ("20240301", ""))) == ["S4"]
    assert populated.search_studies(Match("study_time", "range", ("090000", "100000"))) == ["S1"]
    # A time range's upper bound includes fractions of its last second.
    assert populated.search_studies(Match("study_time", "range", ("2300", "235959"))) == ["S3"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("HONG^GILDONG", ["S1"]),
        ("hong^gildong", ["S1"]),
        ("洪^吉洞", ["S1"]),
        ("홍^길동", ["S1"]),
        ("Hong^Gildong=洪^吉洞=홍^길동", ["S1"]),
        ("hong*", ["S1", "S4"]),
        ("홍^*", ["S1", "S4"]),
        ("김^희중", ["S2"]),
        ("KIM^HEEJUNG", ["S2"]),
        ("doe^jane", ["S3"]),
        ("hong", []),
        ("길동", []),
    ],
)
def test_study_name(populated: Populated, value: str, expected: list[str]) -> None:
    # Callers normalize (NFC, case-folded) before matching, as archive.query does.
    assert populated.search_studies(Match("patient_name", "name", normalize(value))) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("길동", ["S1"]),
        ("홍", ["S1", "S4"]),
        ("홍길동", ["S1"]),
        ("gil", ["S1"]),
        ("HEE", ["S2"]),
        ("희중", ["S2"]),
        ("jane doe", ["S3"]),
        ("jane kim", []),
        ("ildong", []),
    ],
)
def test_study_fuzzy(populated: Populated, value: str, expected: list[str]) -> None:
    assert populated.search_studies(Match("patient_name", "fuzzy", normalize(value))) == expected


def test_study_matches_combine(populated: Populated) -> None:
    assert populated.search_studies(
        Match("patient_name", "fuzzy", "홍"), Match("study_date", "range", ("20240201", ""))
    ) == ["S4"]


def test_study_modalities_and_counts(populated: Populated) -> None:
    rows = {row.study_instance_uid: row for row in populated.index.search(Query("study"))}
    s1, s2, s3 = (rows[populated.studies[name]] for name in ("S1", "S2", "S3"))
    assert (s1.modalities_in_study, s1.number_of_series, s1.number_of_instances) == (["CT", "MR"], 2, 5)
    assert (s2.modalities_in_study, s2.number_of_series, s2.number_of_instances) == (["PT"], 1, 1)
    assert (s3.modalities_in_study, s3.number_of_series, s3.number_of_instances) == ([], 1, 1)
    assert s1.series_instance_uid is None
    assert s1.sop_instance_uid is None
    [document] = s1.documents
    assert orjson.loads(document)["0020000D"]["Value"] == [populated.studies["S1"]]


def test_study_modalities_in_study_match(populated: Populated) -> None:
    assert populated.search_studies(Match("modalities_in_study", "single", "MR")) == ["S1"]
    assert populated.search_studies(Match("modalities_in_study", "single", "CT")) == ["S1", "S4"]
    assert populated.search_studies(Match("modalities_in_study", "uids", ["PT", "MR"])) == ["S1", "S2"]
    assert populated.search_studies(Match("modalities_in_study", "wildcard", "P*")) == ["S2"]
    assert populated.search_studies(Match("modalities_in_study", "single", "US")) == []
    # The counts of a matched study are still those of all of its series.
    [row] = populated.index.search(Query("study", [Match("modalities_in_study", "single", "MR")]))
    assert (row.modalities_in_study, row.number_of_series, row.number_of_instances) == (["CT", "MR"], 2, 5)


def test_study_limit_and_offset(populated: Populated) -> None:
    assert populated.search_studies() == ["S1", "S2", "S3", "S4"]
    assert populated.search_studies(limit=2) == ["S1", "S2"]
    assert populated.search_studies(limit=2, offset=1) == ["S2", "S3"]
    assert populated.search_studies(limit=10, offset=3) == ["S4"]
    assert populated.search_studies(offset=4) == []
    pages = [populated.search_studies(Match("patient_id", "wildcard", "PX*"), limit=2, offset=o) for o in (0, 2)]
    assert pages == [["S1", "S2"], ["S4"]]


def test_unknown_attribute_is_a_bad_query(populated: Populated) -> None:
    with pytest.raises(BadQuery):
        populated.index.search(Query("study", [Match("modality", "single", "CT")]))
    with pytest.raises(BadQuery):
        populated.index.search(Query("instance", [Match("instance_number", "single", "one")]))


# -- series level -------------------------------------------------------------------------


def test_series_in_study_with_counts(populated: Populated) -> None:
    rows = populated.index.search(Query("series", study_instance_uid=populated.studies["S1"]))
    assert [(r.series_instance_uid, r.number_of_instances) for r in rows] == [
        (populated.series["S1-CT"], 2),
        (populated.series["S1-MR"], 3),
    ]
    assert all(r.study_instance_uid == populated.studies["S1"] and r.sop_instance_uid is None for r in rows)
    study_document, series_document = rows[1].documents
    assert orjson.loads(study_document)["0020000D"]["Value"] == [populated.studies["S1"]]
    assert orjson.loads(series_document)["0020000E"]["Value"] == [populated.series["S1-MR"]]


def _series(populated: Populated, *matches: Match, **scope: object) -> list[str]:
    names = {uid: name for name, uid in populated.series.items()}
    rows = populated.index.search(Query("series", list(matches), **scope))  # type: ignore[arg-type]
    return [names[r.series_instance_uid] for r in rows]


def test_series_matches(populated: Populated) -> None:
    assert _series(populated, Match("modality", "single", "CT")) == ["S1-CT", "S4-CT"]
    assert _series(populated, Match("modality", "uids", ["PT", "MR"])) == ["S1-MR", "S2-PT"]
    assert _series(populated, Match("modality", "wildcard", "M?")) == ["S1-MR"]
    assert _series(populated, Match("series_number", "single", "1"), study_instance_uid=populated.studies["S1"]) == [
        "S1-MR"
    ]
    assert _series(populated, Match("series_number", "range", (2, 5))) == ["S1-CT"]
    # Study attributes match at series level too.
    assert _series(populated, Match("patient_name", "fuzzy", "희중")) == ["S2-PT"]
    assert _series(populated, Match("patient_id", "wildcard", "PX-00*"), Match("modality", "single", "CT")) == [
        "S1-CT",
        "S4-CT",
    ]
    assert _series(populated, series_instance_uid=populated.series["S3-OT"]) == ["S3-OT"]


def test_series_limit_and_offset(populated: Populated) -> None:
    assert _series(populated) == ["S1-CT", "S1-MR", "S2-PT", "S3-OT", "S4-CT"]
    assert _series(populated, limit=2, offset=2) == ["S2-PT", "S3-OT"]


# -- instance level -----------------------------------------------------------------------


def _instance_numbers(populated: Populated, query: Query) -> list[tuple[str, int]]:
    names = {uid: name for name, uid in populated.series.items()}
    rows = populated.index.search(query)
    result = []
    for row in rows:
        document = orjson.loads(row.documents[2])
        assert document["00080018"]["Value"] == [row.sop_instance_uid]
        result.append((names[row.series_instance_uid], document["00200013"]["Value"][0]))
    return result


def test_instance_search(populated: Populated) -> None:
    s1 = populated.studies["S1"]
    everything = _instance_numbers(populated, Query("instance", study_instance_uid=s1))
    assert everything == [("S1-CT", 1), ("S1-CT", 2), ("S1-MR", 1), ("S1-MR", 2), ("S1-MR", 3)]
    in_series = Query("instance", study_instance_uid=s1, series_instance_uid=populated.series["S1-MR"])
    assert _instance_numbers(populated, in_series) == [("S1-MR", 1), ("S1-MR", 2), ("S1-MR", 3)]
    numbers = Query("instance", [Match("instance_number", "uids", ["1", "3"])], study_instance_uid=s1)
    assert _instance_numbers(populated, numbers) == [("S1-CT", 1), ("S1-MR", 1), ("S1-MR", 3)]
    page = Query("instance", study_instance_uid=s1, limit=2, offset=1)
    assert _instance_numbers(populated, page) == [("S1-CT", 2), ("S1-MR", 1)]
    by_class = Query("instance", [Match("sop_class_uid", "single", "1.2.840.10008.5.1.4.1.1.7")])
    assert len(populated.index.search(by_class)) == 8
    by_name = Query("instance", [Match("patient_name", "name", normalize("홍^민수"))])
    assert _instance_numbers(populated, by_name) == [("S4-CT", 1)]
    sop_uid = next(iter(populated.files))
    [row] = populated.index.search(Query("instance", [Match("sop_instance_uid", "single", sop_uid)]))
    assert len(row.documents) == 3


# -- listings -----------------------------------------------------------------------------


def test_list_instances_order_and_fields(populated: Populated) -> None:
    s1 = populated.studies["S1"]
    instances = populated.index.list_instances(s1)
    metadata = [orjson.loads(doc) for doc in populated.index.list_metadata(s1)]
    # Series number order (MR is series 1), then instance number, whatever the arrival order.
    assert [(i.series_instance_uid, m["00200013"]["Value"][0]) for i, m in zip(instances, metadata, strict=True)] == [
        (populated.series["S1-MR"], 1),
        (populated.series["S1-MR"], 2),
        (populated.series["S1-MR"], 3),
        (populated.series["S1-CT"], 1),
        (populated.series["S1-CT"], 2),
    ]
    for item in instances:
        data = populated.files[item.sop_instance_uid].read_bytes()
        assert item.study_instance_uid == s1
        assert item.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
        assert item.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        assert item.digest == hashlib.sha256(data).hexdigest()
        assert item.size == len(data)
    series_only = populated.index.list_instances(s1, populated.series["S1-CT"])
    assert [i.sop_instance_uid for i in series_only] == [i.sop_instance_uid for i in instances[3:]]
    one = instances[1]
    assert populated.index.list_instances(s1, one.series_instance_uid, one.sop_instance_uid) == [one]
    assert populated.index.list_instances(s1, populated.series["S2-PT"]) == []


def test_list_metadata_returns_stored_dicom_json(populated: Populated) -> None:
    s1 = populated.studies["S1"]
    instances = populated.index.list_instances(s1)
    documents = [orjson.loads(doc) for doc in populated.index.list_metadata(s1)]
    assert [d["00080018"]["Value"] for d in documents] == [[i.sop_instance_uid] for i in instances]
    for document in documents:
        assert document["0020000D"]["Value"] == [s1]
        assert document["00100020"] == {"vr": "LO", "Value": ["PX-001"]}
        assert document["00100010"]["vr"] == "PN"
        name = {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}
        assert document["00100010"]["Value"] == [name]
    one = instances[0]
    [single] = populated.index.list_metadata(s1, one.series_instance_uid, one.sop_instance_uid)
    assert orjson.loads(single)["00080018"]["Value"] == [one.sop_instance_uid]
    assert populated.index.list_metadata(populated.studies["S4"], populated.series["S1-CT"]) == []


def test_iter_digests_and_count(populated: Populated) -> None:
    expected = {uid: hashlib.sha256(path.read_bytes()).hexdigest() for uid, path in populated.files.items()}
    digests = list(populated.index.iter_digests())
    assert len(digests) == len(expected)
    assert dict(digests) == expected
    assert populated.index.count_instances() == 8
    for digest in expected.values():
        assert populated.archive.blobs.exists(digest)
