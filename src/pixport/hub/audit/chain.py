"""The hash chain: what an event's hash covers, and how it names the event before it.

Events are numbered 1, 2, 3, ... without gaps (``seq``, the primary key).  Each event stores
``prev_hash``, the ``hash`` of the event before it (64 zeros for event 1), and its own
``hash``::

    hash = hex(SHA-256(RFC 8785 canonical JSON of {seq, at, action, actor, actor_address,
                       outcome, national_key, object, purpose, detail, prev_hash}))

so an event's hash covers its content, its number and, through ``prev_hash``, every event
before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import RowMapping

from pixport.hub.audit.events import EVENT_FIELDS, AuditEvent
from pixport.trust import jws

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of event 1, and the head hash of an empty log."""


def event_hash(content: Mapping[str, Any]) -> str:
    """The hex SHA-256 of ``content``'s RFC 8785 canonical JSON: an event's ``hash``."""
    return hashlib.sha256(jws.canonical_json(dict(content))).hexdigest()


def event_content(seq: int, at: str, event: AuditEvent, prev_hash: str) -> dict[str, Any]:
    """What the hash of ``event``, recorded as event ``seq`` at ``at`` after ``prev_hash``, covers."""
    content: dict[str, Any] = {name: getattr(event, name) for name in EVENT_FIELDS}
    content.update(seq=seq, at=at, detail=dict(event.detail), prev_hash=prev_hash)
    return content


def row_content(row: RowMapping) -> dict[str, Any] | None:
    """The hashed content of a stored row, or None if its detail is not a JSON object."""
    try:
        detail = json.loads(row["detail"])
    except (TypeError, ValueError):
        return None
    if not isinstance(detail, dict):
        return None
    content: dict[str, Any] = {name: row[name] for name in EVENT_FIELDS}
    content.update(seq=row["seq"], at=row["at"], detail=detail, prev_hash=row["prev_hash"])
    return content


def content_hash(content: Mapping[str, Any] | None) -> str | None:
    """``event_hash(content)``, or None for no content or one RFC 8785 cannot write."""
    if content is None:
        return None
    try:
        return event_hash(content)
    except (TypeError, ValueError):  # a value RFC 8785 cannot write: a number out of range, NaN
        return None
