"""The database-properties rules without a server: statements, quoting, comparisons (archiver.pg.properties)."""

from __future__ import annotations

import pytest

from archiver.pg.properties import (
    DatabaseProperties,
    Grant,
    Setting,
    create_options,
    differences,
    locale_differences,
    plan_properties,
    provider_problem,
    setting_statement,
    split_list,
)

SHOP = DatabaseProperties(
    encoding="LATIN1", collate="C", ctype="C", owner="shop_owner",
    settings=(Setting("search_path", 'app, "$user", public'), Setting("TimeZone", "UTC"),
              Setting("app.tenant", "acme's"), Setting("work_mem", "8MB", role="reader"),
              Setting("timescaledb.restoring", "on")),
    comment="the shop", acl=(Grant("shop_owner", "CONNECT"), Grant("reader", "CONNECT"),
                             Grant(None, "TEMPORARY"), Grant("gone", "CREATE", grantable=True)))


@pytest.mark.parametrize("stored, items", [
    ('app, "$user", public', ["app", "$user", "public"]),
    ('"with, comma", "quo""te"', ["with, comma", 'quo"te']),
    ('""', [""]),
    ("plain", ["plain"]),
])
def test_list_settings_split_as_the_server_stores_them(stored: str, items: list[str]) -> None:
    assert split_list(stored) == items


def test_setting_statements_quote_names_values_and_list_elements() -> None:
    assert setting_statement("shop", Setting("search_path", 'app, "$user", public')) == \
        """ALTER DATABASE "shop" SET "search_path" TO 'app', '$user', 'public'"""
    assert setting_statement("Shop DB", Setting("app.tenant", "acme's")) == \
        """ALTER DATABASE "Shop DB" SET "app"."tenant" TO 'acme''s'"""
    assert setting_statement("shop", Setting("work_mem", "8MB", role="Reader")) == \
        """ALTER ROLE "Reader" IN DATABASE "shop" SET "work_mem" TO '8MB'"""


def test_a_plan_skips_what_the_target_cannot_take_and_says_why() -> None:
    plan = plan_properties(SHOP, "restored", roles={"postgres", "shop_owner"}, superuser=True,
                           restoring_role="postgres")
    assert plan.statements == [
        'ALTER DATABASE "restored" OWNER TO "shop_owner"',
        """ALTER DATABASE "restored" SET "search_path" TO 'app', '$user', 'public'""",
        """ALTER DATABASE "restored" SET "TimeZone" TO 'UTC'""",
        """ALTER DATABASE "restored" SET "app"."tenant" TO 'acme''s'""",
        """COMMENT ON DATABASE "restored" IS 'the shop'""",
        'REVOKE ALL ON DATABASE "restored" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "restored" FROM "shop_owner"',
        'GRANT CONNECT ON DATABASE "restored" TO "shop_owner"',
        'GRANT TEMPORARY ON DATABASE "restored" TO PUBLIC',
    ]
    assert plan.skipped == [
        "setting for role reader: work_mem = 8MB: no role reader on the target",
        "setting timescaledb.restoring = on: TimescaleDB's own restore flag, set and reset by "
        "timescaledb_pre_restore()/post_restore()",
        "privilege CONNECT to reader: no role reader on the target",
        "privilege CREATE to gone WITH GRANT OPTION: no role gone on the target",
    ]


def test_only_a_superuser_gives_the_database_to_its_old_owner() -> None:
    plan = plan_properties(SHOP, "restored", roles={"app", "shop_owner", "reader", "gone"}, superuser=False,
                           restoring_role="app")
    assert not any("OWNER TO" in statement for statement in plan.statements)
    assert 'REVOKE ALL ON DATABASE "restored" FROM "app"' in plan.statements  # the owner it has
    assert plan.skipped[0] == "owner shop_owner: only a superuser may give the database away; it is owned by app"


def test_create_options_follow_the_target_version() -> None:
    libc = DatabaseProperties("LATIN1", "C", "C")
    assert create_options(libc, 140000) == "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'"
    assert create_options(libc, 150000) == "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' LOCALE_PROVIDER libc"
    icu = DatabaseProperties("UTF8", "en_US.UTF-8", "en_US.UTF-8", provider="icu", locale="de-AT",
                             icu_rules="&a < b", connection_limit=20)
    assert create_options(icu, 150000).endswith("LOCALE_PROVIDER icu ICU_LOCALE 'de-AT' CONNECTION LIMIT 20")
    assert "ICU_RULES '&a < b'" in create_options(icu, 160000)
    assert provider_problem(icu, 140000) == ("the source database uses the icu locale provider, which PostgreSQL 14 "
                                             "cannot create (PostgreSQL 15 or newer can)")
    assert provider_problem(DatabaseProperties("UTF8", "C", "C", provider="builtin", locale="C.UTF-8"), 160000)
    assert provider_problem(icu, 150000) is None


def test_locales_compare_by_meaning_not_spelling() -> None:
    source = DatabaseProperties("UTF8", "en_US.UTF-8", "en_US.UTF-8")
    assert locale_differences(source, DatabaseProperties("utf8", "en_US.utf8", "en_US.utf8")) == []
    assert locale_differences(source, DatabaseProperties("LATIN1", "C", "en_US.utf8")) == [
        "encoding: source UTF8, target LATIN1", "LC_COLLATE: source en_US.UTF-8, target C"]


def test_differences_leave_out_what_a_restore_skips_on_purpose() -> None:
    restored = DatabaseProperties(
        encoding="LATIN1", collate="C", ctype="C", owner="shop_owner",
        settings=(Setting("search_path", 'app, "$user", public'), Setting("TimeZone", "UTC"),
                  Setting("app.tenant", "acme's")),
        comment="the shop", acl=(Grant("shop_owner", "CONNECT"), Grant(None, "TEMPORARY")))
    assert differences(SHOP, restored, roles={"postgres", "shop_owner"}) == []
    changed = DatabaseProperties("LATIN1", "C", "C", owner="postgres", settings=restored.settings[:2], comment=None,
                                 acl=(Grant("postgres", "CONNECT"),))
    assert differences(SHOP, changed, roles={"postgres", "shop_owner"}, restoring_role="postgres") == [
        "owner: source shop_owner, restored postgres",
        "setting app.tenant: source \"acme's\", restored None",
        "comment: source 'the shop', restored None",
        "privileges: source CONNECT to <owner>, TEMPORARY to PUBLIC, restored CONNECT to <owner>",
    ]


def test_properties_round_trip_through_the_manifest() -> None:
    assert DatabaseProperties.from_json(SHOP.to_json()) == SHOP
    assert DatabaseProperties.from_json({**SHOP.to_json(), "acl": None}).acl is None
