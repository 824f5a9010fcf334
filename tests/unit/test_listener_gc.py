"""The DICOM listener does not stop the world between requests for a full garbage collection."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
from pynetdicom.transport import AssociationServer

from pixport.dimse.scp import ListenerServer


def test_no_forced_full_collection_between_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    collections: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collections.append(generation) or 0)
    due = SimpleNamespace(_gc=[59, 59])  # pynetdicom's counter when its 60th request is served
    AssociationServer.service_actions(due)  # type: ignore[arg-type]
    assert collections == [2]  # what pynetdicom does: the premise of the override
    filled: list[bool] = []
    idle = SimpleNamespace(_gc=[59, 59], serving=0, acceptors=SimpleNamespace(fill=lambda: filled.append(True)))
    ListenerServer.service_actions(idle)  # type: ignore[arg-type]
    assert collections == [2]
    assert filled == [True]  # what it does instead while idle: an acceptor made ready (acceptor.py)


def test_no_acceptor_is_made_between_requests_while_an_association_is_active() -> None:
    filled: list[bool] = []
    busy = SimpleNamespace(serving=1, acceptors=SimpleNamespace(fill=lambda: filled.append(True)))
    ListenerServer.service_actions(busy)  # type: ignore[arg-type]
    assert filled == []
