"""UIDs in PDUs and primitives are validated once per distinct value, not once per use.

A DCMTK ``getscu`` or ``movescu`` proposes about 120 presentation contexts, each with its
transfer syntaxes and an SCP/SCU role selection item.  pynetdicom turns every UID of that
request into a pydicom ``UID`` and validates it with regular expressions
(``pynetdicom.utils.set_uid``), several times as the request becomes a primitive and is
negotiated: about 10 ms of CPU per association, most of a one-instance C-GET's accept time.
The UIDs are nearly always the same few hundred SOP Classes and transfer syntaxes, so the
result for a given value (the same ``UID``, or the same ``ValueError``) is remembered.  The
cache is bounded: a peer that sends ever-new UIDs only makes it forget older ones.
"""

from __future__ import annotations

import functools
from typing import Any

from pydicom.uid import UID
from pynetdicom import _config, ae, dimse_primitives, pdu_items, pdu_primitives, presentation, utils

CACHE_SIZE = 4096
_original = utils.set_uid
_original_validate = utils.validate_uid
_USERS = (ae, dimse_primitives, pdu_items, pdu_primitives, presentation)
_VALIDATE_USERS = (pdu_items, pdu_primitives, presentation)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _checked(
    value: str | bytes,
    name: str,
    allow_empty: bool,  # noqa: FBT001
    allow_none: bool,  # noqa: FBT001
    validate: bool,  # noqa: FBT001
    _validator: object,
) -> UID | None:
    return _original(value, name, allow_empty, allow_none, validate)


def set_uid(
    value: str | bytes | UID | None,
    name: str,
    allow_empty: bool = True,  # noqa: FBT001, FBT002  pynetdicom's signature
    allow_none: bool = True,  # noqa: FBT001, FBT002
    validate: bool = True,  # noqa: FBT001, FBT002
) -> UID | None:
    """``pynetdicom.utils.set_uid``, remembering its answer for each value it has seen."""
    if type(value) in {str, bytes, UID}:
        # A UID and the str of the same digits are equal and hash alike: one entry for both,
        # and set_uid gives the same UID for either.
        validator = _config.VALIDATORS["UI"]  # part of the key: a changed validator is asked again
        return _checked(value, name, allow_empty, allow_none, validate, validator)
    return _original(value, name, allow_empty, allow_none, validate)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _valid(uid: str, _enforced: bool) -> bool:  # noqa: FBT001
    return _original_validate(UID(uid))


def validate_uid(uid: UID) -> bool:
    """``pynetdicom.utils.validate_uid``, remembering its answer for each value it has seen."""
    return _valid(str(uid), _config.ENFORCE_UID_CONFORMANCE)


def install() -> None:
    """Use the remembering functions wherever pynetdicom imported its own; idempotent."""
    module: Any
    for module in _USERS:
        module.set_uid = set_uid
    for module in _VALIDATE_USERS:
        module.validate_uid = validate_uid
