"""The remembering UID checks answer exactly as pynetdicom's own, and each distinct value is checked once."""

from __future__ import annotations

import pytest
from pydicom.uid import UID
from pynetdicom import _config, pdu_items, utils
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts

from pixport.dimse import uids


@pytest.fixture(autouse=True)
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Restored afterwards, so other tests see whatever they saw before.
    for module in uids._USERS:
        monkeypatch.setattr(module, "set_uid", module.set_uid)
    for module in uids._VALIDATE_USERS:
        monkeypatch.setattr(module, "validate_uid", module.validate_uid)
    uids._checked.cache_clear()
    uids._valid.cache_clear()
    uids.install()


def _getscu_like_request() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "GETSCU"
    primitive.called_ae_title = "PIXPORT"
    contexts, roles = [], []
    for number, template in enumerate(StoragePresentationContexts):
        context = PresentationContext()
        context.context_id = 2 * number + 1
        context.abstract_syntax = template.abstract_syntax
        context.transfer_syntax = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        contexts.append(context)
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = template.abstract_syntax
        role.scu_role, role.scp_role = False, True
        roles.append(role)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length, *roles]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _decoded(data: bytes) -> list[tuple[int, str, list[str]]]:
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(data)
    primitive = pdu.to_primitive()
    return [
        (c.context_id, str(c.abstract_syntax), [str(t) for t in c.transfer_syntax])
        for c in primitive.presentation_context_definition_list
    ]


def test_a_request_decodes_the_same_and_each_uid_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _getscu_like_request()
    first = _decoded(data)
    assert len(first) == len(StoragePresentationContexts)
    checked = uids._checked.cache_info()
    assert _decoded(data) == first
    again = uids._checked.cache_info()
    assert again.misses == checked.misses  # the second request: every UID answered from memory
    assert again.hits > checked.hits
    # And exactly what pynetdicom's own functions give.
    monkeypatch.setattr(pdu_items, "set_uid", utils.set_uid)
    monkeypatch.setattr(pdu_items, "validate_uid", utils.validate_uid)
    assert _decoded(data) == first


def test_an_invalid_uid_is_refused_every_time() -> None:
    for _ in range(3):
        with pytest.raises(ValueError, match="Invalid 'Abstract Syntax Name' value"):
            uids.set_uid("1.2." + "3" * 70, "Abstract Syntax Name")
    assert uids.set_uid(None, "x") is None
    raw = b"1.2.840.10008.1.2"
    assert uids.set_uid(raw, "Transfer Syntax Name") == utils.set_uid(raw, "Transfer Syntax Name") == UID(raw.decode())


def test_conformance_setting_is_honoured_after_caching(monkeypatch: pytest.MonkeyPatch) -> None:
    leading_zero = UID("1.2.03")  # a component may not start with 0 under conformance
    monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", False)
    assert uids.validate_uid(leading_zero) is True
    monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", True)
    assert uids.validate_uid(leading_zero) is utils.validate_uid(leading_zero) is False
