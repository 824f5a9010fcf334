"""All of the shared corpus is stored and retrieved byte-identical, on every backend.

The corpus (``../shared/corpus``, see its MANIFEST.md) has files that share a SOP Instance UID
on purpose.  They are ingested in rounds, each into a fresh archive, so that no round holds two
files with the same SOP Instance UID; every file is then either stored, and read back with the
same bytes, or rejected with a reason, and the rejected ones are exactly those listed below.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from contract_support import CORPUS

from pixport.archive.ingest import InstanceResult
from pixport.archive.node import Archive

DICOMDIR_FILES = frozenset(
    {
        "media/clunie-charsets/DICOMDIR",
        "media/pydicom-dicomdirtests/DICOMDIR",
        "media/pydicom-dicomdirtests/DICOMDIR-bigEnd",
        "media/pydicom-dicomdirtests/DICOMDIR-empty.dcm",
        "media/pydicom-dicomdirtests/DICOMDIR-implicit",
        "media/pydicom-dicomdirtests/DICOMDIR-nooffset",
        "media/pydicom-dicomdirtests/DICOMDIR-nopatient",
        "media/pydicom-dicomdirtests/DICOMDIR-reordered",
        "media/tiny-alpha/DICOMDIR",
    }
)
# No SOP Class, SOP Instance, Series or Study Instance UID (or nothing readable at all).
WITHOUT_UIDS = frozenset(
    {
        "charset/chrSQEncoding_utf8.dcm",
        "charset/empty_charset_LEI.dcm",
        "dimse/zeiss_oct_cfind_query.dcm",  # a C-FIND identifier, not a stored object
        "malformed/UN_sequence.dcm",
        "malformed/empty_values_Issue195.dcm",
        "malformed/meta_missing_tsyntax.dcm",
        "malformed/nested_priv_SQ.dcm",
        "malformed/no_meta_group_length.dcm",
        "transfer-syntax/jpegls-near_SC_rgb_line.dcm",  # no Series/Study Instance UID
    }
)
TRUNCATED = frozenset(
    {
        "malformed/MR_truncated.dcm",
        "malformed/emri_small_jpeg_2k_lossless_too_short.dcm",
        "malformed/rtplan_truncated.dcm",
        "malformed/no_meta.dcm",  # a raw data set read as explicit VR: an element runs past the end
    }
)
OVER_LIMITS = frozenset({"malformed/deeply_nested_sequence.dcm"})
EXPECTED_REJECTED = DICOMDIR_FILES | WITHOUT_UIDS | TRUNCATED | OVER_LIMITS
REASON_FRAGMENTS = {
    **dict.fromkeys(DICOMDIR_FILES | WITHOUT_UIDS, "missing"),
    **dict.fromkeys(TRUNCATED, "truncated"),
    **dict.fromkeys(OVER_LIMITS, "nested deeper"),
}


def corpus_files() -> list[Path]:
    """Every data file of the corpus, in a stable order."""
    assert CORPUS.is_dir(), f"the shared corpus is expected at {CORPUS}"
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "MANIFEST.md")


def _sop_instance_uid(path: Path) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SOPInstanceUID"])
            return str(dataset.get("SOPInstanceUID", "") or "").strip().rstrip("\x00") or None
        except Exception:  # noqa: BLE001  unreadable files go in any round; ingest decides
            return None
        except RecursionError:
            return None


def rounds_without_shared_uids(paths: list[Path]) -> list[list[Path]]:
    """Split ``paths`` so that no round has two files with the same SOP Instance UID."""
    rounds: list[tuple[set[str], list[Path]]] = []
    for path in paths:
        uid = _sop_instance_uid(path)
        for seen, members in rounds:
            if uid is None or uid not in seen:
                members.append(path)
                if uid is not None:
                    seen.add(uid)
                break
        else:
            rounds.append(({uid} if uid else set(), [path]))
    return [members for _, members in rounds]


def test_rounds_separate_the_files_sharing_a_sop_instance_uid() -> None:
    rounds = rounds_without_shared_uids(corpus_files())
    # MANIFEST.md: seven files share the MR_small SOP Instance UID.
    assert len(rounds) == 7
    assert sum(len(r) for r in rounds) == len(corpus_files())
    where = {path.relative_to(CORPUS).as_posix(): n for n, members in enumerate(rounds) for path in members}
    assert where["modality/ct/CT_small.dcm"] != where["malformed/CTImageStorage_bad_meta.dcm"]
    assert where["charset/chrArab.dcm"] != where["media/clunie-charsets/SCSARAB"]


@pytest.mark.slow
def test_whole_corpus_stored_and_retrieved_byte_identical(make_archive: Callable[[], Archive]) -> None:
    files = corpus_files()
    assert len(files) == 224, "MANIFEST.md lists 224 files; update this test with the corpus"
    outcomes: dict[str, InstanceResult] = {}
    for members in rounds_without_shared_uids(files):
        archive = make_archive()
        results = archive.ingest.ingest_paths(members, source="corpus")
        assert len(results) == len(members)
        stored = 0
        for path, result in zip(members, results, strict=True):
            name = path.relative_to(CORPUS).as_posix()
            outcomes[name] = result
            if result.status == "rejected":
                continue
            assert result.status == "stored", f"{name}: {result.status} in a round without shared UIDs"
            stored += 1
            assert result.study_instance_uid
            assert result.series_instance_uid
            assert result.sop_instance_uid
            data = path.read_bytes()
            [instance] = archive.index.list_instances(
                result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid
            )
            assert instance.digest == hashlib.sha256(data).hexdigest(), name
            assert instance.size == len(data), name
            with archive.blobs.open(instance.digest) as stream:
                assert stream.read() == data, f"{name} did not come back byte-identical"
        assert archive.index.count_instances() == stored
        assert not list(archive.blobs.staging_dir.iterdir()), "temporary files were left behind"

    rejected = {name for name, result in outcomes.items() if result.status == "rejected"}
    assert sorted(rejected - EXPECTED_REJECTED) == [], "rejected, but expected to be stored"
    assert sorted(EXPECTED_REJECTED - rejected) == [], "stored, but expected to be rejected"
    for name in sorted(rejected):
        reason = outcomes[name].reason
        assert reason, f"{name} was rejected without a reason"
        assert REASON_FRAGMENTS[name] in reason, f"{name}: unexpected reason {reason!r}"
    assert len(outcomes) - len(rejected) == 224 - len(EXPECTED_REJECTED)


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_objects_are_rejected(archive: Archive, name: str) -> None:
    [result] = archive.ingest.ingest_paths([CORPUS / name], source="corpus")
    assert result.status == "rejected"
    assert result.reason
    assert "truncated" in result.reason
    assert archive.index.count_instances() == 0
