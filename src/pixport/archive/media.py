"""Import from what a user hands over: files, folders, ZIP files and DICOMDIR media (a patient's CD).

Discovery turns the given paths into sources: files on disk, ZIP members, and the files a
DICOMDIR (PS3.10 media directory) references.  Every source is streamed into the staging area
(``IngestPipeline.stage_stream`` / ``StagingFile``) under a random name; nothing named by the
media or the ZIP ever becomes a path we write to.  Sources are ingested in batches, so the
index is written once per batch.

- A DICOMDIR found in a folder contributes its references first; references are resolved
  inside the folder holding the DICOMDIR only (no ``..``, no absolute paths, no symlink out).
  Files it does not reference are still considered.
- DICOMDIR files themselves, and files that are obviously not DICOM (no ``DICM`` at offset 128
  and no parseable data set), are skipped with a reason; they are not failures.
- ZIP members are limited one by one (``max_object_bytes``) and in total
  (``max_request_bytes`` of uncompressed bytes per ZIP file), whatever their headers claim.

Source names are for display only: they are never used as storage paths and never stored.
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from pixport.archive.ingest import OUT_OF_RESOURCES, IngestPipeline, InstanceResult
from pixport.archive.limits import DEFAULT_BATCH_SIZE
from pixport.archive.staging import StagedFile, StagingFile
from pixport.errors import LimitExceeded

DICOMDIR_NAME = "DICOMDIR"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
"""SOP Class UID of a DICOMDIR (Media Storage Directory Storage)."""

MAX_DICOMDIR_BYTES = 64 * 1024 * 1024
MAX_ZIP_MEMBERS = 200_000
SNIFF_DEFER_BYTES = 1024 * 1024
SNIFF_META_BYTES = 64 * 1024
"""How much of a file's start is read to find its File Meta Media Storage SOP Class UID."""
PREAMBLE = 128
ELEMENT_HEADER = 8
RAW_FIRST_GROUPS = frozenset({0x0002, 0x0008})
"""A data set without preamble starts with the File Meta group or the identifying group."""
COPY_CHUNK = 1024 * 1024
ZIP_LOCAL_HEADER = b"PK\x03\x04"
SOURCE_LABEL = "media-import"
"""What the index records as the source of imported instances (never a file name)."""

ProgressCallback = Callable[[int, int], None]
"""Called with (sources processed, sources found) after each batch."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one source was not stored: its display name and a reason safe to show."""

    name: str
    reason: str


@dataclass(slots=True)
class ImportSummary:
    """What an import did, source by source."""

    found: int = 0
    stored: int = 0
    duplicates: int = 0
    warnings: int = 0
    conflicts: list[Problem] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing was rejected and nothing conflicted (skipped non-DICOM files are fine)."""
        return not self.rejected and not self.conflicts

    def record(self, name: str, result: InstanceResult) -> None:
        """Count one ingest result."""
        self.warnings += len(result.warnings)
        if result.status == "stored":
            self.stored += 1
        elif result.status == "duplicate":
            self.duplicates += 1
        elif result.status == "conflict":
            self.conflicts.append(Problem(name, result.reason or "stored already with different content"))
        else:
            self.rejected.append(Problem(name, result.reason or "rejected"))

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {
            "found": self.found,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "conflicts": [{"name": p.name, "reason": p.reason} for p in self.conflicts],
            "rejected": [{"name": p.name, "reason": p.reason} for p in self.rejected],
            "skipped": [{"name": p.name, "reason": p.reason} for p in self.skipped],
            "warnings": self.warnings,
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class FileSource:
    """A file on disk."""

    path: Path
    name: str


@dataclass(frozen=True, slots=True)
class ZipMemberSource:
    """One member of a ZIP file; it is streamed, never extracted."""

    archive: Path
    info: zipfile.ZipInfo
    name: str


Source = FileSource | ZipMemberSource


@dataclass(slots=True)
class Discovery:
    """Sources to ingest, and what was set aside while looking for them."""

    sources: list[Source] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    _seen: set[Path] = field(default_factory=set)

    def add_file(self, path: Path, name: str) -> None:
        """Add a file unless it was added already (by a DICOMDIR or another argument)."""
        key = _real(path)
        if key in self._seen:
            return
        self._seen.add(key)
        self.sources.append(FileSource(path, name))


def display_name(text: str) -> str:
    """A name safe to print: control characters (terminal escapes) replaced."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


# -- discovery -----------------------------------------------------------------------------


def discover(paths: Sequence[Path]) -> Discovery:
    """Turn user-given paths into sources, in a stable order."""
    found = Discovery()
    for path in paths:
        name = display_name(str(path))
        if path.is_dir():
            _discover_folder(found, path)
        elif path.is_file():
            _discover_file(found, path, name)
        else:
            found.rejected.append(Problem(name, "no such file or folder"))
    return found


def _discover_folder(found: Discovery, root: Path) -> None:
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(directory)
        dicomdirs = [f for f in filenames if f.upper() == DICOMDIR_NAME]
        for filename in dicomdirs:
            _discover_dicomdir(found, here / filename)
        for filename in sorted(filenames):
            if filename in dicomdirs:
                continue
            path = here / filename
            if path.is_file():
                _discover_file(found, path, display_name(str(path)))


def _discover_file(found: Discovery, path: Path, name: str) -> None:
    if path.name.upper() == DICOMDIR_NAME:
        _discover_dicomdir(found, path)
        return
    try:
        with path.open("rb") as fp:
            head = fp.read(PREAMBLE + 4)
        is_zip = head[PREAMBLE:] != b"DICM" and zipfile.is_zipfile(path)
    except OSError as exc:
        found.rejected.append(Problem(name, f"cannot read file: {exc.strerror}"))
        return
    if not is_zip and head.startswith(ZIP_LOCAL_HEADER):
        found.rejected.append(Problem(name, "ZIP file cannot be read: damaged or truncated"))
        return
    if is_zip:
        _discover_zip(found, path, name)
    else:
        found.add_file(path, name)


def _discover_zip(found: Discovery, path: Path, name: str) -> None:
    key = _real(path)
    if key in found._seen:  # noqa: SLF001  the Discovery's own bookkeeping
        return
    found._seen.add(key)  # noqa: SLF001
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        found.rejected.append(Problem(name, f"ZIP file cannot be read: {type(exc).__name__}"))
        return
    if len(members) > MAX_ZIP_MEMBERS:
        found.rejected.append(Problem(name, f"ZIP file has more than {MAX_ZIP_MEMBERS} members"))
        return
    for info in members:
        member_name = display_name(f"{name}!{info.filename}")
        if info.filename.rsplit("/", 1)[-1].upper() == DICOMDIR_NAME:
            found.skipped.append(Problem(member_name, "DICOMDIR (media directory): not an image"))
            continue
        found.sources.append(ZipMemberSource(path, info, member_name))


def _discover_dicomdir(found: Discovery, path: Path) -> None:
    """Add the files a DICOMDIR references (resolved inside its folder), then skip it."""
    name = display_name(str(path))
    found._seen.add(_real(path))  # noqa: SLF001  the Discovery's own bookkeeping
    found.skipped.append(Problem(name, "DICOMDIR (media directory): its referenced files are imported"))
    try:
        if path.stat().st_size > MAX_DICOMDIR_BYTES:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dicomdir = pydicom.dcmread(path, force=True)
        records = list(dicomdir.get("DirectoryRecordSequence") or [])
    except Exception:  # noqa: BLE001  any unreadable DICOMDIR: fall back to the folder walk
        return
    root = path.parent
    listings: dict[Path, dict[str, Path]] = {}
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        components = [str(file_id)] if isinstance(file_id, str) else [str(c) for c in file_id]
        components = [c.strip() for c in components]
        reference = display_name(str(root / "/".join(components)))
        try:
            target = resolve_reference(root, components, listings)
        except ValueError:
            found.rejected.append(Problem(reference, "DICOMDIR reference points outside the media"))
            continue
        if target is None:
            found.rejected.append(Problem(reference, "referenced by the DICOMDIR but missing from the media"))
            continue
        found.add_file(target, display_name(str(target)))


def resolve_reference(
    root: Path, components: Sequence[str], listings: dict[Path, dict[str, Path]] | None = None
) -> Path | None:
    """The file a DICOMDIR Referenced File ID names, inside ``root``; None if it is not there.

    Raises ``ValueError`` when the reference would leave ``root`` (``..``, a separator, an
    absolute path, or a symbolic link pointing elsewhere).  Media written on a
    case-insensitive file system are matched case-insensitively (``listings`` caches the
    directory listings this needs, across the references of one DICOMDIR).
    """
    if listings is None:
        listings = {}
    if not components:
        raise ValueError("empty reference")
    for component in components:
        if component in {"", ".", ".."} or any(c in component for c in "/\\\x00:"):
            raise ValueError("unsafe reference component")
    root_real = root.resolve()
    current = root_real
    for component in components:
        candidate: Path | None = current / component
        if candidate is None or not candidate.exists():
            candidate = _case_insensitive(current, component, listings)
        if candidate is None:
            return None
        current = candidate
    real = current.resolve()
    if not real.is_relative_to(root_real):
        raise ValueError("reference leaves the media root")
    return real if real.is_file() else None


def _case_insensitive(directory: Path, component: str, listings: dict[Path, dict[str, Path]]) -> Path | None:
    listing = listings.get(directory)
    if listing is None:
        listing = {}
        if directory.is_dir():
            for entry in sorted(directory.iterdir(), reverse=True):
                listing[entry.name.upper()] = entry
        listings[directory] = listing
    return listing.get(component.upper())


# -- sniffing --------------------------------------------------------------------------------


def sniff(path: Path) -> str | None:
    """Why ``path`` should be skipped (a DICOMDIR, or obviously not DICOM), or None to ingest it."""
    with path.open("rb") as fp:
        head = fp.read(PREAMBLE + 4 + SNIFF_META_BYTES)
    if head[PREAMBLE : PREAMBLE + 4] == b"DICM":
        if media_storage_sop_class(head[PREAMBLE + 4 :]) == MEDIA_STORAGE_DIRECTORY:
            return "DICOMDIR (media directory): not an image"
        return None  # anything else wrong with it is the pipeline's to reject, with its reason
    first_group = {int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")}
    if len(head) < ELEMENT_HEADER or not first_group & RAW_FIRST_GROUPS:
        return "not a DICOM file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=SNIFF_DEFER_BYTES)
            groups = {element.tag.group for element in dataset.elements()}
    except Exception:  # noqa: BLE001  anything pydicom cannot read without a preamble is not DICOM
        return "not a DICOM file"
    if not groups & {0x0008, 0x0020}:
        return "not a DICOM file"
    return None


def media_storage_sop_class(meta: bytes) -> str | None:
    """(0002,0002) Media Storage SOP Class UID from File Meta bytes (explicit VR little endian).

    Walks the group 0002 element headers by hand, within ``meta`` only, so that a hostile
    length cannot make us read or allocate more.
    """
    position = 0
    while position + ELEMENT_HEADER <= len(meta):
        group = int.from_bytes(meta[position : position + 2], "little")
        element = int.from_bytes(meta[position + 2 : position + 4], "little")
        if group != 0x0002:  # noqa: PLR2004  the File Meta group
            return None
        vr = meta[position + 4 : position + 6]
        if vr in {b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV", b"SV", b"UV"}:
            length = int.from_bytes(meta[position + 8 : position + 12], "little")
            start = position + 12
        else:
            length = int.from_bytes(meta[position + 6 : position + 8], "little")
            start = position + ELEMENT_HEADER
        if element == 0x0002:  # noqa: PLR2004  Media Storage SOP Class UID
            return meta[start : start + length].decode("ascii", "replace").strip("\x00 ")
        position = start + length
    return None


# -- import ---------------------------------------------------------------------------------

Staged = tuple[str, StagedFile | InstanceResult]


class MediaImporter:
    """Discover, stage and ingest in batches of ``batch_size`` objects."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: ProgressCallback | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.progress = progress
        self.zip_total_limit = pipeline.limits.max_request_bytes
        self._zip_used: dict[Path, int] = {}

    def import_paths(self, paths: Sequence[Path]) -> ImportSummary:
        """Import everything found under ``paths``; raises ``StorageUnavailable`` on a storage failure."""
        found = discover(paths)
        summary = ImportSummary(found=len(found.sources), skipped=found.skipped, rejected=found.rejected)
        total = len(found.sources)
        done = 0
        self._notify(done, total)
        batch: list[Staged] = []
        with ExitStack() as stack:
            archives: dict[Path, zipfile.ZipFile] = {}
            try:
                for source in found.sources:
                    staged = self._stage(source, archives, stack)
                    done += 1
                    if isinstance(staged, Problem):
                        summary.skipped.append(staged)
                    else:
                        batch.append(staged)
                    if len(batch) >= self.batch_size:
                        self._flush(batch, summary)
                        batch = []
                        self._notify(done, total)
                if batch:
                    self._flush(batch, summary)
                    batch = []
            except BaseException:
                self.pipeline.discard([item for _, item in batch if isinstance(item, StagedFile)])
                raise
        self._notify(done, total)
        return summary

    def _notify(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def _flush(self, batch: list[Staged], summary: ImportSummary) -> None:
        results = self.pipeline.ingest_staged([item for _, item in batch], SOURCE_LABEL)
        for (name, _), result in zip(batch, results, strict=True):
            summary.record(name, result)

    def _stage(self, source: Source, archives: dict[Path, zipfile.ZipFile], stack: ExitStack) -> Staged | Problem:
        if isinstance(source, FileSource):
            return self._stage_file(source)
        archive = archives.get(source.archive)
        if archive is None:
            try:
                archive = stack.enter_context(zipfile.ZipFile(source.archive))
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                return source.name, _rejected(f"ZIP file cannot be read: {type(exc).__name__}")
            archives[source.archive] = archive
        return self._stage_member(source, archive)

    def _stage_file(self, source: FileSource) -> Staged | Problem:
        try:
            reason = sniff(source.path)
            if reason is not None:
                return Problem(source.name, reason)
            with source.path.open("rb") as stream:
                return source.name, self.pipeline.stage_stream(stream)
        except LimitExceeded as exc:
            return source.name, _rejected(exc.reason, OUT_OF_RESOURCES)
        except OSError as exc:
            return source.name, _rejected(f"cannot read file: {exc.strerror}")

    def _stage_member(self, source: ZipMemberSource, archive: zipfile.ZipFile) -> Staged | Problem:
        info = source.info
        limit = self.pipeline.limits.max_object_bytes
        used = self._zip_used.get(source.archive, 0)
        if info.flag_bits & 0x1:
            return source.name, _rejected("ZIP member is encrypted")
        if info.file_size > limit:
            return source.name, _rejected(f"object is larger than {limit} bytes", OUT_OF_RESOURCES)
        if used + info.file_size > self.zip_total_limit:
            return source.name, _rejected(self._total_reason(), OUT_OF_RESOURCES)
        staging = self.pipeline.new_staging_file()
        counter = [used]
        try:
            self._copy_member(archive, info, staging, counter)
        except LimitExceeded as exc:
            staging.abort()
            return source.name, _rejected(exc.reason, OUT_OF_RESOURCES)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            staging.abort()
            return source.name, _rejected(f"ZIP member cannot be read: {type(exc).__name__}")
        except BaseException:
            staging.abort()
            raise
        finally:
            self._zip_used[source.archive] = counter[0]
        staged = staging.finish()
        try:
            reason = sniff(staged.path)
        except OSError as exc:
            self.pipeline.discard([staged])
            return source.name, _rejected(f"staged copy cannot be read: {exc.strerror}")
        if reason is not None:
            self.pipeline.discard([staged])
            return Problem(source.name, reason)
        return source.name, staged

    def _copy_member(
        self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, staging: StagingFile, counter: list[int]
    ) -> None:
        """Stream one member into ``staging``; ``counter[0]`` counts this ZIP's uncompressed bytes."""
        with archive.open(info) as stream:
            while chunk := stream.read(COPY_CHUNK):
                counter[0] += len(chunk)
                if counter[0] > self.zip_total_limit:
                    raise LimitExceeded(self._total_reason())
                staging.write(chunk)

    def _total_reason(self) -> str:
        return f"ZIP file expands to more than {self.zip_total_limit} bytes in total"


def _rejected(reason: str, code: int | None = None) -> InstanceResult:
    return InstanceResult("rejected", reason=reason, failure_code=code)


def iter_problems(summary: ImportSummary) -> Iterator[tuple[str, Problem]]:
    """(kind, problem) for display: conflicts, then rejections, then skipped sources."""
    for problem in summary.conflicts:
        yield "conflict", problem
    for problem in summary.rejected:
        yield "rejected", problem
    for problem in summary.skipped:
        yield "skipped", problem
