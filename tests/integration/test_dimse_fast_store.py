"""C-STOREs taken straight from the P-DATA stream store exactly what pynetdicom's path stores."""

from __future__ import annotations

from pathlib import Path

import pytest
from dimse_support import AE_TITLE, CORPUS, dcmtk, start_listener, stored

from pixport.dimse import fast_store

FILES = [
    CORPUS / "modality" / "ct" / "CT_small.dcm",
    CORPUS / "charset" / "korean_chrI2_utf8.dcm",
    CORPUS / "charset" / "chrFren_latin1.dcm",
]


def digests(tmp_path: Path, *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, int]]:
    monkeypatch.setattr(fast_store, "FAST_STORES", fast)
    for listener in start_listener(tmp_path / ("fast" if fast else "pynetdicom")):
        result = dcmtk("storescu", "-aec", AE_TITLE, "127.0.0.1", listener.port, *FILES)
        assert result.returncode == 0, result.stderr
        return {
            uid: (digest, stored(listener.archive, uid).size) for uid, digest in listener.archive.index.iter_digests()
        }
    raise AssertionError


def test_fast_path_and_pynetdicom_path_store_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[str] = []
    serve = fast_store.FastStoreDIMSE._serve

    def counting(self: fast_store.FastStoreDIMSE) -> None:
        served.append("fast")
        serve(self)

    monkeypatch.setattr(fast_store.FastStoreDIMSE, "_serve", counting)
    fast = digests(tmp_path, fast=True, monkeypatch=monkeypatch)
    assert served == ["fast"] * len(FILES)
    slow = digests(tmp_path, fast=False, monkeypatch=monkeypatch)
    assert served == ["fast"] * len(FILES)  # pynetdicom's path took the second round
    assert len(fast) == len(FILES)
    assert fast == slow
