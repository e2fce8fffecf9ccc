"""The PostgreSQL -> Arrow type mapping is decided from the catalog alone."""

from __future__ import annotations

import pyarrow as pa
import pytest

from archiver.coldtier import typemap as tm
from archiver.errors import UsageError


def column(name: str, typname: str, pg_type: str | None = None, *, typmod: int = -1, typtype: str = "b",
           category: str = "U", elem: str | None = None, elem_typtype: str = "b", domain: bool = False) -> tm.CatalogColumn:
    return tm.CatalogColumn(name=name, pg_type=pg_type or typname, base_type=pg_type or typname, typname=typname,
                            typtype=typtype, category="A" if elem else category, typmod=typmod, is_domain=domain,
                            elem_typname=elem, elem_typtype=elem_typtype if elem else None)


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


@pytest.mark.parametrize("typname, expected, kind", [
    ("bool", pa.bool_(), tm.BOOL), ("int2", pa.int16(), tm.INT), ("int4", pa.int32(), tm.INT),
    ("int8", pa.int64(), tm.INT), ("float4", pa.float32(), tm.FLOAT), ("float8", pa.float64(), tm.FLOAT),
    ("timestamptz", pa.timestamp("us", tz="UTC"), tm.TIMESTAMP), ("timestamp", pa.timestamp("us"), tm.TIMESTAMP),
    ("date", pa.date32(), tm.DATE), ("time", pa.time64("us"), tm.TIME), ("uuid", pa.uuid(), tm.UUID),
    ("jsonb", pa.json_(pa.string()), tm.TEXT), ("json", pa.json_(pa.string()), tm.TEXT), ("bytea", pa.binary(), tm.BINARY),
    ("text", pa.string(), tm.TEXT), ("varchar", pa.string(), tm.TEXT), ("bpchar", pa.string(), tm.TEXT),
    ("interval", tm.INTERVAL_TYPE, tm.INTERVAL),
])
def test_scalar_types_map_exactly(typname: str, expected: pa.DataType, kind: str) -> None:
    plan = tm.plan_column(column("c", typname))
    assert (plan.arrow_type, plan.kind, plan.text_form) == (expected, kind, False)
    assert plan.select_sql == '"c"'
    assert plan.field.metadata == {b"pg_type": typname.encode()}


def test_numeric_with_precision_up_to_38_is_a_decimal_beyond_is_text() -> None:
    small = tm.plan_column(column("n", "numeric", "numeric(12,3)", typmod=numeric_typmod(12, 3)))
    assert small.arrow_type == pa.decimal128(12, 3) and small.kind == tm.DECIMAL and small.select_sql == '("n")::text'
    edge = tm.plan_column(column("n", "numeric", "numeric(38,0)", typmod=numeric_typmod(38, 0)))
    assert edge.arrow_type == pa.decimal128(38, 0)
    for pg_type, typmod in (("numeric(39,2)", numeric_typmod(39, 2)), ("numeric", -1),
                            ("numeric(5,-2)", numeric_typmod(5, -2))):
        plan = tm.plan_column(column("n", "numeric", pg_type, typmod=typmod))
        assert (plan.arrow_type, plan.kind, plan.text_form) == (pa.string(), tm.NUMERIC_TEXT, True)
        assert plan.select_sql == '("n")::text'
        assert plan.field.metadata == {b"pg_type": pg_type.encode(), b"pg_text_form": b"true"}


def test_numeric_typmod_decoding_handles_negative_scales() -> None:
    assert tm.numeric_precision_scale(numeric_typmod(12, 3)) == (12, 3)
    assert tm.numeric_precision_scale(numeric_typmod(5, -2)) == (5, -2)
    assert tm.numeric_precision_scale(-1) is None


def test_enums_become_dictionaries_and_unknown_types_their_text_form() -> None:
    mood = tm.plan_column(column("m", "mood", typtype="e"))
    # an enum's owner could CREATE CAST (mood AS text): its text comes from its output function
    assert mood.arrow_type == pa.dictionary(pa.int32(), pa.string())
    assert mood.length_sql == 'CASE WHEN pg_catalog.num_nulls("m") = 0 THEN pg_catalog.concat("m") END'
    for typname in ("inet", "point", "money", "timetz", "tsvector"):
        plan = tm.plan_column(column("x", typname, typtype="b"))
        assert plan.arrow_type == pa.string() and plan.text_form and plan.select_sql == '("x")::text'
    for typname, typtype in (("int4range", "r"), ("address", "c")):
        plan = tm.plan_column(column("x", typname, typtype=typtype))
        assert plan.arrow_type == pa.string() and plan.text_form
        assert plan.select_sql == 'CASE WHEN pg_catalog.num_nulls("x") = 0 THEN pg_catalog.concat("x") END'


def test_arrays_are_lists_of_their_element_and_numeric_elements_are_read_as_text() -> None:
    tags = tm.plan_column(column("tags", "_text", "text[]", elem="text"))
    assert tags.arrow_type == pa.list_(pa.string()) and tags.kind == tm.LIST
    levels = tm.plan_column(column("levels", "_numeric", "numeric(6,2)[]", typmod=numeric_typmod(6, 2), elem="numeric"))
    assert levels.arrow_type == pa.list_(pa.decimal128(6, 2)) and levels.select_sql == '("levels")::text[]'
    moods = tm.plan_column(column("moods", "_mood", "mood[]", elem="mood", elem_typtype="e"))
    assert moods.arrow_type == pa.list_(pa.dictionary(pa.int32(), pa.string()))
    composite = tm.plan_column(column("pairs", "_pair", "pair[]", elem="pair", elem_typtype="c"))
    assert composite.text_form and composite.arrow_type == pa.string()


def test_domains_are_read_as_their_base_type() -> None:
    amount = tm.CatalogColumn(name="amount", pg_type="positive_amount", base_type="numeric(10,2)", typname="numeric",
                              typtype="b", category="N", typmod=numeric_typmod(10, 2), is_domain=True)
    plan = tm.plan_column(amount)
    assert plan.arrow_type == pa.decimal128(10, 2) and plan.select_sql == '("amount"::numeric(10,2))::text'
    assert plan.field.metadata[b"pg_type"] == b"positive_amount"


def test_text_columns_override_and_bad_names_are_refused() -> None:
    columns = [column("time", "timestamptz"), column("n", "numeric", "numeric(10,2)", typmod=numeric_typmod(10, 2))]
    plans = tm.plan_columns(columns, time_column="time", text_columns=["n"], table="t")
    assert plans[1].text_form and plans[1].arrow_type == pa.string()
    with pytest.raises(UsageError, match="text_columns names columns that do not exist: nope"):
        tm.plan_columns(columns, time_column="time", text_columns=["nope"], table="t")
    with pytest.raises(UsageError, match="cannot be exported as text"):
        tm.plan_columns(columns, time_column="time", text_columns=["time"], table="t")


def test_identifiers_are_quoted_in_the_export_query() -> None:
    plans = [tm.plan_column(column('odd "name"', "int4")), tm.plan_column(column("Mixed", "inet"))]
    assert tm.select_sql(plans, '"public"."t"') == ('SELECT "odd ""name""" AS "odd ""name""", ("Mixed")::text AS '
                                                    '"Mixed" FROM "public"."t"')
