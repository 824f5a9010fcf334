"""C-STOREs taken straight from the P-DATA stream store exactly what pynetdicom's path stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dimse_support import AE_TITLE, CORPUS, after_meta, dcmtk, start_listener, store_answer, stored
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import evt

from pixport.dimse import fast_store, reactor
from pixport.dimse.reactor import EventDrivenDUL

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


def test_p_data_fragments_go_straight_from_the_received_pdu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not through pynetdicom's decoder, queues and state machine: none of them sees a P-DATA-TF."""
    decoded: list[int] = []
    handed: list[int] = []
    decode = EventDrivenDUL._decode_pdu
    receive = fast_store.FastStoreDIMSE.receive_fragments

    def recording_decode(self: EventDrivenDUL, data: bytearray) -> Any:
        decoded.append(data[0])
        return decode(self, data)

    def recording_receive(self: fast_store.FastStoreDIMSE, values: Any) -> None:
        handed.append(sum(len(data) - 1 for _, data in values))  # fragment bytes, control headers aside
        receive(self, values)

    monkeypatch.setattr(EventDrivenDUL, "_decode_pdu", recording_decode)
    monkeypatch.setattr(fast_store.FastStoreDIMSE, "receive_fragments", recording_receive)
    for listener in start_listener(tmp_path):
        # FILES[0], the CT, is about 39 kB: several 16 kB PDUs.
        result = dcmtk("storescu", "--max-pdu", "16384", "-aec", AE_TITLE, "127.0.0.1", listener.port, *FILES)
        assert result.returncode == 0, result.stderr
        assert listener.archive.index.count_instances() == len(FILES)
    # The A-ASSOCIATE-RQ and the A-RELEASE-RQ only: not even the first P-DATA-TF, which can be
    # read while the association's thread, having sent the A-ASSOCIATE-AC, has yet to enter Sta6.
    assert 0x01 in decoded
    assert 0x04 not in decoded
    # Every data set's bytes reached fast_store (the CT's in at least 3 PDUs).
    data_sets = sum(len(after_meta(path.read_bytes())) for path in FILES)
    assert sum(handed) > data_sets
    assert len(handed) >= 4


def test_a_handlers_error_comment_is_sent_in_the_default_repertoire(tmp_path: Path) -> None:
    """A comment that is not ASCII, or longer than LO, reaches the peer as ASCII of 64 at most."""
    for listener in start_listener(tmp_path):

        def refusing(event: Any) -> Dataset:
            Path(event.dataset_path).unlink(missing_ok=True)
            answer = Dataset()
            answer.Status = 0xA700
            answer.ErrorComment = "저장 공간 부족 " * 10
            return answer

        listener.server.bind(evt.EVT_C_STORE, reactor.safe_on_receiving_thread(refusing))
        status, comment = store_answer(listener, dcmread(FILES[0]), "FASTTEST")
        assert status == 0xA700
        assert comment.isascii()
        assert comment.startswith("?? ?? ?? ")  # each Hangul syllable replaced
        assert len(comment) <= 64
