"""Search statements by query shape (pixport.storage.search_sql): built once, values bound."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from pixport.errors import BadQuery
from pixport.storage import search_sql
from pixport.storage.base import Match, Query


def by_patient(patient_id: str, **options: int) -> Query:
    return Query(level="study", matches=[Match("patient_id", "single", patient_id)], **options)


def test_queries_that_differ_only_in_values_share_one_statement() -> None:
    first_shape, first_values = search_sql.bind(by_patient("P1"))
    second_shape, second_values = search_sql.bind(by_patient("P2", limit=10, offset=20))
    assert first_shape == second_shape
    assert search_sql.statement("study", first_shape) is search_sql.statement("study", second_shape)
    assert first_values == {"limit": 1000, "offset": 0, "p0": "P1"}
    assert second_values == {"limit": 10, "offset": 20, "p0": "P2"}


def test_the_statement_carries_no_value() -> None:
    shape, _ = search_sql.bind(by_patient("SECRET-PATIENT-ID"))
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = str(search_sql.statement("study", shape).compile(dialect=dialect))
        assert "SECRET" not in sql
        assert "LIMIT" in sql


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Match("patient_name", "name", "KIM^*"), Match("patient_name", "name", "KIM^*=김^*")),  # 1 vs 2 groups
        (Match("patient_name", "fuzzy", "KIM"), Match("patient_name", "fuzzy", "KIM MINJUN")),  # 1 vs 2 words
        (Match("study_date", "range", ("20240101", "")), Match("study_date", "range", ("", "20240101"))),
        (Match("study_date", "single", "20240101"), Match("study_date", "wildcard", "2024*")),
        (Match("modalities_in_study", "uids", ["CT"]), Match("modalities_in_study", "wildcard", "C*")),
    ],
)
def test_queries_of_another_shape_get_another_statement(first: Match, second: Match) -> None:
    first_shape, _ = search_sql.bind(Query(level="study", matches=[first]))
    second_shape, _ = search_sql.bind(Query(level="study", matches=[second]))
    assert first_shape != second_shape
    assert search_sql.statement("study", first_shape) is not search_sql.statement("study", second_shape)


def test_values_are_bound_in_the_order_the_conditions_use_them() -> None:
    query = Query(
        level="instance",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        matches=[
            Match("patient_name", "name", "KIM^*=김^*"),
            Match("study_time", "range", ("0800", "12")),
            Match("instance_number", "uids", ["1", "2"]),
            Match("sop_class_uid", "wildcard", "1.2.840.*"),
        ],
    )
    shape, values = search_sql.bind(query)
    assert [test for test, _, _ in shape] == ["equal", "equal", "any_group_like", "at_least", "at_most", "in", "like"]
    assert values == {
        "limit": 1000,
        "offset": 0,
        "p0": "1.2.3",
        "p1": "1.2.3.4",
        "p2": "%=kim^%=%",  # names are matched in their normalized form
        "p3": "%=김^%=%",
        "p4": "0800",
        "p5": "12~",  # a time range's upper end takes every fraction below it
        "p6": [1, 2],
        "p7": "1.2.840.%",
    }
    compiled = search_sql.statement("instance", shape).compile(dialect=sqlite.dialect())
    assert {f"p{n}" for n in range(8)} <= set(compiled.params)


def test_an_attribute_of_a_lower_level_cannot_be_matched() -> None:
    with pytest.raises(BadQuery, match="sop_instance_uid cannot be matched at study level"):
        search_sql.bind(Query(level="study", matches=[Match("sop_instance_uid", "single", "1.2")]))


def test_a_number_attribute_needs_a_number() -> None:
    with pytest.raises(BadQuery, match="series_number must be a number"):
        search_sql.bind(Query(level="series", matches=[Match("series_number", "single", "one")]))


@pytest.mark.parametrize(
    "match",
    [Match("patient_name", "name", "="), Match("patient_name", "fuzzy", " ^ "), Match("study_date", "range", ("", ""))],
)
def test_a_match_without_terms_adds_no_condition(match: Match) -> None:
    shape, values = search_sql.bind(Query(level="study", matches=[match]))
    assert shape == ()
    assert values == {"limit": 1000, "offset": 0}
