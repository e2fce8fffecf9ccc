"""Content checksums v2: a row's columns are hashed by name, so pg_dump's column reordering cannot fail a drill."""

from __future__ import annotations

import json
from pathlib import Path

from archiver.pg.connect import execute, query
from archiver.pg.scratch import LocalPostgres
from archiver.pg.stats import CHECKSUM_V1, CHECKSUM_V2
from archiver.pg.target import content_stats
from archiver.storage.base import Store
from tests.backup_helpers import read_manifest
from tests.helpers import run_cli
from tests.restore_helpers import add_verify_section, backed_up, fresh_name, restore

# A child created before its parent gains a column has that column last; pg_dump re-creates the
# child with the inherited columns first (id, label, added, then its own), as in the regression
# database's b_star ... f_star.
INHERITANCE = """
CREATE TABLE public.parent (id int, label text);
CREATE TABLE public.child_hashed (amount numeric) INHERITS (public.parent);
CREATE TABLE public.child_text (doc json) INHERITS (public.parent);
ALTER TABLE public.parent ADD COLUMN added date;
INSERT INTO public.parent VALUES (0, 'parent', DATE '2026-01-01');
INSERT INTO public.child_hashed (id, label, amount, added)
    SELECT i, 'h' || i, i / 3.0, DATE '2026-01-01' + i FROM generate_series(1, 50) AS i;
INSERT INTO public.child_text (id, label, doc, added)
    SELECT i, 't' || i, json_build_object('n', i), DATE '2026-02-01' + i FROM generate_series(1, 40) AS i;
-- the regression database's "star" family (multiple inheritance, name and polygon columns), with a
-- column added to the root afterwards
CREATE TABLE public.a_star (class char, a int4);
CREATE TABLE public.b_star (b text) INHERITS (public.a_star);
CREATE TABLE public.c_star (c name) INHERITS (public.a_star);
CREATE TABLE public.d_star (d float8) INHERITS (public.b_star, public.c_star);
CREATE TABLE public.e_star (e int2) INHERITS (public.c_star);
CREATE TABLE public.f_star (f polygon) INHERITS (public.e_star);
ALTER TABLE public.a_star ADD COLUMN z int4;
INSERT INTO public.a_star VALUES ('a', 1, 10), ('a', NULL, NULL);
INSERT INTO public.b_star (class, a, b, z) VALUES ('b', 3, 'mumble', 30), ('b', NULL, 'bumble', NULL);
INSERT INTO public.c_star (class, a, c, z) VALUES ('c', 5, 'hi', 50);
INSERT INTO public.d_star (class, a, b, c, d, z) VALUES ('d', 7, 'grumble', 'hi sister', 0.0, 70), ('d', 8, NULL, NULL, 1.5, NULL);
INSERT INTO public.e_star (class, a, c, e, z) VALUES ('e', 15, 'hi carol', -1, 150);
INSERT INTO public.f_star (class, a, c, e, f, z) VALUES ('f', 19, 'hi claire', -5, '(1,3),(2,4)', 190), ('f', NULL, NULL, NULL, NULL, NULL);
"""


def column_order(dsn: str, table: str) -> list[str]:
    return [name for (name,) in query(dsn, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                              "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,))]


def stats(dsn: str, method: str) -> dict[str, tuple[int, str | None, str | None]]:
    return {s.table.qualified_name: (s.rows, s.checksum, s.row_hash)
            for s in content_stats(dsn, method=method).tables}


def test_inheritance_children_that_pg_dump_reorders_pass_their_drill_and_restore_with_equal_checksums(
        tmp_path: Path, database: str, file_store: Store, target_server: LocalPostgres) -> None:
    execute(database, INHERITANCE)
    path, backup_id = backed_up(tmp_path, database, file_store, None)
    document = read_manifest(file_store, backup_id)
    assert document["content"]["method"] == CHECKSUM_V2 == "hash64-sum/v2"
    recorded = {f"{t['schema']}.{t['name']}": (t["rows"], t["checksum"], t["row_hash"])
                for t in document["content"]["tables"]}
    assert recorded == stats(database, CHECKSUM_V2)
    assert recorded["public.child_hashed"][2] == "record" and recorded["public.child_text"][2] == "text"

    add_verify_section(path, scratch={"work_dir": "/var/tmp"}, amcheck=False)
    result = run_cli("--policies", str(path.parent), "verify", "app", "--json")
    assert result.code == 0, result.output
    drill = json.loads(result.stdout)
    assert drill["result"] == "passed" and drill["failed"] == []
    tables = {c["name"]: c for c in drill["checks"] if c["kind"] == "table"}
    for name, (rows, checksum, _) in recorded.items():
        assert tables[name]["status"] == "pass" and tables[name]["actual"] == {"rows": rows, "checksum": checksum}

    name = fresh_name()
    assert restore(path, target_server.dsn(name), "--yes", "--checksums").code == 0
    restored = target_server.dsn(name)
    assert column_order(database, "public.child_hashed") == ["id", "label", "amount", "added"]
    assert column_order(restored, "public.child_hashed") == ["id", "label", "added", "amount"]
    assert column_order(restored, "public.child_text") == ["id", "label", "added", "doc"]
    assert column_order(database, "public.d_star") != column_order(restored, "public.d_star")
    assert stats(restored, CHECKSUM_V2) == stats(database, CHECKSUM_V2)
    # the same rows in another column order: v1 (column positions) tells them apart, which failed every drill
    before, after = stats(database, CHECKSUM_V1), stats(restored, CHECKSUM_V1)
    assert before["public.parent"] == after["public.parent"]
    for child in ("public.child_hashed", "public.child_text", "public.d_star", "public.f_star"):
        assert before[child][0] == after[child][0] and before[child][1] != after[child][1]


def test_v2_checksums_see_every_value_and_not_the_column_order(database: str) -> None:
    execute(database, "CREATE TABLE public.ab (a int, b text); CREATE TABLE public.ba (b text, a int);"
                         "INSERT INTO public.ab VALUES (1, 'x'), (2, 'y'); INSERT INTO public.ba VALUES ('x', 1), ('y', 2)")
    first = stats(database, CHECKSUM_V2)
    assert first["public.ab"] == first["public.ba"]
    execute(database, "UPDATE public.ba SET b = 'z' WHERE a = 2")
    assert stats(database, CHECKSUM_V2)["public.ba"][1] != first["public.ba"][1]
    v1 = stats(database, CHECKSUM_V1)
    assert v1["public.ab"][1] != first["public.ab"][1]  # the method is part of the checksum: never mixed up
