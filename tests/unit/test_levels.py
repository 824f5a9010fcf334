"""Study, series and instance pieces of an instance's DICOM JSON (pixport.dicom.levels)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pixport.dicom.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS, level_documents
from pixport.dicom.parse import ParseLimits, parse_instance
from pixport.errors import InstanceRejected

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"


def corpus_metadata() -> list[tuple[str, dict[str, object]]]:
    found = []
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in {".dcm", ""}:
            continue
        try:
            parsed = parse_instance(path, ParseLimits())
        except (InstanceRejected, OSError, ValueError):
            continue
        found.append((str(path.relative_to(CORPUS)), parsed.metadata))
    return found


CASES = corpus_metadata()


def test_the_corpus_gives_cases() -> None:
    assert len(CASES) > 100


@pytest.mark.parametrize(("name", "metadata"), CASES, ids=[name for name, _ in CASES])
def test_each_level_holds_its_tags_in_tag_order(name: str, metadata: dict[str, object]) -> None:
    del name
    pieces = [orjson.loads(piece) for piece in level_documents(metadata)]
    for piece, tags in zip(pieces, (STUDY_TAGS, SERIES_TAGS, INSTANCE_TAGS), strict=True):
        assert piece == {tag: value for tag, value in metadata.items() if tag in tags}
        assert list(piece) == sorted(piece)
