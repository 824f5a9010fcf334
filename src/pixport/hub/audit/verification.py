"""Verifying the audit chain: what tampering it detects, and what it cannot.

What :meth:`AuditLog.verify` detects
------------------------------------
It reads the table in ``seq`` order, a page at a time, and names the event in each problem:

- an edited field: ``event 5 was altered: its content does not match its hash``;
- an edited hash (the content still matches the hash the next event, or the checkpoint,
  names): ``event 5's hash was altered: it does not match the event's content, whose hash
  event 6 names``;
- a removed event: ``event 7 is missing (seq jumps from 6 to 8)``, ``events 7 to 9 are
  missing (seq jumps from 6 to 10)``, or for the first ones ``event 1 is missing (the log
  starts at event 2)``;
- moved events (rows' ``seq`` exchanged or renumbered): ``event 9 does not follow event 8:
  its prev_hash is the hash of event 10`` (or ``... is not the hash of any event in the
  log``), and for a row whose hash was made under another number, ``event 9 was renumbered:
  it was recorded as event 10``;
- against a checkpoint ``(seq, hash)`` taken earlier with :meth:`AuditLog.head`: ``the log
  ends at event 7 but a checkpoint names event 10`` (the last events were removed), and
  ``event 10 does not match the checkpoint: ...`` (the log was cut and grown again, or
  rewritten from there on).

What it cannot detect
---------------------
The chain is not keyed: anyone who can write the database can recompute it.  So, on its own,
verification cannot see the last events deleted (the shorter chain is still a valid chain),
nor the whole chain rewritten from some event on.  Both are caught only against a checkpoint
published or signed elsewhere (the hub signs and publishes :meth:`AuditLog.head` regularly),
and only up to that checkpoint.  Nor can it see an event that was never recorded, or a wrong
clock (``at`` is what the hub's clock said).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, RowMapping, select

from pixport.hub.audit.chain import GENESIS_HASH, content_hash, row_content
from pixport.hub.schema import audit_events

_RENUMBER_WINDOW: Final = 64  # how far from its seq a moved event's original seq is looked for


@dataclass
class AuditVerification:
    """The result of :meth:`AuditLog.verify`: ``ok`` when ``problems`` is empty.

    ``head_seq`` and ``head_hash`` are the last event's (0 and :data:`GENESIS_HASH` for an
    empty log); each problem names the event it is about.
    """

    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str
    problems: list[str] = field(default_factory=list)


def verify_chain(
    connection: Connection, expected_head: tuple[int, str] | None, *, page_size: int, max_problems: int
) -> AuditVerification:
    """Walk ``audit_events`` in seq order, ``page_size`` rows at a time (see :meth:`AuditLog.verify`)."""
    verifier = ChainVerifier(connection, expected_head, max_problems)
    after: int | None = None
    while True:
        query = select(audit_events).order_by(audit_events.c.seq).limit(page_size)
        if after is not None:
            query = query.where(audit_events.c.seq > after)
        rows = connection.execute(query).mappings().all()
        for row in rows:
            verifier.feed(row)
        if len(rows) < page_size:
            break
        after = int(rows[-1]["seq"])
    return verifier.finish()


@dataclass
class _Checked:
    """What verify keeps of the previous event: enough to judge the next one against it."""

    seq: int
    stored_hash: str
    prev_hash: str
    content: dict[str, Any] | None
    computed_hash: str | None

    @property
    def intact(self) -> bool:
        return self.computed_hash == self.stored_hash


class ChainVerifier:
    """Walks the events in seq order, holding only the previous one."""

    def __init__(self, connection: Connection, expected_head: tuple[int, str] | None, max_problems: int) -> None:
        self._connection = connection
        self._expected_head = expected_head
        self._max_problems = max_problems
        self._problems: list[str] = []
        self._unlisted = 0
        self._count = 0
        self._last: _Checked | None = None
        self._checkpoint_seen = False

    def _note(self, problem: str) -> None:
        if len(self._problems) < self._max_problems:
            self._problems.append(problem)
        else:
            self._unlisted += 1

    @property
    def _listing(self) -> bool:
        return len(self._problems) < self._max_problems

    def feed(self, row: RowMapping) -> None:
        """Check one event, and settle the previous one now that its successor is known."""
        self._count += 1
        content = row_content(row)
        current = _Checked(
            seq=int(row["seq"]),
            stored_hash=row["hash"],
            prev_hash=row["prev_hash"],
            content=content,
            computed_hash=content_hash(content),
        )
        if self._last is not None:
            self._settle(self._last, current)
        self._check_place(self._last, current)
        self._check_checkpoint(current)
        self._last = current

    def finish(self) -> AuditVerification:
        """The verdict, once every event has been fed."""
        last = self._last
        if last is not None:
            self._settle(last, None)
        if self._expected_head is not None and not self._checkpoint_seen:
            expected_seq = self._expected_head[0]
            head_seq = last.seq if last is not None else 0
            if expected_seq > head_seq:
                self._note(f"the log ends at event {head_seq} but a checkpoint names event {expected_seq}")
        if self._unlisted:
            self._problems.append(f"... and {self._unlisted} more problems")
        return AuditVerification(
            ok=not self._problems,
            events_checked=self._count,
            head_seq=last.seq if last is not None else 0,
            head_hash=last.stored_hash if last is not None else GENESIS_HASH,
            problems=self._problems,
        )

    def _settle(self, event: _Checked, successor: _Checked | None) -> None:
        """Report an event whose content does not match its hash, saying how, as far as can be told."""
        if event.intact:
            return
        if not self._listing:
            self._unlisted += 1
            return
        if event.computed_hash is None or event.content is None:
            self._note(f"event {event.seq} was altered: its content does not match its hash (its detail is unreadable)")
            return
        witness = self._hash_witness(event, successor)
        if witness is not None:
            self._note(
                f"event {event.seq}'s hash was altered: it does not match the event's content, "
                f"whose hash {witness} names"
            )
            return
        original = self._original_seq(event.content, event.seq, event.stored_hash)
        if original is not None:
            self._note(f"event {event.seq} was renumbered: it was recorded as event {original}")
            return
        self._note(f"event {event.seq} was altered: its content does not match its hash")

    def _hash_witness(self, event: _Checked, successor: _Checked | None) -> str | None:
        """Who still names the hash of this event's content: the next event or a checkpoint."""
        if successor is not None and successor.seq == event.seq + 1 and successor.prev_hash == event.computed_hash:
            return f"event {successor.seq}"
        if self._expected_head == (event.seq, event.computed_hash):
            return "the checkpoint"
        return None

    @staticmethod
    def _original_seq(content: dict[str, Any], seq: int, stored_hash: str) -> int | None:
        """The seq an event's hash was made under, if it was moved not far from there."""
        for distance in range(1, _RENUMBER_WINDOW + 1):
            for candidate in (seq + distance, seq - distance):
                if candidate >= 1 and content_hash({**content, "seq": candidate}) == stored_hash:
                    return candidate
        return None

    def _check_place(self, previous: _Checked | None, current: _Checked) -> None:
        """Check that ``current`` comes right after ``previous`` (or starts the log), by seq and by prev_hash."""
        expected_seq = previous.seq + 1 if previous is not None else 1
        if current.seq < expected_seq:  # only a first event numbered below 1: seq is the primary key
            self._note(f"event {current.seq} has an impossible seq: the log starts at event 1")
            return
        if current.seq > expected_seq:
            if current.seq == expected_seq + 1:
                missing = f"event {expected_seq} is missing"
            else:
                missing = f"events {expected_seq} to {current.seq - 1} are missing"
            if previous is not None:
                self._note(f"{missing} (seq jumps from {previous.seq} to {current.seq})")
            else:
                self._note(f"{missing} (the log starts at event {current.seq})")
            return  # the link across a gap cannot be checked
        expected_prev = previous.stored_hash if previous is not None else GENESIS_HASH
        if current.prev_hash == expected_prev:
            return
        if previous is not None and not previous.intact and current.prev_hash == previous.computed_hash:
            return  # the previous event's hash was altered, and _settle said so
        if not self._listing:
            self._unlisted += 1
            return
        named = self._name_hash(current.prev_hash)
        if previous is None:
            self._note(f"event {current.seq} does not start the log: its prev_hash is {named}, not 64 zeros")
        else:
            self._note(f"event {current.seq} does not follow event {previous.seq}: its prev_hash is {named}")

    def _name_hash(self, value: str) -> str:
        if value == GENESIS_HASH:
            return "64 zeros, as if it started the log"
        seq = self._connection.execute(
            select(audit_events.c.seq).where(audit_events.c.hash == value).order_by(audit_events.c.seq).limit(1)
        ).scalar()
        if seq is None:
            return "not the hash of any event in the log (an event was rewritten, or events were removed)"
        return f"the hash of event {seq}"

    def _check_checkpoint(self, current: _Checked) -> None:
        if self._expected_head is None or current.seq != self._expected_head[0]:
            return
        self._checkpoint_seen = True
        expected_hash = self._expected_head[1]
        if expected_hash in {current.stored_hash, current.computed_hash}:
            return  # the same event (if only its hash was altered, _settle says so)
        self._note(
            f"event {current.seq} does not match the checkpoint: its hash is {current.stored_hash}, "
            f"the checkpoint names {expected_hash} (the log was cut and grown again, or rewritten)"
        )
