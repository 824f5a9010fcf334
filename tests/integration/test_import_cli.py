"""`pixport archive import` and `check` run as real commands on the corpus media, ZIPs, and a kill."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from pixport.archive.media import MediaImporter, discover, resolve_reference
from pixport.config import Settings, StorageSettings
from pixport.wiring import build_archive

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
MEDIA = CORPUS / "media"
PIXPORT = Path(sys.executable).with_name("pixport")
TINY_SERIES = MEDIA / "tiny-alpha" / "PT000000" / "ST000000" / "SE000000"

# Images each media set holds, from MANIFEST.md (and cross-checked against the DICOMDIR below).
MEDIA_SETS = {"pydicom-dicomdirtests": 31, "tiny-alpha": 50, "clunie-charsets": 11}
# DICOMDIR files in each media set folder: the one named DICOMDIR plus pydicom's variants.
DICOMDIRS = {"pydicom-dicomdirtests": 7, "tiny-alpha": 1, "clunie-charsets": 1}


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXPORT_")}
    env["PIXPORT_STORAGE__DATA_DIR"] = str(data_dir)
    env["COLUMNS"] = "250"
    env.update(extra)
    return env


def pixport(data_dir: Path, *args: str | Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PIXPORT), *map(str, args)],
        env=_env(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def import_json(data_dir: Path, *paths: Path, **extra: str) -> tuple[int, dict[str, Any]]:
    done = pixport(data_dir, "archive", "import", "--json", *paths, **extra)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def check_json(data_dir: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = pixport(data_dir, "archive", "check", "--json", *args)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def referenced_images(dicomdir: Path) -> int:
    records = pydicom.dcmread(dicomdir).DirectoryRecordSequence
    return sum(1 for record in records if "ReferencedFileID" in record)


def tiny_files() -> list[Path]:
    return sorted(TINY_SERIES.iterdir())


@pytest.mark.parametrize("media_set", sorted(MEDIA_SETS))
def test_import_media_set_then_again_is_all_duplicates(tmp_path: Path, media_set: str) -> None:
    root = MEDIA / media_set
    images = MEDIA_SETS[media_set]
    assert referenced_images(root / "DICOMDIR") == images
    data = tmp_path / "data"

    code, first = import_json(data, root)
    assert code == 0, first
    assert first["stored"] == images
    assert first["duplicates"] == 0
    assert first["rejected"] == []
    assert first["conflicts"] == []
    assert first["found"] == images + DICOMDIRS[media_set] - 1
    skipped = [item["reason"] for item in first["skipped"]]
    assert len(skipped) == DICOMDIRS[media_set]
    assert all(reason.startswith("DICOMDIR") for reason in skipped)

    code, again = import_json(data, root)
    assert code == 0, again
    assert again["stored"] == 0
    assert again["duplicates"] == images

    code, report = check_json(data)
    assert code == 0
    assert report["instances_checked"] == images
    assert report["problems"] == []
    assert report["orphan_blobs"] == []


def test_import_table_lists_rejected_file_with_reason_and_exits_1(tmp_path: Path) -> None:
    good = CORPUS / "modality" / "mr" / "MR_small.dcm"
    truncated = CORPUS / "malformed" / "MR_truncated.dcm"
    done = pixport(tmp_path / "data", "archive", "import", good, truncated, CORPUS / "MANIFEST.md")
    assert done.returncode == 1, done.stderr
    assert "Pixel Data is truncated" in done.stdout
    assert str(truncated) in done.stdout
    assert "1 rejected, 0 conflicted" in done.stdout
    assert "not a DICOM file" in done.stdout  # MANIFEST.md: skipped, not rejected

    code, summary = import_json(tmp_path / "data", truncated)
    assert code == 1
    assert summary["rejected"] == [{"name": str(truncated), "reason": "Pixel Data is truncated"}]


def test_same_uid_other_bytes_is_a_conflict_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, _ = import_json(data, CORPUS / "modality" / "mr" / "MR_small.dcm")
    assert code == 0
    code, summary = import_json(data, CORPUS / "transfer-syntax" / "rle_MR_small_RLE.dcm")
    assert code == 1
    assert summary["stored"] == 0
    assert len(summary["conflicts"]) == 1
    assert "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457" in summary["conflicts"][0]["reason"]
    done = pixport(data, "archive", "import", CORPUS / "transfer-syntax" / "rle_MR_small_RLE.dcm")
    assert "0 rejected, 1 conflicted" in done.stdout
    listed = pixport(data, "archive", "conflicts", "--json")
    assert listed.returncode == 0
    conflicts = json.loads(listed.stdout)
    assert [c["sop_instance_uid"] for c in conflicts] == ["1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"] * 2
    assert conflicts[0]["stored_digest"] != conflicts[0]["offered_digest"]
    assert "Conflicts: 2" in pixport(data, "archive", "conflicts").stdout


def test_import_zip_streams_members_and_never_uses_their_names(tmp_path: Path) -> None:
    files = tiny_files()
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(MEDIA / "tiny-alpha" / "DICOMDIR", "CD/DICOMDIR")
        for number, path in enumerate(files):
            zf.write(path, f"CD/IMAGES/IMG{number:04d}")
        zf.write(CORPUS / "modality" / "ct" / "CT_small.dcm", "../../escaped.dcm")
        zf.writestr("/abs/README.TXT", "Insert the CD and run the viewer.\n")
        zf.writestr("CD/nested.zip", b"PK\x05\x06" + b"\x00" * 18)  # an empty ZIP: never opened
    data = tmp_path / "run" / "data"

    code, summary = import_json(data, archive)
    assert code == 0, summary
    assert summary["stored"] == len(files) + 1
    assert summary["rejected"] == []
    reasons = {item["name"].split("!", 1)[1]: item["reason"] for item in summary["skipped"]}
    assert reasons["CD/DICOMDIR"].startswith("DICOMDIR")
    assert reasons["/abs/README.TXT"] == "not a DICOM file"
    assert reasons["CD/nested.zip"] == "not a DICOM file"
    assert not list(tmp_path.rglob("escaped.dcm"))
    assert not (Path("/abs") / "README.TXT").exists()
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith("index.sqlite3")) == ["blobs", "tmp"]
    assert list((data / "tmp").iterdir()) == []

    code, again = import_json(data, archive)
    assert code == 0
    assert again["duplicates"] == len(files) + 1
    assert again["stored"] == 0


def test_zip_bomb_member_and_total_limits(tmp_path: Path) -> None:
    files = tiny_files()[:10]
    size = files[0].stat().st_size
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\x00" * (8 * 1024 * 1024))
        zf.write(files[0], "ok.dcm")
    assert bomb.stat().st_size < 64 * 1024
    code, summary = import_json(tmp_path / "a", bomb, PIXPORT_LIMITS__MAX_OBJECT_BYTES="65536")
    assert code == 1
    assert summary["stored"] == 1
    assert summary["rejected"] == [{"name": f"{bomb}!zeros", "reason": "object is larger than 65536 bytes"}]
    assert list((tmp_path / "a" / "tmp").iterdir()) == []

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w", zipfile.ZIP_DEFLATED) as zf:
        for number, path in enumerate(files):
            zf.write(path, f"IMG{number}")
    total = max(1024, 3 * size + size // 2)
    code, summary = import_json(tmp_path / "b", many, PIXPORT_LIMITS__MAX_REQUEST_BYTES=str(total))
    assert code == 1
    assert summary["stored"] == total // size
    assert len(summary["rejected"]) == len(files) - total // size
    assert all("in total" in item["reason"] for item in summary["rejected"])


def test_damaged_zip_and_damaged_member_are_rejected(tmp_path: Path) -> None:
    files = tiny_files()[:3]
    stored = tmp_path / "stored.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        for number, path in enumerate(files):
            zf.write(path, f"IMG{number}")
    data = bytearray(stored.read_bytes())
    with zipfile.ZipFile(stored) as zf:
        second = zf.infolist()[1]
    offset = second.header_offset + 30 + len(second.filename) + 200
    data[offset] ^= 0xFF  # inside the second member's bytes: its CRC no longer matches
    damaged_member = tmp_path / "member.zip"
    damaged_member.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])

    code, summary = import_json(tmp_path / "data", damaged_member, truncated)
    assert code == 1
    assert summary["stored"] == 2
    assert summary["rejected"] == [
        {"name": str(truncated), "reason": "ZIP file cannot be read: damaged or truncated"},
        {"name": f"{damaged_member}!IMG1", "reason": "ZIP member cannot be read: BadZipFile"},
    ]
    assert list((tmp_path / "data" / "tmp").iterdir()) == []


def _copy_media(tmp_path: Path) -> Path:
    media = tmp_path / "cd"
    series = media / "PT000000" / "ST000000" / "SE000000"
    series.mkdir(parents=True)
    for path in tiny_files():
        (series / path.name).write_bytes(path.read_bytes())
    (media / "DICOMDIR").write_bytes((MEDIA / "tiny-alpha" / "DICOMDIR").read_bytes())
    return media


def test_dicomdir_references_stay_inside_the_media(tmp_path: Path) -> None:
    media = _copy_media(tmp_path)
    outside = tmp_path / "outside.dcm"
    outside.write_bytes((CORPUS / "modality" / "ct" / "CT_small.dcm").read_bytes())
    dicomdir = pydicom.dcmread(media / "DICOMDIR")
    records = [r for r in dicomdir.DirectoryRecordSequence if "ReferencedFileID" in r]
    records[0].ReferencedFileID = ["..", "outside.dcm"]
    records[1].ReferencedFileID = ["PT000000", "ST000000", "SE000000", "GONE"]
    dicomdir.save_as(media / "DICOMDIR")
    (media / "README.TXT").write_text("viewer instructions\n")
    extra = media / "EXTRA" / "CT"
    extra.parent.mkdir()
    extra.write_bytes((CORPUS / "modality" / "ct" / "CT_small.dcm").read_bytes())
    # Lower-case names on disk, upper-case references in the DICOMDIR (a CD copied on Linux).
    lower = media / "PT000000" / "ST000000" / "SE000000" / "IM000005"
    lower.rename(lower.with_name("im000005"))

    found = discover([media])
    names = [getattr(source, "path", None) for source in found.sources]
    assert outside.resolve() not in names
    assert (media / "EXTRA" / "CT").resolve() in {p.resolve() for p in names if p is not None}
    assert lower.with_name("im000005").resolve() in {p.resolve() for p in names if p is not None}
    rejected = {problem.reason for problem in found.rejected}
    assert rejected == {
        "DICOMDIR reference points outside the media",
        "referenced by the DICOMDIR but missing from the media",
    }

    series = ["PT000000", "ST000000", "SE000000"]
    assert resolve_reference(media, [*series, "IM000005"]) == lower.with_name("im000005").resolve()
    assert resolve_reference(media, [*series, "GONE"]) is None
    (media / "LINK").symlink_to(outside)
    for escaping in (["..", "outside.dcm"], ["LINK"], ["/etc/passwd"], [*series[:2], "..\\..\\x"], []):
        with pytest.raises(ValueError):
            resolve_reference(media, escaping)
    (media / "LINK").unlink()

    code, summary = import_json(tmp_path / "data", media)
    assert code == 1
    # All 50 images on disk (the two whose references were spoiled are found by the folder walk),
    # plus the unreferenced CT; the escaping and the missing reference are rejected.
    assert summary["stored"] == 50 + 1
    assert summary["duplicates"] == 0
    assert len(summary["rejected"]) == 2
    assert {item["reason"] for item in summary["skipped"]} >= {"not a DICOM file"}


def test_batches_and_progress(tmp_path: Path) -> None:
    archive = build_archive(Settings(storage=StorageSettings(data_dir=tmp_path / "data")))
    batches: list[int] = []
    store = archive.index.store_instances

    def spy(batch: Any, before_commit: Any = None) -> Any:
        batches.append(len(batch))
        return store(batch, before_commit)

    archive.index.store_instances = spy  # type: ignore[method-assign]
    calls: list[tuple[int, int]] = []
    try:
        summary = MediaImporter(archive.ingest, batch_size=7, progress=lambda d, t: calls.append((d, t))).import_paths(
            [MEDIA / "tiny-alpha"]
        )
    finally:
        archive.close()
    assert summary.stored == 50
    assert batches == [7] * 7 + [1]
    assert calls[0] == (0, 50)
    assert calls[-1] == (50, 50)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_check_cli_reports_a_damaged_blob_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, _ = import_json(data, TINY_SERIES)
    assert code == 0
    blob = next(p for p in (data / "blobs").rglob("*") if p.is_file())
    blob.write_bytes(blob.read_bytes()[:-1] + b"\xff")
    code, report = check_json(data, "--repair", "--grace", "0")
    assert code == 1
    assert [(p["kind"], p["digest"]) for p in report["problems"]] == [("corrupt", blob.name)]
    assert blob.exists()
    done = pixport(data, "archive", "check")
    assert done.returncode == 1
    assert blob.name in done.stdout


def _unique_copies(folder: Path, count: int) -> None:
    folder.mkdir()
    source = pydicom.dcmread(tiny_files()[0])
    for number in range(count):
        uid = generate_uid(prefix="2.25.")
        source.SOPInstanceUID = uid
        source.file_meta.MediaStorageSOPInstanceUID = uid
        source.InstanceNumber = number + 1
        source.save_as(folder / f"{number:05d}.dcm", enforce_file_format=True)


def _indexed(index: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=0.1) as conn:
            return int(conn.execute("select count(*) from instances").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_killed_mid_import_leaves_no_row_without_its_blob(tmp_path: Path) -> None:
    total = 600
    folder = tmp_path / "series"
    _unique_copies(folder, total)
    data = tmp_path / "data"
    data.mkdir()
    process = subprocess.Popen(
        [str(PIXPORT), "archive", "import", "--batch", "1", str(folder)],
        env=_env(data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while _indexed(data / "index.sqlite3") < 5 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    stored_before = _indexed(data / "index.sqlite3")
    assert 5 <= stored_before < total

    code, report = check_json(data, "--grace", "0")
    assert code == 0, report
    assert report["problems"] == []
    assert report["instances_checked"] == stored_before

    code, summary = import_json(data, folder)
    assert code == 0, summary
    assert summary["duplicates"] == stored_before
    assert summary["stored"] == total - stored_before

    code, report = check_json(data, "--repair", "--grace", "0")
    assert code == 0
    assert report["instances_checked"] == total
    assert report["problems"] == []
    code, report = check_json(data, "--grace", "0")
    assert report["orphan_blobs"] == []
    assert report["stale_staging_files"] == 0
