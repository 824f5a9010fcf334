"""C-FIND answers on both delivery paths: written in batches, and yielded to pynetdicom.

Little Endian contexts get their pending responses in batched writes (``dimse/pending.py``),
big endian and deflated ones through pynetdicom, message by message.  A pynetdicom client
that accepts only small PDUs (so that command sets and identifiers are fragmented) must get
the same answers, in the same order, on every path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dimse_support import AE_TITLE, Listener, start_listener
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from pixport.config import DimseSettings, RemoteNode
from pixport.dimse import find, scu
from pixport.dimse.pending import PendingWriter
from pixport.samples import sample_studies

SYNTAXES = {
    "1.2.840.10008.1.2": 1,  # Implicit VR Little Endian: batched writes
    "1.2.840.10008.1.2.1": 1,  # Explicit VR Little Endian: batched writes
    "1.2.840.10008.1.2.2": 0,  # Explicit VR Big Endian: pynetdicom
    "1.2.840.10008.1.2.1.99": 0,  # Deflated Explicit VR Little Endian: pynetdicom
}
SMALL_PDU = 120  # smaller than a command set: every message is fragmented


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    for node in start_listener(tmp_path_factory.mktemp("find")):
        remote = RemoteNode(ae_title=AE_TITLE, host="127.0.0.1", port=node.port)
        assert all(result.ok for result in scu.send(DimseSettings(ae_title="LOADER"), remote, list(sample_studies())))
        yield node


def c_find(port: int, syntax: str, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="FINDSCU")
    ae.maximum_pdu_size = SMALL_PDU
    context = build_context(StudyRootQueryRetrieveInformationModelFind, [syntax])
    assoc = ae.associate("127.0.0.1", port, contexts=[context], ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return [
            (int(status.Status), answer)
            for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        ]
    finally:
        assoc.release()


def identifier(level: str, **keys: Any) -> Dataset:
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    return dataset


@pytest.mark.parametrize(
    "query",
    [
        identifier("IMAGE", SOPInstanceUID="", PatientName="", InstanceNumber="", Rows="", ImageType=""),
        identifier("STUDY", PatientName="Hong*", StudyInstanceUID="", ModalitiesInStudy="", PatientID=""),
        identifier("SERIES", Modality="CT", SeriesInstanceUID="", NumberOfSeriesRelatedInstances=""),
        identifier("STUDY", PatientID="nobody", StudyInstanceUID=""),
    ],
    ids=["image", "study", "series", "none"],
)
def test_same_answers_on_every_path(listener: Listener, query: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    send = PendingWriter.send

    def counting(self: PendingWriter, identifiers: Any) -> bool:
        batch = list(identifiers)
        writes.append(len(batch))
        return send(self, batch)

    monkeypatch.setattr(PendingWriter, "send", counting)
    answers = {}
    for syntax, batched in SYNTAXES.items():
        writes.clear()
        answers[syntax] = c_find(listener.port, syntax, query)
        pending = len(answers[syntax]) - 1
        assert sum(writes) == (pending if batched else 0), syntax
        assert len(writes) == (-(-pending // find.BATCH) if batched else 0), syntax
    reference = answers["1.2.840.10008.1.2.1"]
    assert reference[-1] == (0x0000, None)
    assert all(status == 0xFF00 and answer is not None for status, answer in reference[:-1])
    for syntax, got in answers.items():
        assert got == reference, syntax
    if query.QueryRetrieveLevel == "IMAGE":
        assert len(reference) - 1 > find.BATCH  # more than one batch
        assert {str(answer.PatientName) for _, answer in reference[:-1] if answer is not None} >= {
            "Hong^Gildong=洪^吉洞=홍^길동"
        }


def test_answers_from_a_disconnected_writer_go_through_pynetdicom(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a batch cannot be written (something queued ahead), pynetdicom sends the rest."""
    query = identifier("IMAGE", SOPInstanceUID="", PatientName="")
    reference = c_find(listener.port, "1.2.840.10008.1.2.1", query)
    monkeypatch.setattr(PendingWriter, "send", lambda self, identifiers: False)  # noqa: ARG005
    assert c_find(listener.port, "1.2.840.10008.1.2.1", query) == reference


def test_no_writer_without_the_event_driven_dul() -> None:
    class Event:
        class assoc:  # noqa: N801  the shape of pynetdicom's event
            dul = object()

    assert PendingWriter.for_event(Event()) is None


def test_a_handler_on_sent_pdus_keeps_pynetdicom_sending(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    """EVT_PDU_SENT expects a call per PDU: with a handler bound, no batched writes."""
    query = identifier("IMAGE", SOPInstanceUID="", PatientName="")
    reference = c_find(listener.port, "1.2.840.10008.1.2.1", query)
    writes: list[int] = []
    monkeypatch.setattr(PendingWriter, "send", lambda self, identifiers: writes.append(1) or False)  # noqa: ARG005
    sent: list[Any] = []

    def on_pdu_sent(event: Any) -> None:
        sent.append(event.pdu)

    listener.server.bind(evt.EVT_PDU_SENT, on_pdu_sent)
    try:
        assert c_find(listener.port, "1.2.840.10008.1.2.1", query) == reference
    finally:
        listener.server.unbind(evt.EVT_PDU_SENT, on_pdu_sent)
    assert writes == []
    assert len(sent) > 2 * len(reference)  # every fragment of every response, and more
