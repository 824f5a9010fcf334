"""The fast header parse against the pydicom path (the reference), file by file.

For every corpus file (and a sample of the benchmark data, if generated): when the fast path
handles it, the ParsedInstance must equal the pydicom path's; a rejection must be of the same
class.  The files that take the fallback are listed with the reason, so that the fallback cannot
silently take over the common cases.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pixport.dicom.fastparse import FastPathUnsupported, read_header
from pixport.dicom.parse import ParsedInstance, ParseLimits, _parse_fast, parse_instance, parse_instance_pydicom
from pixport.errors import InstanceRejected, LimitExceeded, MalformedInstance
from pixport.samples import sample_studies

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
BENCH = Path(__file__).resolve().parents[2] / "bench" / ".data" / "v1"
LIMITS = ParseLimits()

# Corpus files the fast path leaves to pydicom, and why.
FALLBACK = {
    # big endian or deflated transfer syntax
    "transfer-syntax/bigendian_MR_small_bigendian.dcm": "big endian",
    "transfer-syntax/bigendian_OBXXXX1A_expb_2frame.dcm": "big endian",
    "transfer-syntax/bigendian_SC_rgb_small_odd.dcm": "big endian",
    "transfer-syntax/emri_small_big_endian.dcm": "big endian",
    "media/pydicom-dicomdirtests/DICOMDIR-bigEnd": "big endian",
    "transfer-syntax/deflate_SCImageStorage.dcm": "deflated",
    "transfer-syntax/deflate_image_dfl.dcm": "deflated",
    "transfer-syntax/deflate_orthanc.dcm": "deflated",
    # no preamble / File Meta, or no Transfer Syntax in it
    "malformed/ExplVR_BigEndNoMeta.dcm": "no File Meta",
    "malformed/no_meta.dcm": "no File Meta",
    "modality/rt/rtstruct.dcm": "no File Meta",
    "dimse/zeiss_oct_cfind_query.dcm": "no File Meta (a C-FIND identifier)",
    "malformed/meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
    # explicit VR UN that pydicom replaces with the dictionary VR (CP-246), or UN sequences
    "malformed/pt_cp246_tags_as_UN.dcm": "explicit UN on public tags",
    "malformed/explicit_VR-UN.dcm": "explicit UN on public tags",
    "malformed/bad_sequence.dcm": "explicit UN on a public tag",
    "malformed/J2K_pixelrep_mismatch.dcm": "explicit UN on a public tag",
    "malformed/UN_sequence.dcm": "UN of undefined length (a sequence)",
    "charset/chrJapMulti.dcm": "explicit UN on a private tag with a known VR",
    "charset/korean_chrKoreanMulti_iso2022-ir149.dcm": "explicit UN on a private tag with a known VR",
    # values pydicom's strict conversion refuses (to_json_dict drops the element)
    "malformed/DummyCTWithLongTag.dcm": "LO value longer than 64 characters",
    "malformed/badVR.dcm": "invalid IS value",
    "modality/rt/rtdose.dcm": "invalid UID value in a sequence",
    # a defined-length sequence whose items run past it (pydicom parses it lazily)
    "media/pydicom-dicomdirtests/DICOMDIR-nooffset": "sequence items past the sequence's end",
}
# Files whose parse must take the fast path whatever else changes: the common cases.
MUST_BE_FAST = (
    "modality/ct/CT_small.dcm",
    "modality/mr/MR_small.dcm",
    "transfer-syntax/implicit_MR_small_implicit.dcm",
    "modality/us/gdcm-US-ALOKA-16.dcm",
    "charset/korean_chrI2_iso2022-ir149.dcm",
    "charset/chrX1_utf8.dcm",
    "charset/Lena-utf8.dcm",
)


def _corpus_files() -> list[Path]:
    # A missing corpus fails collection here rather than leaving an empty, silently passing set.
    assert CORPUS.is_dir(), f"the shared corpus is expected at {CORPUS}"
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "MANIFEST.md")


def _bench_files() -> list[Path]:
    files: list[Path] = []
    for kind in ("ct", "small"):
        folder = BENCH / kind
        if folder.is_dir():
            files.extend(sorted(folder.iterdir())[:: 50 if kind == "ct" else 200])
    return files


def _name(path: Path) -> str:
    try:
        return str(path.relative_to(CORPUS))
    except ValueError:
        return str(path.relative_to(BENCH.parents[1]))


def _outcome(parse: object, path: Path) -> ParsedInstance | InstanceRejected:
    try:
        return parse(path, LIMITS)  # type: ignore[operator, no-any-return]
    except InstanceRejected as exc:
        return exc


def _assert_same(path: Path) -> bool:
    """Compare both paths on ``path``; return whether the fast path handled it."""
    reference = _outcome(parse_instance_pydicom, path)
    try:
        fast = _outcome(_parse_fast, path)
    except FastPathUnsupported:
        return False
    if isinstance(reference, InstanceRejected) or isinstance(fast, InstanceRejected):
        assert type(fast) is type(reference), (reference, fast)
        return True
    assert isinstance(fast, ParsedInstance)
    assert fast.metadata == reference.metadata
    assert fast == reference
    return True


@pytest.mark.parametrize("path", _corpus_files(), ids=_name)
def test_corpus_file_same_as_pydicom(path: Path) -> None:
    handled = _assert_same(path)
    assert handled == (_name(path) not in FALLBACK), FALLBACK.get(_name(path), "unexpected fallback")


def test_synthetic_studies_same_as_pydicom(tmp_path: Path) -> None:
    """The demo's studies (Korean names in ISO 2022 IR 149 and UTF-8, CT/MR/CR/US cine) and,
    when generated, a sample of the benchmark's: all on the fast path, all equal."""
    paths = list(_bench_files())
    for index, dataset in enumerate(sample_studies()):
        path = tmp_path / f"{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert len(paths) >= 96
    for path in paths:
        assert _assert_same(path), path


@pytest.mark.parametrize("name", MUST_BE_FAST)
def test_common_cases_take_the_fast_path(name: str) -> None:
    header = read_header(CORPUS / name, LIMITS)
    assert header.json
    assert parse_instance(CORPUS / name, LIMITS) == parse_instance_pydicom(CORPUS / name, LIMITS)


def test_fallback_list_names_existing_files() -> None:
    assert all((CORPUS / name).is_file() for name in FALLBACK)


# --------------------------------------------------------------------------------------------
# Synthetic objects: odd values, one element at a time, in both encodings
# --------------------------------------------------------------------------------------------

LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})


def _element(tag: int, vr: str, value: bytes, *, implicit: bool) -> bytes:
    if len(value) % 2 and value != b"\xff\xff\xff\xff":
        value += b" " if vr not in {"OB", "UN", "UI"} else b"\x00"
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", len(value)) + value
    if vr in LONG:
        return head + vr.encode() + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return head + vr.encode() + struct.pack("<H", len(value)) + value


def _file(tmp: Path, elements: list[tuple[int, str, bytes]], *, implicit: bool) -> Path:
    ts = b"1.2.840.10008.1.2\x00" if implicit else b"1.2.840.10008.1.2.1\x00"
    meta = (
        _element(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.7\x00", implicit=False)
        + _element(0x00020003, "UI", b"1.2.3.4", implicit=False)
        + _element(0x00020010, "UI", ts, implicit=False)
    )
    meta = _element(0x00020000, "UL", struct.pack("<L", len(meta)), implicit=False) + meta
    base = [
        (0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\x00"),
        (0x00080018, "UI", b"1.2.3.4"),
        (0x0020000D, "UI", b"1.2.3"),
        (0x0020000E, "UI", b"1.2.3.5"),
    ]
    body = b"".join(_element(t, v, x, implicit=implicit) for t, v, x in sorted(base + elements))
    path = tmp / f"{len(list(tmp.iterdir()))}.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta + body)
    return path


ODD_VALUES = [
    (0x00100010, "PN", b"Doe^John"),
    (0x00100010, "PN", b"Doe^John=Ideo=Phon"),
    (0x00100010, "PN", b"=Ideo"),
    (0x00100010, "PN", b"=="),
    (0x00100010, "PN", b"A\\\\B"),
    (0x00100010, "PN", b"A==\\B"),
    (0x00100010, "PN", b"  "),
    (0x00100010, "PN", b"A=B=C=D"),
    (0x00100010, "PN", b"X" * 70),
    (0x00100020, "LO", b" id \x00"),
    (0x00100020, "LO", b"a\\b\\"),
    (0x00100020, "LO", b"X" * 66),
    (0x00081030, "LO", b"caf\xe9"),
    (0x00200010, "SH", b"12345678901234567"),
    (0x00080060, "CS", b" CT "),
    (0x00080008, "CS", b"ORIGINAL\\PRIMARY\\\\"),
    (0x00080020, "DA", b"2024.01.01"),
    (0x00080070, "LO", b"\x00\x00"),
    (0x00200013, "IS", b" 12 "),
    (0x00200013, "IS", b"1\\2"),
    (0x00200013, "IS", b"1\\\\2"),
    (0x00200013, "IS", b"1.5"),
    (0x00200013, "IS", b"99999999999"),
    (0x00200013, "IS", b"+7"),
    (0x00200013, "IS", b"\t"),
    (0x00280030, "DS", b"0.5\\0.5"),
    (0x00280030, "DS", b" 1e3 \\-.5"),
    (0x00280030, "DS", b"1\\\\2"),
    (0x00280030, "DS", b"nan"),
    (0x00280030, "DS", b"12345678901234567"),
    (0x00280030, "DS", b"   "),
    (0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7 "),
    (0x00081150, "UI", b"1.2.03"),
    (0x00080081, "ST", b"line\r\nline2\\x "),
    (0x00081080, "LO", b"a\x1b$)Cb"),
    (0x00180015, "CS", b"\xe9"),
    (0x00280010, "US", struct.pack("<H", 512)),
    (0x00280010, "US", b"\x01"),
    (0x00281050, "DS", b"40\\400"),
    (0x00209113, "AT", struct.pack("<HHHH", 0x0010, 0x0010, 0x0020, 0x000D)),
    (0x00209113, "AT", b"\x10\x00"),
    (0x00181310, "US", struct.pack("<4H", 0, 256, 256, 0)),
    (0x00186011, "SQ", b""),
    (0x00189219, "SS", struct.pack("<h", -5)),
    (0x00280106, "US", struct.pack("<H", 7)),
    (0x00283002, "US", struct.pack("<3H", 4096, 0, 12)),
    (0x00420011, "OB", b"\x00\x01" * 10),
    (0x00420011, "OB", b"\x00\x01" * 2000),
    (0x00080012, "DA", b""),
    (0x00091010, "LO", b"PRIVATE"),
    (0x00091110, "UN", b"\x01\x02\x03\x04"),
    (0x00290010, "LO", b"SIEMENS CSA HEADER"),
    (0x00291008, "CS", b"IMAGE NUM 4"),
    (0x00100021, "LO", b"issuer"),
    (0x00280103, "US", struct.pack("<H", 1)),
    (0x00080090, "PN", b"Dr^Who\\Dr^No"),
    (0x00082111, "ST", b"X" * 1030),
    (0x00084000, "LT", b"text  "),
    (0x00400254, "LO", "Größe".encode("latin-1")),
    (0x0040A120, "DT", b"20240101120000.000000+0100 "),
    (0x00080201, "SH", b"+0100"),
    (0x00080119, "UC", b"x" * 100),
    (0x00080120, "UR", b"http://x/y  "),
    (0x00080054, "AE", b" AE1 \\AE2"),
    (0x00101010, "AS", b"030Y"),
    (0x0018700C, "DA", b"20240101"),
    (0x00189089, "FD", struct.pack("<3d", 1.5, -2.0, 0.1)),
    (0x00189089, "FD", b"\x00" * 12),
    (0x00181318, "DS", b"1e400"),
    (0x00700084, "PN", b"\xe9l\xe8ve"),
]


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("element", ODD_VALUES, ids=lambda e: f"{e[0]:08X}-{e[1]}-{e[2][:12]!r}")
def test_odd_values_same_as_pydicom(tmp_path: Path, element: tuple[int, str, bytes], *, implicit: bool) -> None:
    path = _file(tmp_path, [element], implicit=implicit)
    _assert_same(path)


def _sequence(items: list[bytes], *, undefined: bool, implicit: bool, tag: int = 0x00081115) -> bytes:
    if undefined:
        body = b"".join(b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + i + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" for i in items)
        body += b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        length = b"\xff\xff\xff\xff"
    else:
        body = b"".join(b"\xfe\xff\x00\xe0" + struct.pack("<L", len(i)) + i for i in items)
        length = struct.pack("<L", len(body))
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    return head + (length if implicit else b"SQ\x00\x00" + length) + body


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_sequences_and_charset_in_items(tmp_path: Path, *, undefined: bool, implicit: bool) -> None:
    item1 = _element(0x00080005, "CS", b"ISO_IR 192", implicit=implicit) + _element(
        0x00081150, "UI", b"1.2.3\x00", implicit=implicit
    )
    item1 += _element(0x00100010, "PN", "Jérôme^Ça".encode(), implicit=implicit)
    item2 = _element(0x00100010, "PN", "J\xe9r\xf4me".encode("latin-1"), implicit=implicit)
    inner = _sequence([item2], undefined=not undefined, implicit=implicit, tag=0x0008114A)
    item2 = inner + item2
    sequence = _sequence([item1, item2, b""], undefined=undefined, implicit=implicit)
    path = _file(tmp_path, [(0x00081030, "LO", b"study")], implicit=implicit)
    data = path.read_bytes()
    # the sequence (0008,1115) goes after (0008,1030) and before (0020,000D)
    at = data.index(struct.pack("<HH", 0x0020, 0x000D))
    path.write_bytes(data[:at] + sequence + data[at:])
    assert _assert_same(path)
    metadata = parse_instance(path, LIMITS).metadata
    items = metadata["00081115"]["Value"]
    assert items[0]["00100010"]["Value"] == [{"Alphabetic": "Jérôme^Ça"}]
    assert items[1]["00100010"]["Value"] == [{"Alphabetic": "Jérôme"}]
    assert items[2] == {}


def test_truncated_and_limits(tmp_path: Path) -> None:
    path = _file(tmp_path, [(0x00081030, "LO", b"study description")], implicit=False)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-3])
    with pytest.raises(MalformedInstance):
        read_header(cut, LIMITS)
    assert type(_outcome(parse_instance_pydicom, cut)) is MalformedInstance
    with pytest.raises(LimitExceeded):
        read_header(path, ParseLimits(max_element_bytes=10))
    assert type(_outcome(parse_instance_pydicom, path)) is type(_outcome(parse_instance, path))
    deep = b""
    for _ in range(5):
        deep = _sequence([deep], undefined=True, implicit=False)
    nested = tmp_path / "nested.dcm"
    base = _file(tmp_path, [], implicit=False).read_bytes()
    at = base.index(struct.pack("<HH", 0x0020, 0x000D))
    nested.write_bytes(base[:at] + deep + base[at:])
    with pytest.raises(LimitExceeded):
        read_header(nested, ParseLimits(max_sequence_depth=4))
    assert isinstance(_outcome(parse_instance_pydicom, nested), ParsedInstance)
    with pytest.raises(LimitExceeded):
        parse_instance_pydicom(nested, ParseLimits(max_sequence_depth=4))
