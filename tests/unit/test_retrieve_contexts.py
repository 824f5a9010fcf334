"""The presentation contexts a C-MOVE sub-association proposes (pixport.dimse.retrieve.storage_contexts)."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from pixport.dimse.retrieve import MAX_CONTEXTS, storage_contexts
from pixport.storage.base import StoredInstance

LITTLE_ENDIAN = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def instance(number: int, sop_class: str, syntax: str) -> StoredInstance:
    return StoredInstance("2.25.1", "2.25.2", f"2.25.3.{number}", sop_class, syntax, "0" * 64, 100, None)


def test_each_stored_syntax_and_little_endian_per_class() -> None:
    instances = [
        instance(1, "1.2.840.10008.5.1.4.1.1.2", JPEG2000Lossless),
        instance(2, "1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian),
        instance(3, "1.2.840.10008.5.1.4.1.1.7", JPEGBaseline8Bit),
    ]
    proposed = {(str(cx.abstract_syntax), tuple(map(str, cx.transfer_syntax))) for cx in storage_contexts(instances)}
    assert proposed == {
        ("1.2.840.10008.5.1.4.1.1.2", (JPEG2000Lossless,)),
        ("1.2.840.10008.5.1.4.1.1.2", tuple(LITTLE_ENDIAN)),
        ("1.2.840.10008.5.1.4.1.1.7", (JPEGBaseline8Bit,)),
        ("1.2.840.10008.5.1.4.1.1.7", tuple(LITTLE_ENDIAN)),
    }


def test_past_the_limit_every_class_keeps_its_little_endian_fallback() -> None:
    classes = [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(100)]  # 200 contexts wanted, 128 possible
    instances = [instance(n, sop_class, JPEG2000Lossless) for n, sop_class in enumerate(classes)]
    contexts = storage_contexts(instances)
    assert len(contexts) == MAX_CONTEXTS
    with_fallback = {str(cx.abstract_syntax) for cx in contexts if list(map(str, cx.transfer_syntax)) == LITTLE_ENDIAN}
    assert with_fallback == set(classes)
