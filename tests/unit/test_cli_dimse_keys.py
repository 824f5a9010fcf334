"""``pixport dimse find -k KEY=VALUE``: how query keys are read, and what a bad one reports."""

from __future__ import annotations

import pytest

from pixport.cli.dimse import _parse_keys
from pixport.errors import BadQuery


def test_keys_are_split_at_the_first_equals_sign() -> None:
    assert _parse_keys(["PatientID=A=1", "PatientName=", " StudyDate =20240101-"]) == {
        "PatientID": "A=1",
        "PatientName": "",
        "StudyDate": "20240101-",
    }


def test_a_key_without_equals_sign_is_named_by_position_not_by_its_text() -> None:
    with pytest.raises(BadQuery) as caught:
        _parse_keys(["PatientID=1", "HONG^GILDONG"])  # a name typed without its key
    assert str(caught.value) == "query key #2 is not written KEY=VALUE"
    with pytest.raises(BadQuery):
        _parse_keys(["=HONG"])
