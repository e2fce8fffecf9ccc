"""Ready-to-run definitions of the archived tables for query engines (``archiver cold NAME schema``).

- ``duckdb``: ``CREATE SCHEMA`` + ``CREATE OR REPLACE VIEW <schema>.<table>`` over exactly the
  current files (``read_parquet([...], hive_partitioning = true, union_by_name = true)``);
- ``athena``: ``CREATE EXTERNAL TABLE ... PARTITIONED BY (<key> date) STORED AS PARQUET LOCATION``
  with the matching Hive types, then ``MSCK REPAIR TABLE`` to load the partitions;
- ``spark``: a PySpark ``spark.read.schema(<DDL>)`` of the table's directory;
- ``json``: the same facts as a document (columns with PostgreSQL and Arrow types, files).

Types engines cannot read (UUID for Spark, UUID and TIME for Athena/Glue) are named in a comment
that points at the portable profile.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from .lake import LakeTable

FORMATS = ("duckdb", "athena", "spark", "json")


def render(tables: list[LakeTable], form: str) -> str:
    renderer: Callable[[list[LakeTable]], str] = {"duckdb": duckdb, "athena": athena, "spark": spark,
                                                  "json": as_json}[form]
    return renderer(tables)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quoted(name: str, quote: str = '"') -> str:
    return quote + name.replace(quote, quote * 2) + quote


def _header(table: LakeTable) -> str:
    key = f"partitioned by {table.partition_key}= (one directory per UTC day)" if table.partition_key else (
        f"{table.earlier_layout} archive(s) in an earlier layout: run `archiver archive NAME --migrate-layout`")
    return f"{table.table} ({table.database}): {len(table.files)} file(s), {table.rows:,} rows; {key}"


# -- DuckDB -------------------------------------------------------------------------------------


def duckdb(tables: list[LakeTable]) -> str:
    lines = ["-- DuckDB: the current files of each archived table (S3 needs httpfs and credentials:",
             "-- INSTALL httpfs; LOAD httpfs; CREATE SECRET (TYPE s3, PROVIDER credential_chain);)"]
    schemas = sorted({table.schema_name for table in tables})
    lines += [f"CREATE SCHEMA IF NOT EXISTS {_quoted(name)};" for name in schemas]
    for table in tables:
        lines.append(f"-- {_header(table)}")
        if not table.files:
            lines.append(f"-- no current files for {table.table}")
            continue
        files = ",\n    ".join(_sql_text(item.url) for item in table.files)
        lines.append(f"CREATE OR REPLACE VIEW {_quoted(table.schema_name)}.{_quoted(table.name)} AS\n"
                     f"  SELECT * FROM read_parquet([\n    {files}\n  ], hive_partitioning = true, "
                     "union_by_name = true);")
    return "\n".join(lines)


# -- Athena / Glue (Hive DDL) ---------------------------------------------------------------------


def _hive_type(data_type: pa.DataType, problems: list[str], name: str) -> str:
    if isinstance(data_type, pa.BaseExtensionType):
        if data_type.extension_name == "arrow.uuid":
            problems.append(f"{name}: UUID has no Athena/Glue type (read as binary)")
            return "binary"
        return _hive_type(data_type.storage_type, problems, name)
    if pa.types.is_dictionary(data_type):
        return _hive_type(data_type.value_type, problems, name)
    if pa.types.is_list(data_type):
        return f"array<{_hive_type(data_type.value_type, problems, name)}>"
    if pa.types.is_struct(data_type):
        fields = ",".join(f"{item.name}:{_hive_type(item.type, problems, name)}" for item in data_type)
        return f"struct<{fields}>"
    if pa.types.is_decimal(data_type):
        return f"decimal({data_type.precision},{data_type.scale})"
    if pa.types.is_time(data_type):
        problems.append(f"{name}: TIME has no Athena/Glue type (read as bigint microseconds)")
        return "bigint"
    simple = {"bool": "boolean", "int8": "tinyint", "int16": "smallint", "int32": "int", "int64": "bigint",
              "float": "float", "double": "double", "string": "string", "large_string": "string",
              "binary": "binary", "large_binary": "binary", "date32[day]": "date"}
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    return simple.get(str(data_type), "string")


def athena(tables: list[LakeTable]) -> str:
    lines = ["-- Athena / Glue: one external table per archived table; MSCK REPAIR TABLE loads the partitions",
             "-- (re-run it after archive runs, or use partition projection on the partition key)."]
    for table in tables:
        lines.append(f"-- {_header(table)}")
        if table.schema is None or table.partition_key is None:
            lines.append("-- skipped: " + ("no current files" if table.schema is None else "not in the current layout"))
            continue
        problems: list[str] = []
        columns = ",\n".join(f"  {_quoted(item.name, '`')} {_hive_type(item.type, problems, item.name)}"
                             for item in table.schema)
        lines += [f"-- not portable: {problem}; archive with parquet: {{profile: portable}}" for problem in problems]
        name = _quoted(f"{table.schema_name}_{table.name}", "`")
        lines.append(f"CREATE EXTERNAL TABLE IF NOT EXISTS {name} (\n{columns}\n)\n"
                     f"PARTITIONED BY ({_quoted(table.partition_key, '`')} date)\nSTORED AS PARQUET\n"
                     f"LOCATION {_sql_text(_s3(table.location))};\nMSCK REPAIR TABLE {name};")
    return "\n".join(lines)


def _s3(location: str) -> str:
    return location if location.endswith("/") else location + "/"


# -- Spark -------------------------------------------------------------------------------------


def _spark_type(data_type: pa.DataType, problems: list[str], name: str) -> str:
    if isinstance(data_type, pa.BaseExtensionType):
        if data_type.extension_name == "arrow.uuid":
            problems.append(f"{name}: Spark rejects Parquet's UUID type (Illegal Parquet type: FIXED_LEN_BYTE_ARRAY "
                            "(UUID))")
            return "BINARY"
        return _spark_type(data_type.storage_type, problems, name)
    if pa.types.is_dictionary(data_type):
        return _spark_type(data_type.value_type, problems, name)
    if pa.types.is_list(data_type):
        return f"ARRAY<{_spark_type(data_type.value_type, problems, name)}>"
    if pa.types.is_struct(data_type):
        return "STRUCT<" + ", ".join(f"{item.name}: {_spark_type(item.type, problems, name)}" for item in data_type) + ">"
    if pa.types.is_decimal(data_type):
        return f"DECIMAL({data_type.precision},{data_type.scale})"
    if pa.types.is_time(data_type):
        problems.append(f"{name}: TIME needs Spark 4.1 or later")
        return "TIME"
    if pa.types.is_timestamp(data_type):
        return "TIMESTAMP" if data_type.tz else "TIMESTAMP_NTZ"
    simple = {"bool": "BOOLEAN", "int8": "TINYINT", "int16": "SMALLINT", "int32": "INT", "int64": "BIGINT",
              "float": "FLOAT", "double": "DOUBLE", "binary": "BINARY", "large_binary": "BINARY",
              "date32[day]": "DATE"}
    return simple.get(str(data_type), "STRING")


def spark(tables: list[LakeTable]) -> str:
    lines = ["# PySpark: each archived table's directory, its partition key a DATE column (s3a:// for S3)"]
    for table in tables:
        lines.append(f"# {_header(table)}")
        if table.schema is None or table.partition_key is None:
            lines.append("# skipped: " + ("no current files" if table.schema is None else "not in the current layout"))
            continue
        problems: list[str] = []
        columns = [f"`{item.name}` {_spark_type(item.type, problems, item.name)}" for item in table.schema]
        columns.append(f"`{table.partition_key}` DATE")
        lines += [f"# not portable: {problem}; archive with parquet: {{profile: portable}}" for problem in problems]
        location = table.location.replace("s3://", "s3a://", 1)
        variable = f"{table.schema_name}_{table.name}".replace(".", "_")
        lines.append(f"{variable} = spark.read.schema({json.dumps(', '.join(columns))}).parquet({json.dumps(location)})")
    return "\n".join(lines)


# -- JSON --------------------------------------------------------------------------------------


def as_json(tables: list[LakeTable]) -> str:
    return json.dumps({"tables": [_table_json(table) for table in tables]}, indent=2)


def _table_json(table: LakeTable) -> dict[str, Any]:
    columns = [{"name": item.name, "arrow_type": str(item.type), "pg_type": table.pg_types.get(item.name)}
               for item in table.schema or []]
    return {"database": table.database, "table": table.table, "location": table.location,
            "partition_key": table.partition_key, "profile": table.profile, "rows": table.rows,
            "earlier_layout_archives": table.earlier_layout, "columns": columns,
            "files": [item.url for item in table.files]}
