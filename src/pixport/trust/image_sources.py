"""The images a manifest is checked against: folders, ZIP files, DICOMDIR media or a DICOMweb study.

``iter_images`` turns what a person hands to ``pixport verify`` into a stream of items, one
file at a time, so that a study of any size needs the memory of one chunk and the disk space
of one object:

- a folder is walked recursively, a DICOMDIR in it contributing its references first, and a
  file named ``DICOMDIR`` (or a folder's path to it) gives the files it references, resolved
  inside its own folder (``archive.media.discover``, as the archive's media import does);
- a ZIP file is read member by member as a stream into a temporary file with a random name:
  member names are never paths we write to, and a member whose name would leave the archive
  (``..``, an absolute path, a drive letter) is refused;
- a DICOMweb study URL (``http://`` or ``https://``) is fetched with WADO-RS
  (``GET {url}``, ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``,
  so the server sends the objects as stored), and every part is streamed into a temporary
  file as it arrives (``archive.multipart.StowReceiver``).

Each item is an ``ImageFile`` (an open, seekable stream, valid until the next item is asked
for), a ``NotAnImage`` (a viewer's file, a README, the DICOMDIR itself: ignored) or an
``Unreadable`` (a file or member that could not be read, or was refused).  Names are for
display only, with control characters replaced.
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import httpx

from pixport.archive.ingest import InstanceResult
from pixport.archive.media import (
    COPY_CHUNK,
    Discovery,
    FileSource,
    ZipMemberSource,
    discover,
    display_name,
    sniff,
)
from pixport.archive.multipart import DICOM, MultipartError, StowReceiver, parse_media_type
from pixport.archive.staging import StagedFile, StagingFile
from pixport.errors import LimitExceeded, PeerUnavailable

GiB = 1024 * 1024 * 1024
DEFAULT_MAX_OBJECT_BYTES = 2 * GiB
"""Largest single object read from a ZIP file or a DICOMweb reply (as the archive's default)."""
DEFAULT_MAX_ZIP_BYTES = 16 * GiB
"""Most uncompressed bytes read from one ZIP file, whatever its headers claim."""
DICOMWEB_ACCEPT = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
DICOMWEB_TIMEOUT = httpx.Timeout(60.0)
HTTP_OK = 200


@dataclass(frozen=True, slots=True)
class ImageFile:
    """A file to check: its display name and an open, seekable stream (valid until the next item)."""

    name: str
    stream: IO[bytes]


@dataclass(frozen=True, slots=True)
class NotAnImage:
    """A file that is not a DICOM image (a viewer's file, a README, a DICOMDIR): ignored."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file, member or part that could not be read, or was refused; the reason is safe to show."""

    name: str
    reason: str


SourceItem = ImageFile | NotAnImage | Unreadable


def is_dicomweb_url(location: str | Path) -> bool:
    """Whether ``location`` names a DICOMweb study (an http or https URL) rather than a path."""
    return isinstance(location, str) and location.lower().startswith(("http://", "https://"))


def iter_images(
    locations: Sequence[str | Path],
    *,
    client: httpx.Client | None = None,
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    max_zip_bytes: int = DEFAULT_MAX_ZIP_BYTES,
) -> Iterator[SourceItem]:
    """Every file found at ``locations`` (paths or DICOMweb study URLs), one at a time.

    ``client`` is used for DICOMweb URLs (one is made, and closed, if none is given).  Raises
    ``PeerUnavailable`` when a DICOMweb study cannot be fetched (no connection, an error
    status, a reply that is not multipart/related).  Temporary files are deleted as soon as
    the next item is asked for, and when the iteration is closed early.
    """
    sources = _Sources(max_object_bytes, max_zip_bytes)
    with tempfile.TemporaryDirectory(prefix="pixport-verify-") as temporary, ExitStack() as stack:
        sources.temporary = Path(temporary)
        sources.stack = stack
        paths: list[Path] = []
        for location in locations:
            if is_dicomweb_url(location):
                yield from _from_paths(sources, paths)
                paths = []
                yield from _from_dicomweb(sources, str(location), client)
            else:
                paths.append(Path(location))
        yield from _from_paths(sources, paths)


class _Sources:
    """What one iteration shares: limits, the temporary folder, open ZIP files."""

    def __init__(self, max_object_bytes: int, max_zip_bytes: int) -> None:
        self.max_object_bytes = max_object_bytes
        self.max_zip_bytes = max_zip_bytes
        self.temporary = Path()
        self.stack = ExitStack()
        self.archives: dict[Path, zipfile.ZipFile] = {}
        self.zip_used: dict[Path, int] = {}

    def new_staging_file(self) -> StagingFile:
        return StagingFile(self.temporary, self.max_object_bytes)


# -- files, folders, DICOMDIR media, ZIP files -------------------------------------------------


def _from_paths(sources: _Sources, paths: list[Path]) -> Iterator[SourceItem]:
    if not paths:
        return
    found: Discovery = discover(paths)
    for problem in found.skipped:
        yield NotAnImage(problem.name, problem.reason)
    for problem in found.rejected:
        yield Unreadable(problem.name, problem.reason)
    for source in found.sources:
        if isinstance(source, FileSource):
            yield from _from_file(source)
        else:
            yield from _from_zip_member(sources, source)


def _from_file(source: FileSource) -> Iterator[SourceItem]:
    try:
        reason = sniff(source.path)
        if reason is not None:
            yield NotAnImage(source.name, reason)
            return
        stream = source.path.open("rb")
    except OSError as exc:
        yield Unreadable(source.name, f"cannot read file: {exc.strerror}")
        return
    with stream:
        yield ImageFile(source.name, stream)


def unsafe_member_name(name: str) -> bool:
    """Whether a ZIP member name would leave the archive if it were extracted (path traversal)."""
    if not name or name.startswith(("/", "\\")) or "\x00" in name:
        return True
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return ".." in parts or (len(name) > 1 and name[1] == ":")


def _from_zip_member(sources: _Sources, source: ZipMemberSource) -> Iterator[SourceItem]:
    info = source.info
    if unsafe_member_name(info.filename):
        yield Unreadable(source.name, "ZIP member name leaves the archive (path traversal): refused")
        return
    if info.flag_bits & 0x1:
        yield Unreadable(source.name, "ZIP member is encrypted")
        return
    archive = sources.archives.get(source.archive)
    if archive is None:
        try:
            archive = sources.stack.enter_context(zipfile.ZipFile(source.archive))
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            yield Unreadable(source.name, f"ZIP file cannot be read: {type(exc).__name__}")
            return
        sources.archives[source.archive] = archive
    staging = sources.new_staging_file()
    try:
        _copy_member(sources, archive, source, staging)
    except LimitExceeded as exc:
        staging.abort()
        yield Unreadable(source.name, exc.reason)
        return
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
        staging.abort()
        yield Unreadable(source.name, f"ZIP member cannot be read: {type(exc).__name__}")
        return
    except BaseException:
        staging.abort()
        raise
    yield from _from_staged(source.name, staging.finish())


def _copy_member(sources: _Sources, archive: zipfile.ZipFile, source: ZipMemberSource, staging: StagingFile) -> None:
    """Stream one member into ``staging``, counting this ZIP file's uncompressed bytes."""
    used = sources.zip_used.get(source.archive, 0)
    try:
        with archive.open(source.info) as stream:
            while chunk := stream.read(COPY_CHUNK):
                used += len(chunk)
                if used > sources.max_zip_bytes:
                    raise LimitExceeded(f"ZIP file expands to more than {sources.max_zip_bytes} bytes in total")
                staging.write(chunk)
    finally:
        sources.zip_used[source.archive] = used


def _from_staged(name: str, staged: StagedFile) -> Iterator[SourceItem]:
    """A temporary copy: sniffed, handed out, then deleted."""
    try:
        reason = sniff(staged.path)
        if reason is not None:
            yield NotAnImage(name, reason)
            return
        with staged.path.open("rb") as stream:
            yield ImageFile(name, stream)
    except OSError as exc:
        yield Unreadable(name, f"temporary copy cannot be read: {exc.strerror}")
    finally:
        staged.path.unlink(missing_ok=True)


# -- DICOMweb ---------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """``url`` for display: without user name or password, control characters replaced."""
    try:
        shown = str(httpx.URL(url).copy_with(userinfo=b""))
    except (httpx.InvalidURL, TypeError, ValueError):
        shown = url
    return display_name(shown)


def _from_dicomweb(sources: _Sources, url: str, client: httpx.Client | None) -> Iterator[SourceItem]:
    """The instances of a WADO-RS study reply, each part streamed into a temporary file."""
    shown = safe_url(url)
    with ExitStack() as stack:
        if client is None:
            client = stack.enter_context(httpx.Client(timeout=DICOMWEB_TIMEOUT))
        try:
            response = stack.enter_context(client.stream("GET", url, headers={"Accept": DICOMWEB_ACCEPT}))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise PeerUnavailable(f"cannot fetch {shown}: {type(exc).__name__}") from exc
        if response.status_code != HTTP_OK:
            raise PeerUnavailable(f"cannot fetch {shown}: HTTP status {response.status_code}")
        media = parse_media_type(response.headers.get("content-type", ""))
        boundary = media.params.get("boundary")
        if media.type != "multipart/related" or not boundary:
            raise PeerUnavailable(
                f"cannot fetch {shown}: the reply is {media.type or 'untyped'}, not multipart/related"
            )
        receiver = StowReceiver(boundary, sources.new_staging_file)
        try:
            try:
                for chunk in response.iter_bytes():
                    receiver.write(chunk)
                    yield from _parts(shown, receiver)
                receiver.finish()
            except httpx.HTTPError as exc:
                raise PeerUnavailable(f"cannot fetch {shown}: {type(exc).__name__}") from exc
            except MultipartError as exc:
                raise PeerUnavailable(f"cannot fetch {shown}: the reply is not well-formed multipart ({exc})") from exc
            yield from _parts(shown, receiver)
        finally:
            receiver.abort()


def _parts(shown: str, receiver: StowReceiver) -> Iterator[SourceItem]:
    for position, item in receiver.take_new():
        name = f"{shown} part {position + 1}"
        if isinstance(item, InstanceResult):
            yield Unreadable(name, item.reason or "part refused")
        else:
            yield from _from_staged(name, item)
