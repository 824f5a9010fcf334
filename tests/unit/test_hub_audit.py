"""The hub's audit log: recording, listing by patient, the hash chain, tamper detection, concurrent appends."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, select, text

from pixport.errors import StorageUnavailable
from pixport.hub import audit
from pixport.hub.audit import (
    GENESIS_HASH,
    AccessDenied,
    AuditEvent,
    AuditLog,
    InstitutionAdmitted,
    ManifestRegistered,
    RecordedEvent,
    create_tables,
)
from pixport.hub.audit import log as audit_log
from pixport.hub.schema import audit_events, institutions
from pixport.trust import jws

NOT_IN_LOG = "not the hash of any event in the log (an event was rewritten, or events were removed)"
AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: Engine) -> AuditLog:
    return AuditLog(engine)


def read_event(i: int, national_key: str | None = None) -> AuditEvent:
    return AuditEvent(
        action="study.read",
        actor="institution:HANBIT",
        outcome="success",
        national_key=national_key if national_key is not None else ("nk-a" if i % 2 else "nk-b"),
        object=f"1.2.410.200.{i}",
        purpose="treatment",
        actor_address="10.0.0.7",
        detail={"manifest_id": f"m-{i}", "instances": i, "lossless": True, "supersedes": None},
    )


def fill(log: AuditLog, count: int) -> list[RecordedEvent]:
    return [log.record(read_event(i)) for i in range(1, count + 1)]


def tamper(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text(sql), params)


def stored_hash(engine: Engine, seq: int) -> str:
    with engine.connect() as connection:
        return str(connection.execute(select(audit_events.c.hash).where(audit_events.c.seq == seq)).scalar_one())


# -- recording and listing ---------------------------------------------------------------


def test_events_are_numbered_from_one_and_chained(log: AuditLog) -> None:
    first, second = fill(log, 2)
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH == "0" * 64
    assert second.prev_hash == first.hash
    assert re.fullmatch(r"[0-9a-f]{64}", first.hash)
    assert first.hash != second.hash
    assert AT.match(first.at)
    assert first.at <= second.at
    assert log.head() == (2, second.hash)


def test_the_hash_covers_every_field_in_rfc8785_form(log: AuditLog) -> None:
    recorded = log.record(read_event(3))
    e = recorded.event
    content = {
        "seq": 1,
        "at": recorded.at,
        "action": e.action,
        "actor": e.actor,
        "outcome": e.outcome,
        "national_key": e.national_key,
        "object": e.object,
        "purpose": e.purpose,
        "actor_address": e.actor_address,
        "detail": e.detail,
        "prev_hash": GENESIS_HASH,
    }
    assert recorded.hash == hashlib.sha256(jws.canonical_json(content)).hexdigest()


def test_events_are_listed_by_patient_and_action_in_seq_order(log: AuditLog) -> None:
    recorded = fill(log, 10)
    log.record(ManifestRegistered(actor="institution:HANBIT", national_key="nk-a", object="manifest-1"))
    mine = log.list_events(national_key="nk-a")
    assert [r.seq for r in mine] == [1, 3, 5, 7, 9, 11]
    assert {r.event.national_key for r in mine} == {"nk-a"}
    assert mine[0] == recorded[0]  # read back as written, detail included
    assert mine[0].event.detail == {"manifest_id": "m-1", "instances": 1, "lossless": True, "supersedes": None}
    registered = log.list_events(action="manifest.registered")
    assert [(r.seq, r.event.object) for r in registered] == [(11, "manifest-1")]
    assert [r.seq for r in log.list_events(national_key="nk-a", action="study.read", after_seq=3, limit=2)] == [5, 7]
    assert log.list_events(national_key="nobody") == []
    with pytest.raises(ValueError):
        log.list_events(limit=0)


def test_past_tense_events_fix_their_action(log: AuditLog) -> None:
    denied = AccessDenied(
        actor="institution:DAEHAN", national_key="nk-a", object="1.2.3", detail={"reason": "no-share"}
    )
    assert (denied.action, denied.outcome) == ("access.denied", "refused")
    admitted = InstitutionAdmitted(actor="operator:cli:root", object="HANBIT")
    assert admitted.action == "institution.admitted"
    assert admitted.national_key is None
    log.record(denied)
    log.record(admitted)
    assert [(r.event.action, r.event.outcome) for r in log.list_events()] == [
        ("access.denied", "refused"),
        ("institution.admitted", "success"),
    ]


def test_detail_is_copied_when_the_event_is_made() -> None:
    detail: dict[str, str | int | bool | None] = {"manifest_id": "m-1"}
    made = AuditEvent(action="study.read", actor="hub", detail=detail)
    detail["manifest_id"] = "m-2"
    assert made.detail == {"manifest_id": "m-1"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"detail": {"size": 1.5}}, "must be a str, int, bool or None"),
        ({"detail": {"ids": ["a", "b"]}}, "must be a str, int, bool or None"),
        ({"detail": {"patient": {"name": "x"}}}, "must be a str, int, bool or None"),
        ({"detail": {"big": 2**53}}, "beyond 2**53"),
        ({"detail": {"rrn": "900101-1234567"}}, "resident registration number"),
        ({"purpose": "for 900101-1234567"}, "resident registration number"),
        ({"detail": {1: "x"}}, "keys must be strings"),
        ({"outcome": "ok"}, "outcome must be one of"),
        ({"actor": ""}, "needs an action and an actor"),
        ({"national_key": ""}, "national_key"),
        ({"object": 12}, "field object must be a string"),
        ({"action": "x" * 65}, "field action is too long"),
    ],
)
def test_an_event_that_may_not_be_recorded_is_refused(log: AuditLog, change: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"action": "study.read", "actor": "hub", "national_key": "nk-a", **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        log.record(AuditEvent(**fields))
    assert log.head() == (0, GENESIS_HASH)


def test_ids_of_every_allowed_type_are_recorded(log: AuditLog) -> None:
    detail = {"uid": "1.2.3", "count": -(2**53 - 1), "flag": False, "none": None, "korean": "한빛병원"}
    recorded = log.record(AuditEvent(action="study.read", actor="hub", detail=detail))
    assert log.list_events()[0].event.detail == detail
    assert log.verify().ok
    assert recorded.seq == 1


# -- transactions ----------------------------------------------------------------------


def test_an_act_and_its_event_commit_together(engine: Engine, log: AuditLog) -> None:
    with engine.begin() as connection:
        connection.execute(
            institutions.insert().values(
                code="HANBIT", name_ko="한빛병원", name_en="Hanbit", endpoint="https://hanbit.example", admitted_at="x"
            )
        )
        recorded = log.record(InstitutionAdmitted(actor="operator:cli:root", object="HANBIT"), connection=connection)
    assert recorded.seq == 1
    assert log.head() == (1, recorded.hash)
    with engine.connect() as connection:
        assert connection.execute(select(institutions.c.code)).scalars().all() == ["HANBIT"]


def test_an_event_in_a_rolled_back_transaction_is_not_kept(engine: Engine, log: AuditLog) -> None:
    with engine.connect() as connection:
        transaction = connection.begin()
        assert log.record(read_event(1), connection=connection).seq == 1
        transaction.rollback()
    assert log.head() == (0, GENESIS_HASH)
    assert log.record(read_event(2)).seq == 1
    assert log.verify().ok


def test_a_seq_clash_is_retried_in_the_logs_own_transaction(
    engine: Engine, log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the lock, a competing writer can take the next seq between the head read and the insert.
    monkeypatch.setattr(audit_log, "_lock_for_append", lambda _connection: None)
    real_now = audit_log._now
    competitor: list[RecordedEvent] = []
    competing = threading.Event()

    def now_with_a_competitor() -> str:
        if not competing.is_set():
            competing.set()
            competitor.append(AuditLog(engine).record(read_event(99)))
        return real_now()

    monkeypatch.setattr(audit_log, "_now", now_with_a_competitor)
    recorded = log.record(read_event(1))
    assert competitor[0].seq == 1
    assert recorded.seq == 2
    assert recorded.prev_hash == competitor[0].hash
    assert log.verify().ok


def test_a_seq_clash_in_the_callers_transaction_is_reported(
    engine: Engine, log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "_lock_for_append", lambda _connection: None)
    real_now = audit_log._now
    competed: list[bool] = []

    def now_with_a_competitor() -> str:
        if not competed:
            competed.append(True)
            AuditLog(engine).record(read_event(99))
        return real_now()

    monkeypatch.setattr(audit_log, "_now", now_with_a_competitor)
    with (
        pytest.raises(StorageUnavailable, match=re.escape("could not record a study.read event")),
        engine.begin() as connection,
    ):
        log.record(read_event(1), connection=connection)
    assert log.head()[0] == 1
    assert log.verify().ok


# -- verification ---------------------------------------------------------------------


def test_an_intact_log_verifies(log: AuditLog) -> None:
    recorded = fill(log, 12)
    for page_size in (1, 5, 1000):
        result = log.verify(page_size=page_size)
        assert result.ok, result.problems
        assert result.problems == []
        assert result.events_checked == 12
        assert (result.head_seq, result.head_hash) == (12, recorded[-1].hash)
    assert log.verify(expected_head=(12, recorded[-1].hash)).ok
    assert log.verify(expected_head=(5, recorded[4].hash)).ok


def test_an_empty_log_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert (result.ok, result.events_checked, result.head_seq, result.head_hash) == (True, 0, 0, GENESIS_HASH)
    assert log.verify(expected_head=(0, GENESIS_HASH)).ok


def test_verify_reads_the_table_a_page_at_a_time(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert log.verify(page_size=5).ok
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    pages = [s for s in statements if "FROM audit_events" in s]
    assert len(pages) == 3  # 5 + 5 + 2
    assert all("LIMIT" in s for s in pages)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("purpose", "research"),
        ("actor", "institution:OTHER"),
        ("national_key", "nk-z"),
        ("national_key", None),
        ("outcome", "refused"),
        ("object", "1.2.999"),
        ("at", "2020-01-01T00:00:00.000000Z"),
        ("detail", '{"instances":5,"lossless":true,"manifest_id":"m-other","supersedes":null}'),
    ],
)
def test_an_edited_field_is_named(engine: Engine, log: AuditLog, column: str, value: str | None) -> None:
    fill(log, 12)
    tamper(engine, f"UPDATE audit_events SET {column} = :value WHERE seq = 5", value=value)  # noqa: S608  test SQL
    result = log.verify(page_size=5)
    assert not result.ok
    assert result.problems == ["event 5 was altered: its content does not match its hash"]
    assert result.events_checked == 12


def test_an_unreadable_detail_is_named(engine: Engine, log: AuditLog) -> None:
    fill(log, 6)
    tamper(engine, "UPDATE audit_events SET detail = 'not json' WHERE seq = 2")
    assert log.verify().problems == [
        "event 2 was altered: its content does not match its hash (its detail is unreadable)"
    ]


def test_an_edited_hash_is_told_from_an_edited_content(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    tamper(engine, "UPDATE audit_events SET hash = :h WHERE seq = 5", h="f" * 64)
    assert log.verify(page_size=5).problems == [
        "event 5's hash was altered: it does not match the event's content, whose hash event 6 names"
    ]


def test_an_edited_last_hash_is_told_only_against_a_checkpoint(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    checkpoint = log.head()
    tamper(engine, "UPDATE audit_events SET hash = :h WHERE seq = 12", h="e" * 64)
    assert log.verify().problems == ["event 12 was altered: its content does not match its hash"]
    assert log.verify(expected_head=checkpoint).problems == [
        "event 12's hash was altered: it does not match the event's content, whose hash the checkpoint names"
    ]


def test_an_edited_prev_hash_is_named(engine: Engine, log: AuditLog) -> None:
    fill(log, 6)
    tamper(engine, "UPDATE audit_events SET prev_hash = :h WHERE seq = 1", h="1" * 64)
    tamper(engine, "UPDATE audit_events SET prev_hash = :h WHERE seq = 4", h=stored_hash(engine, 1))
    assert log.verify().problems == [
        f"event 1 does not start the log: its prev_hash is {NOT_IN_LOG}, not 64 zeros",
        "event 1 was altered: its content does not match its hash",
        "event 4 does not follow event 3: its prev_hash is the hash of event 1",
        "event 4 was altered: its content does not match its hash",
    ]


def test_a_rewritten_event_with_a_recomputed_hash_breaks_the_link_after_it(engine: Engine, log: AuditLog) -> None:
    recorded = fill(log, 6)
    forged = AuditEvent(action="study.read", actor="institution:OTHER", national_key="nk-a")
    content = {
        "seq": 3,
        "at": recorded[2].at,
        "action": forged.action,
        "actor": forged.actor,
        "outcome": forged.outcome,
        "national_key": forged.national_key,
        "object": forged.object,
        "purpose": forged.purpose,
        "actor_address": forged.actor_address,
        "detail": {},
        "prev_hash": recorded[2].prev_hash,
    }
    forged_hash = audit.event_hash(content)
    tamper(
        engine,
        "UPDATE audit_events SET actor = :actor, object = '', purpose = '', actor_address = '', detail = '{}', "
        "hash = :h WHERE seq = 3",
        actor=forged.actor,
        h=forged_hash,
    )
    assert log.verify().problems == [f"event 4 does not follow event 3: its prev_hash is {NOT_IN_LOG}"]


def test_a_removed_event_is_named(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    tamper(engine, "DELETE FROM audit_events WHERE seq = 7")
    result = log.verify(page_size=5)
    assert result.problems == ["event 7 is missing (seq jumps from 6 to 8)"]
    assert result.events_checked == 11


def test_removed_events_are_named_as_a_range(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    tamper(engine, "DELETE FROM audit_events WHERE seq IN (7, 8, 9)")
    assert log.verify().problems == ["events 7 to 9 are missing (seq jumps from 6 to 10)"]


def test_a_removed_first_event_is_named(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    tamper(engine, "DELETE FROM audit_events WHERE seq = 1")
    assert log.verify().problems == ["event 1 is missing (the log starts at event 2)"]
    tamper(engine, "DELETE FROM audit_events WHERE seq = 2")
    assert log.verify().problems == ["events 1 to 2 are missing (the log starts at event 3)"]


def test_swapped_events_are_named(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    tamper(engine, "UPDATE audit_events SET seq = -1 WHERE seq = 9")
    tamper(engine, "UPDATE audit_events SET seq = 9 WHERE seq = 10")
    tamper(engine, "UPDATE audit_events SET seq = 10 WHERE seq = -1")
    result = log.verify(page_size=5)
    assert result.problems == [
        "event 9 does not follow event 8: its prev_hash is the hash of event 10",
        "event 9 was renumbered: it was recorded as event 10",
        "event 10 does not follow event 9: its prev_hash is the hash of event 8",
        "event 10 was renumbered: it was recorded as event 9",
        "event 11 does not follow event 10: its prev_hash is the hash of event 9",
    ]


def test_events_renumbered_to_hide_a_removal_are_named(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    checkpoint = log.head()
    tamper(engine, "DELETE FROM audit_events WHERE seq = 7")
    for seq in range(8, 13):
        tamper(engine, "UPDATE audit_events SET seq = :new WHERE seq = :old", new=seq - 1, old=seq)
    result = log.verify(page_size=5)
    assert result.problems == [
        f"event 7 does not follow event 6: its prev_hash is {NOT_IN_LOG}",
        *[f"event {seq} was renumbered: it was recorded as event {seq + 1}" for seq in range(7, 12)],
    ]
    assert not any("missing" in problem for problem in result.problems)
    assert (
        log.verify(expected_head=checkpoint).problems[-1] == "the log ends at event 11 but a checkpoint names event 12"
    )


def test_a_truncated_log_is_seen_only_against_a_checkpoint(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    checkpoint = log.head()
    tamper(engine, "DELETE FROM audit_events WHERE seq > 9")
    alone = log.verify()
    assert alone.ok  # the shorter chain is a valid chain: the limit the module docstring states
    assert alone.head_seq == 9
    result = log.verify(expected_head=checkpoint)
    assert not result.ok
    assert result.problems == ["the log ends at event 9 but a checkpoint names event 12"]


def test_a_truncated_and_regrown_log_is_seen_against_a_checkpoint(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    checkpoint = log.head()
    tamper(engine, "DELETE FROM audit_events WHERE seq > 9")
    fill(log, 5)
    assert log.head()[0] == 14
    assert log.verify().ok
    problems = log.verify(expected_head=checkpoint).problems
    assert len(problems) == 1
    assert problems[0].startswith(
        f"event 12 does not match the checkpoint: its hash is {stored_hash(engine, 12)}, "
        f"the checkpoint names {checkpoint[1]}"
    )


def test_a_checkpoint_on_an_empty_log_is_seen(log: AuditLog) -> None:
    assert log.verify(expected_head=(3, "a" * 64)).problems == [
        "the log ends at event 0 but a checkpoint names event 3"
    ]


def test_problems_beyond_the_limit_are_counted(engine: Engine, log: AuditLog) -> None:
    fill(log, 12)
    tamper(engine, "UPDATE audit_events SET purpose = 'research'")
    result = log.verify(max_problems=3)
    assert result.problems == [
        "event 1 was altered: its content does not match its hash",
        "event 2 was altered: its content does not match its hash",
        "event 3 was altered: its content does not match its hash",
        "... and 9 more problems",
    ]
    assert not result.ok


# -- concurrency ----------------------------------------------------------------------


def run_writers(writers: int, each: int, record: Callable[[int], RecordedEvent]) -> list[RecordedEvent]:
    start = threading.Barrier(writers)
    results: list[RecordedEvent] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def work(writer: int) -> None:
        try:
            start.wait()
            for i in range(each):
                recorded = record(writer * 1000 + i)
                with guard:
                    results.append(recorded)
        except BaseException as exc:  # noqa: BLE001  reported by the main thread
            with guard:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return results


def assert_one_chain(log: AuditLog, results: list[RecordedEvent], total: int) -> None:
    by_seq = {r.seq: r for r in results}
    assert sorted(by_seq) == list(range(1, total + 1))  # contiguous, none reused
    for seq in range(2, total + 1):
        assert by_seq[seq].prev_hash == by_seq[seq - 1].hash  # no fork
    result = log.verify(page_size=7)
    assert result.ok, result.problems
    assert (result.events_checked, result.head_seq, result.head_hash) == (total, total, by_seq[total].hash)


def test_concurrent_writers_make_one_chain(log: AuditLog) -> None:
    results = run_writers(6, 15, lambda i: log.record(read_event(i)))
    assert_one_chain(log, results, 90)


def test_concurrent_writers_in_their_own_transactions_make_one_chain(engine: Engine, log: AuditLog) -> None:
    def record(i: int) -> RecordedEvent:
        if i % 2:
            return log.record(read_event(i))
        with engine.begin() as connection:
            return log.record(read_event(i), connection=connection)

    results = run_writers(4, 12, record)
    assert_one_chain(log, results, 48)


def test_concurrent_writers_without_the_lock_still_make_one_chain(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database without a lock to take relies on the seq primary key and the retries.
    monkeypatch.setattr(audit_log, "_lock_for_append", lambda _connection: None)
    results = run_writers(4, 10, lambda i: log.record(read_event(i)))
    assert_one_chain(log, results, 40)


@pytest.mark.scale
def test_concurrent_writers_make_one_chain_on_postgresql(postgres_engine: Engine) -> None:
    log = AuditLog(postgres_engine)

    def record(i: int) -> RecordedEvent:
        if i % 2:
            return log.record(read_event(i))
        with postgres_engine.begin() as connection:
            return log.record(read_event(i), connection=connection)

    results = run_writers(6, 10, record)
    assert_one_chain(log, results, 60)
    tamper(postgres_engine, "DELETE FROM audit_events WHERE seq = 30")
    assert log.verify().problems == ["event 30 is missing (seq jumps from 29 to 31)"]
