"""The hub's relay cache on its own: verification against the manifest, LRU eviction, what is never kept.

A real hub (SQLite in a temporary folder) registers real signed manifests; bodies are built as a
gateway sends a study (multipart/related, one part per instance).  The parts are synthetic bytes:
the cache checks SHA-256 and size, not DICOM.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixport.archive.multipart import MultipartError
from pixport.config import HubSettings
from pixport.hub.audit import AuditLog
from pixport.hub.institutions import Actor
from pixport.hub.node import Hub
from pixport.hub.registry import RegisteredManifest
from pixport.hub.relay_cache import (
    FOLDER,
    Admission,
    PartDigests,
    RelayCache,
    cache_directives,
    check_body,
    compare_parts,
    entry_name,
    wants_as_stored,
)
from pixport.hub.relay_cache.cache import MAX_PENDING
from pixport.trust.keys import SigningKey
from pixport.trust.manifest import ManifestInstance, PatientIdentity, StudyAttributes, build_manifest, sign_manifest

CODE = "HOSP-A"
ACTOR = Actor("operator:test")
BOUNDARY = "pixport-0123456789abcdef"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes], boundary: str = BOUNDARY, *, preamble: bytes = b"", padding: bytes = b"") -> bytes:
    """A body as the gateway writes one (``dicomweb.wado``), optionally with a preamble and padding."""
    body = bytearray(preamble)
    for part in parts:
        body += f"--{boundary}".encode() + padding + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body)


def instance_bytes(n: int, size: int = 5000) -> bytes:
    return hashlib.shake_256(f"instance {n}".encode()).digest(size)


def digests(parts: list[bytes]) -> list[tuple[str, int]]:
    return [(hashlib.sha256(p).hexdigest(), len(p)) for p in parts]


class Registered:
    """A hub with one institution, registering manifests for given instance bytes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.key = SigningKey.generate()
        hub.institutions.admit_institution(
            CODE, name_ko="병원", name_en="Hospital", endpoint="http://127.0.0.1:1", contact="", actor=ACTOR
        )
        hub.institutions.add_key(CODE, self.key.public_jwk(), actor=ACTOR)
        self.current: dict[str, RegisteredManifest] = {}

    def manifest(self, parts: list[bytes], study: str | None = None) -> RegisteredManifest:
        """Register (or, for a study registered before, supersede) a manifest listing ``parts``."""
        study = study or f"2.25.{uuid.uuid4().int}"
        instances = [
            ManifestInstance(
                series_instance_uid=study + ".1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid=f"{study}.1.{n + 1}",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                size=len(part),
                sha256=hashlib.sha256(part).hexdigest(),
                dataset_sha256="b" * 64,
                pixel_sha256=None,
            )
            for n, part in enumerate(parts)
        ]
        national_key = "nk1." + base64.urlsafe_b64encode(hashlib.sha256(b"someone").digest()).decode().rstrip("=")
        previous = self.current.get(study)
        manifest = build_manifest(
            issuer=CODE,
            patient=PatientIdentity(national_key=national_key, patient_id="P1", issuer_of_patient_id=CODE),
            study=StudyAttributes(study_instance_uid=study, modalities=("CT",)),
            instances=instances,
            supersedes=previous.manifest_id if previous else None,
        )
        registered = self.hub.registry.register_manifest(sign_manifest(manifest, self.key), caller=CODE, actor=ACTOR)
        self.current[study] = registered
        return registered


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    node = Hub.open(HubSettings(data_dir=tmp_path / "hub", relay_cache_max_bytes=100_000))
    yield node
    node.close()


@pytest.fixture
def registered(hub: Hub) -> Registered:
    return Registered(hub)


@pytest.fixture
def cache(hub: Hub) -> RelayCache:
    opened = hub.open_relay_cache()
    assert opened is not None
    return opened


def relay(cache: RelayCache, manifest: RegisteredManifest, body: bytes, *, chunk: int = 4096) -> None:
    """What the hub's relay does with a whole body: begin, write each piece as it arrives, finish; then wait."""
    fill = cache.begin(manifest, CONTENT_TYPE, len(body))
    assert fill is not None
    for start in range(0, len(body), chunk):
        fill.write(body[start : start + chunk])
    fill.finish()
    cache.drain()


def served(cache: RelayCache, manifest_id: str) -> bytes | None:
    found = cache.find(manifest_id)
    if found is None:
        return None

    async def read() -> bytes:
        return b"".join([chunk async for chunk in found.chunks()])

    assert found.content_type == CONTENT_TYPE
    return asyncio.run(read())


def leftovers(cache: RelayCache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir() if p.name.startswith("tmp-"))


def integrity_events(audit: AuditLog) -> list[dict[str, object]]:
    return [
        {"object": e.event.object, "outcome": e.event.outcome, **e.event.detail}
        for e in audit.list_events()
        if e.event.action == "relay.integrity_failed"
    ]


# -- the splitter and the comparison -------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 4096, 10**9])
def test_part_digests_are_the_same_however_the_body_is_cut(chunk: int) -> None:
    parts = [instance_bytes(n, 300 + n) for n in range(4)] + [b"", b"\r\n--pixport-0123456789abcde\r\n"]
    body = multipart(parts, preamble=b"preamble\r\n", padding=b" \t") + b"epilogue"
    splitter = PartDigests(BOUNDARY)
    for start in range(0, len(body), chunk):
        splitter.write(body[start : start + chunk])
    assert splitter.finish() == digests(parts)


def test_a_body_without_its_close_delimiter_is_not_well_formed() -> None:
    parts = [instance_bytes(1), instance_bytes(2)]
    cut = multipart(parts)[: -len(f"--{BOUNDARY}--\r\n")]
    splitter = PartDigests(BOUNDARY)
    splitter.write(cut)
    with pytest.raises(MultipartError):
        splitter.finish()
    with Path(os.devnull).open("rb") as empty:
        report = check_body(empty, 0, BOUNDARY, digests(parts))
    assert not report.ok
    assert not report.well_formed


def test_the_comparison_counts_missing_extra_and_altered_parts() -> None:
    listed = digests([instance_bytes(n) for n in range(3)])
    assert compare_parts(listed, listed, well_formed=True).ok
    missing = compare_parts(listed[:2], listed, well_formed=True)
    assert (missing.ok, missing.missing, missing.extra) == (False, 1, 0)
    twice = compare_parts([*listed, listed[0]], listed, well_formed=True)
    assert (twice.ok, twice.missing, twice.extra) == (False, 0, 1)
    altered = compare_parts([*listed[:2], digests([instance_bytes(99)])[0]], listed, well_formed=True)
    assert altered.counts() == {
        "listed": 3,
        "received": 3,
        "matched": 2,
        "missing": 1,
        "extra": 1,
        "well_formed": True,
    }
    same_hash_other_size = [(listed[0][0], listed[0][1] + 1), *listed[1:]]
    assert not compare_parts(same_hash_other_size, listed, well_formed=True).ok


@pytest.mark.parametrize(
    ("accept", "as_stored"),
    [
        (None, True),
        ("", True),
        ("*/*", True),
        ('multipart/related; type="application/dicom"', True),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', True),
        ("multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1", False),
        ('multipart/related; type="application/dicom+json"', False),  # not instances: none acceptable
        ("application/dicom", False),  # one instance's form, not a study's
        # The range the gateway picks: the best q first, skipping what it cannot make.
        ('multipart/related; type="image/jpeg", multipart/related; type="application/dicom"', True),
        (
            (
                'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0.9, '
                'multipart/related; type="application/dicom"; transfer-syntax=*'
            ),
            True,
        ),
        (
            (
                'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1, '
                'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'
            ),
            False,
        ),
    ],
)
def test_which_requests_get_the_stored_bytes(accept: str | None, *, as_stored: bool) -> None:
    assert wants_as_stored(accept) is as_stored


def test_cache_control_directives() -> None:
    assert cache_directives(None) == frozenset()
    assert cache_directives("no-cache") == {"no-cache"}
    assert cache_directives("max-age=0, No-Store ,no-cache") == {"max-age", "no-store", "no-cache"}


# -- the cache -----------------------------------------------------------------------------------


def test_a_verified_body_is_kept_and_served_byte_for_byte(cache: RelayCache, registered: Registered) -> None:
    parts = [instance_bytes(n) for n in range(3)]
    manifest = registered.manifest(parts)
    body = multipart(parts)
    assert cache.find(manifest.manifest_id) is None
    relay(cache, manifest, body)
    assert served(cache, manifest.manifest_id) == body
    assert (cache.directory / entry_name(manifest.manifest_id)).exists()
    assert leftovers(cache) == []
    # The file name is the manifest's UUID: nothing from the study or the patient.
    assert entry_name(manifest.manifest_id) == uuid.UUID(manifest.manifest_id.removeprefix("urn:uuid:")).hex + ".study"


@pytest.mark.parametrize(
    "change",
    ["flip a byte", "drop a part", "add a part", "cut the close delimiter"],
)
def test_a_body_that_is_not_its_manifest_is_not_kept_and_is_audited(
    hub: Hub, cache: RelayCache, registered: Registered, change: str
) -> None:
    parts = [instance_bytes(n) for n in range(3)]
    manifest = registered.manifest(parts)
    if change == "flip a byte":
        altered = bytearray(parts[1])
        altered[100] ^= 0x01
        body = multipart([parts[0], bytes(altered), parts[2]])
    elif change == "drop a part":
        body = multipart(parts[:2])
    elif change == "add a part":
        body = multipart([*parts, instance_bytes(7)])
    else:
        body = multipart(parts)[: -len("--\r\n")] + b"\r\n"
    relay(cache, manifest, body)
    assert cache.find(manifest.manifest_id) is None
    assert list(cache.directory.glob("*.study")) == []
    assert leftovers(cache) == []
    events = integrity_events(hub.audit)
    assert len(events) == 1
    event = events[0]
    assert event["object"] == manifest.manifest_id
    assert event["outcome"] == "error"
    expected = {
        "flip a byte": {"received": 3, "matched": 2, "missing": 1, "extra": 1},
        "drop a part": {"received": 2, "matched": 2, "missing": 1, "extra": 0},
        "add a part": {"received": 4, "matched": 3, "missing": 0, "extra": 1},
        "cut the close delimiter": {"well_formed": False},
    }[change]
    assert {k: event[k] for k in expected} == expected


def test_a_relay_cut_short_or_of_the_wrong_length_leaves_nothing(
    hub: Hub, cache: RelayCache, registered: Registered
) -> None:
    parts = [instance_bytes(n, 200_000) for n in range(2)]
    cache.max_bytes = 10_000_000
    manifest = registered.manifest(parts)
    body = multipart(parts)
    fill = cache.begin(manifest, CONTENT_TYPE, len(body))
    assert fill is not None
    fill.write(body[: len(body) // 2])
    fill.abort()  # the reader went away, or the gateway broke off
    cache.drain()
    shorter = cache.begin(manifest, CONTENT_TYPE, len(body) + 1)
    assert shorter is not None
    shorter.write(body)
    shorter.finish()  # the body ended before the announced length
    longer = cache.begin(manifest, CONTENT_TYPE, len(body) - 1)
    assert longer is not None
    longer.write(body)
    longer.finish()
    cache.drain()
    assert cache.find(manifest.manifest_id) is None
    assert sorted(p.name for p in cache.directory.iterdir()) == [".lock"]
    assert integrity_events(hub.audit) == []  # nothing was wrong with the gateway's bytes


def test_a_writer_behind_the_relay_drops_the_copy_and_holds_no_more_memory(
    cache: RelayCache, registered: Registered
) -> None:
    parts = [instance_bytes(1)]
    manifest = registered.manifest(parts)
    cache.max_bytes = 1 << 30
    too_much = b"\0" * (MAX_PENDING + 1)  # more than may wait for the writer at once
    fill = cache.begin(manifest, CONTENT_TYPE, len(too_much))
    assert fill is not None
    fill.write(too_much)
    assert fill.failed
    fill.finish()
    cache.drain()
    assert cache.find(manifest.manifest_id) is None
    assert leftovers(cache) == []


def test_not_kept_what_cannot_be_kept(cache: RelayCache, registered: Registered) -> None:
    parts = [instance_bytes(1)]
    manifest = registered.manifest(parts)
    assert cache.begin(manifest, "application/dicom", 5000) is None  # not a multipart body
    assert cache.begin(manifest, "multipart/related; type=application/dicom", 5000) is None  # no boundary
    assert cache.begin(manifest, CONTENT_TYPE, cache.max_bytes) is None  # larger than the whole cache


def test_the_least_recently_used_entries_are_evicted(cache: RelayCache, registered: Registered) -> None:
    size = 30_000  # the cache holds 100 000 bytes: three such studies, not four
    studies = {
        name: [instance_bytes(n * 10 + name_n, size // 2) for n in range(2)] for name_n, name in enumerate("ABCD")
    }
    manifests = {name: registered.manifest(parts) for name, parts in studies.items()}
    for name in "ABC":
        relay(cache, manifests[name], multipart(studies[name]))
    assert [m for m, _ in cache.entries()] == [manifests[n].manifest_id for n in "ABC"]
    assert served(cache, manifests["A"].manifest_id) is not None  # A is now the most recently used
    relay(cache, manifests["D"], multipart(studies["D"]))
    assert [m for m, _ in cache.entries()] == [manifests[n].manifest_id for n in "CAD"]
    assert cache.find(manifests["B"].manifest_id) is None
    assert not (cache.directory / entry_name(manifests["B"].manifest_id)).exists()
    assert cache.total_bytes == sum(p.stat().st_size for p in cache.directory.glob("*.study"))
    assert cache.total_bytes <= cache.max_bytes


def test_entries_of_manifests_no_longer_current_are_removed(
    hub: Hub, cache: RelayCache, registered: Registered
) -> None:
    parts = [instance_bytes(n) for n in range(2)]
    first = registered.manifest(parts)
    relay(cache, first, multipart(parts))
    assert cache.find(first.manifest_id) is not None
    correction = registered.manifest(parts, study=first.study_instance_uid)  # supersedes the first
    assert correction.supersedes == first.manifest_id
    relay(cache, correction, multipart(parts))
    assert cache.sweep() == 1
    assert cache.find(first.manifest_id) is None
    assert cache.find(correction.manifest_id) is not None
    hub.registry.withdraw_manifest(correction.manifest_id, caller=CODE, reason="test", actor=ACTOR)
    assert cache.sweep() == 1
    assert list(cache.directory.glob("*.study")) == []
    # A relay that finishes after its manifest was withdrawn is not kept either.
    relay(cache, correction, multipart(parts))
    assert cache.find(correction.manifest_id) is None
    assert list(cache.directory.glob("*.study")) == []
    assert cache.entries() == []


def test_a_restart_keeps_the_entries_and_their_order_and_deletes_stale_temporary_files(
    hub: Hub, cache: RelayCache, registered: Registered
) -> None:
    studies = [[instance_bytes(n * 10 + i, 10_000) for i in range(2)] for n in range(3)]
    manifests = [registered.manifest(parts) for parts in studies]
    for manifest, parts in zip(manifests, studies, strict=True):
        relay(cache, manifest, multipart(parts))
    assert served(cache, manifests[0].manifest_id) is not None
    order = [m for m, _ in cache.entries()]
    hub.close_relay_cache()
    (cache.directory / "tmp-0123.part").write_bytes(b"half a study")  # a relay killed midway
    (cache.directory / entry_name(registered.manifest([b"x"]).manifest_id)).write_bytes(b"not an entry")
    reopened = hub.open_relay_cache()
    assert reopened is not None
    assert [m for m, _ in reopened.entries()] == order
    assert sorted(p.name for p in reopened.directory.iterdir()) == sorted(
        [".lock", *(entry_name(m.manifest_id) for m in manifests)]
    )
    assert served(reopened, manifests[1].manifest_id) == multipart(studies[1])


def test_one_process_at_a_time_uses_the_folder(hub: Hub, cache: RelayCache) -> None:
    def never(_: object, __: object) -> None:
        raise AssertionError

    second = RelayCache.open(cache.directory, 1000, is_current=lambda _: True, on_integrity_failure=never)
    assert second is None
    assert hub.relay_cache is cache


def test_no_cache_when_the_limit_is_zero(tmp_path: Path) -> None:
    node = Hub.open(HubSettings(data_dir=tmp_path / "hub", relay_cache_max_bytes=0))
    try:
        assert node.open_relay_cache() is None
        assert not (tmp_path / "hub" / FOLDER).exists()
    finally:
        node.close()


@pytest.fixture
def small_disk(hub: Hub) -> Iterator[Path]:
    """The cache folder on a real 1 MiB tmpfs (needs root)."""
    folder = hub.settings.data_dir / FOLDER
    folder.mkdir(parents=True)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=False).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield folder
    finally:
        hub.close_relay_cache()
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_skips_caching_and_loses_nothing_else(small_disk: Path, hub: Hub, registered: Registered) -> None:
    cache = hub.open_relay_cache()
    assert cache is not None
    assert cache.directory == small_disk
    cache.max_bytes = 10_000_000
    first, second = ([instance_bytes(n * 10 + i, 300_000) for i in range(2)] for n in range(2))
    kept, lost = registered.manifest(first), registered.manifest(second)
    # Both fit the free space when they begin; together they do not.
    fills = [cache.begin(m, CONTENT_TYPE, len(multipart(p))) for m, p in ((kept, first), (lost, second))]
    for fill, parts in zip(fills, (first, second), strict=True):
        assert fill is not None
        fill.write(multipart(parts))
    for fill in fills:
        assert fill is not None
        fill.finish()
    cache.drain()
    assert served(cache, kept.manifest_id) == multipart(first)
    assert cache.find(lost.manifest_id) is None
    assert leftovers(cache) == []
    # A study larger than the free space is not even started.
    big = [instance_bytes(50, 900_000)]
    big_manifest = registered.manifest(big)
    relay(cache, big_manifest, multipart(big), chunk=len(multipart(big)))
    assert cache.find(big_manifest.manifest_id) is None
    assert leftovers(cache) == []
    assert [m for m, _ in cache.entries()] == [kept.manifest_id]


def test_admission_keeps_a_copy_from_the_nth_read_and_forgets_the_least_recent() -> None:
    admission = Admission(keep_after=2, remembered=3)
    assert [admission.worth_keeping("a") for _ in range(3)] == [False, True, True]
    for other in ("b", "c", "d"):  # "a" is now the least recently read of four: forgotten
        assert admission.worth_keeping(other) is False
    assert admission.worth_keeping("a") is False
    assert Admission(keep_after=1).worth_keeping("x") is True
    with pytest.raises(ValueError, match="at least 1"):
        Admission(keep_after=0)
