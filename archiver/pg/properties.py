"""A database's own properties, which a dump restored into a database archiver creates would lose.

pg_dump writes them as DATABASE PROPERTIES entries that pg_restore runs only with ``--create``,
and ``--create`` cannot be combined with ``--single-transaction``, which every streamed restore
relies on. So a backup records them in its manifest (``database.properties``) and a restore
re-creates them itself: encoding and locale when it creates the database, then, once pg_restore
has committed, the owner, the database-level settings (``ALTER DATABASE ... SET`` and ``ALTER
ROLE ... IN DATABASE ... SET``), the comment and the privileges. This module is pure: it turns
recorded properties into statements and compares two sets of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .connect import connect

if TYPE_CHECKING:
    import psycopg

from .quote import quote_ident, quote_literal

# Settings whose value is a list of names (pg_dump's variable_is_guc_list_quote): each element
# must be given as its own literal, or the whole list becomes one quoted name.
LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries",
                           "shared_preload_libraries", "unix_socket_directories"})
# Settings a restore must not copy, with the reason.
SKIPPED_SETTINGS = {
    "timescaledb.restoring": "TimescaleDB's own restore flag, set and reset by timescaledb_pre_restore()/post_restore()",
}
PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}  # pg_database.datlocprovider
_C_LOCALES = ("c", "posix")


@dataclass(frozen=True)
class Setting:
    name: str
    value: str
    role: str | None = None  # ALTER ROLE role IN DATABASE ...; None: the whole database

    def describe(self) -> str:
        return (f"for role {self.role}: " if self.role else "") + f"{self.name} = {self.value}"

    def key(self) -> tuple[str | None, str]:
        return self.role, self.name.lower()


@dataclass(frozen=True)
class Grant:
    grantee: str | None  # None: PUBLIC
    privilege: str  # CONNECT, CREATE or TEMPORARY
    grantable: bool = False

    def describe(self) -> str:
        return f"{self.privilege} to {self.grantee or 'PUBLIC'}" + (" WITH GRANT OPTION" if self.grantable else "")


@dataclass(frozen=True)
class DatabaseProperties:
    """What ``pg_database``, ``pg_db_role_setting`` and ``pg_shdescription`` say about one database."""

    encoding: str
    collate: str
    ctype: str
    provider: str = "libc"  # libc, icu or builtin
    locale: str | None = None  # the ICU (or builtin) locale
    icu_rules: str | None = None
    owner: str | None = None
    connection_limit: int = -1
    settings: tuple[Setting, ...] = ()
    comment: str | None = None
    acl: tuple[Grant, ...] | None = None  # None: the default privileges (datacl is NULL)

    def to_json(self) -> dict[str, Any]:
        return {"encoding": self.encoding, "collate": self.collate, "ctype": self.ctype, "provider": self.provider,
                "locale": self.locale, "icu_rules": self.icu_rules, "owner": self.owner,
                "connection_limit": self.connection_limit,
                "settings": [{"name": s.name, "value": s.value, "role": s.role} for s in self.settings],
                "comment": self.comment,
                "acl": None if self.acl is None else [{"grantee": g.grantee, "privilege": g.privilege,
                                                       "grantable": g.grantable} for g in self.acl]}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> DatabaseProperties:
        acl = document.get("acl")
        return cls(encoding=str(document["encoding"]), collate=str(document["collate"]), ctype=str(document["ctype"]),
                   provider=str(document.get("provider") or "libc"), locale=document.get("locale"),
                   icu_rules=document.get("icu_rules"), owner=document.get("owner"),
                   connection_limit=int(document.get("connection_limit", -1)),
                   settings=tuple(Setting(str(s["name"]), str(s["value"]), s.get("role"))
                                  for s in document.get("settings", [])),
                   comment=document.get("comment"),
                   acl=None if acl is None else tuple(Grant(g.get("grantee"), str(g["privilege"]),
                                                            bool(g.get("grantable"))) for g in acl))

    def locale_text(self) -> str:
        text = f"encoding {self.encoding}, LC_COLLATE {self.collate}, LC_CTYPE {self.ctype}, provider {self.provider}"
        if self.locale:
            text += f" (locale {self.locale})"
        return text

    def describe(self) -> list[str]:
        """Plan lines: what the source database was, and what a restore re-creates."""
        lines = [self.locale_text() + (f", owner {self.owner}" if self.owner else "")
                 + (f", connection limit {self.connection_limit}" if self.connection_limit >= 0 else "")]
        lines += [f"setting {setting.describe()}" for setting in self.settings]
        if self.comment is not None:
            lines.append(f"comment {self.comment!r}")
        if self.acl is not None:
            lines.append("privileges " + ("; ".join(grant.describe() for grant in self.acl) or "none (all revoked)"))
        return lines


# -- creating the database --------------------------------------------------------------------------

def create_options(properties: DatabaseProperties, server_version_num: int) -> str:
    """The ENCODING/LC_COLLATE/LC_CTYPE/LOCALE_PROVIDER/... clauses of CREATE DATABASE (after TEMPLATE template0)."""
    parts = [f"ENCODING {quote_literal(properties.encoding)}", f"LC_COLLATE {quote_literal(properties.collate)}",
             f"LC_CTYPE {quote_literal(properties.ctype)}"]
    if server_version_num >= 150000:
        parts.append(f"LOCALE_PROVIDER {properties.provider}")
    if properties.provider == "icu" and properties.locale:
        parts.append(f"ICU_LOCALE {quote_literal(properties.locale)}")
        if properties.icu_rules and server_version_num >= 160000:
            parts.append(f"ICU_RULES {quote_literal(properties.icu_rules)}")
    elif properties.provider == "builtin" and properties.locale:
        parts.append(f"BUILTIN_LOCALE {quote_literal(properties.locale)}")
    if properties.connection_limit >= 0:
        parts.append(f"CONNECTION LIMIT {int(properties.connection_limit)}")
    return " ".join(parts)


def provider_problem(properties: DatabaseProperties, server_version_num: int) -> str | None:
    """Why a server of this version cannot create the database's locale provider, or None."""
    needs = {"icu": 150000, "builtin": 170000}.get(properties.provider)
    if needs is not None and server_version_num < needs:
        return (f"the source database uses the {properties.provider} locale provider, which PostgreSQL "
                f"{server_version_num // 10000} cannot create (PostgreSQL {needs // 10000} or newer can)")
    return None


def is_c_locale(name: str) -> bool:
    return name.lower() in _C_LOCALES


def _normal_locale(name: str | None) -> str:
    """``en_US.UTF-8`` and ``en_US.utf8`` name the same locale: compare codesets without case and dashes."""
    if not name:
        return ""
    language, dot, codeset = name.partition(".")
    return language + dot + codeset.lower().replace("-", "").replace("_", "")


def locale_differences(expected: DatabaseProperties, actual: DatabaseProperties) -> list[str]:
    """How an existing database's encoding and locale differ from the source's ("x: source a, target b")."""
    found = []
    for label, want, have in (("encoding", expected.encoding, actual.encoding),
                              ("LC_COLLATE", expected.collate, actual.collate),
                              ("LC_CTYPE", expected.ctype, actual.ctype),
                              ("locale provider", expected.provider, actual.provider)):
        same = want.upper() == have.upper() if label == "encoding" else _normal_locale(want) == _normal_locale(have)
        if not same:
            found.append(f"{label}: source {want}, target {have}")
    if expected.provider != "libc" and _normal_locale(expected.locale) != _normal_locale(actual.locale):
        found.append(f"{expected.provider} locale: source {expected.locale}, target {actual.locale}")
    return found


# -- what a restore runs once pg_restore has committed ---------------------------------------------

def split_list(value: str) -> list[str]:
    """The elements of a list setting as stored (``"$user", public``): unquoted, in order."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(value):
        char = value[index]
        if quoted:
            if char == '"' and value[index + 1:index + 2] == '"':
                current.append('"')
                index += 1
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    items.append("".join(current).strip())
    return items


def setting_value_sql(setting: Setting) -> str:
    if setting.name.lower() in LIST_SETTINGS:
        return ", ".join(quote_literal(item) for item in split_list(setting.value))
    return quote_literal(setting.value)


def setting_statement(database: str, setting: Setting) -> str:
    name = ".".join(quote_ident(part) for part in setting.name.split("."))
    target = f"ALTER ROLE {quote_ident(setting.role)} IN DATABASE" if setting.role else "ALTER DATABASE"
    return f"{target} {quote_ident(database)} SET {name} TO {setting_value_sql(setting)}"


@dataclass
class PropertiesPlan:
    """The statements that give a restored database its source's properties, and what is left out, with why."""

    statements: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"statements": self.statements, "skipped": self.skipped}


def plan_properties(properties: DatabaseProperties, database: str, *, roles: Iterable[str], superuser: bool,
                    restoring_role: str) -> PropertiesPlan:
    """Statements for a database archiver created: owner, settings, comment, privileges (in that order).

    ``roles`` are the roles the target will have (its own and those the restore creates): a
    grant or setting for any other role is left out and reported, as is an owner the restoring
    role may not hand the database to.
    """
    present = set(roles)
    plan = PropertiesPlan()
    owner = restoring_role
    if properties.owner and properties.owner != restoring_role:
        if properties.owner not in present:
            plan.skipped.append(f"owner {properties.owner}: no such role on the target; the database is owned by "
                                f"{restoring_role}")
        elif not superuser:
            plan.skipped.append(f"owner {properties.owner}: only a superuser may give the database away; it is owned "
                                f"by {restoring_role}")
        else:
            plan.statements.append(f"ALTER DATABASE {quote_ident(database)} OWNER TO {quote_ident(properties.owner)}")
            owner = properties.owner
    for setting in properties.settings:
        if setting.name.lower() in SKIPPED_SETTINGS:
            plan.skipped.append(f"setting {setting.describe()}: {SKIPPED_SETTINGS[setting.name.lower()]}")
        elif setting.role and setting.role not in present:
            plan.skipped.append(f"setting {setting.describe()}: no role {setting.role} on the target")
        else:
            plan.statements.append(setting_statement(database, setting))
    if properties.comment is not None:
        plan.statements.append(f"COMMENT ON DATABASE {quote_ident(database)} IS {quote_literal(properties.comment)}")
    if properties.acl is not None:
        plan.statements += _acl_statements(properties.acl, database, owner, present, plan.skipped)
    return plan


def _acl_statements(acl: tuple[Grant, ...], database: str, owner: str, present: set[str],
                    skipped: list[str]) -> list[str]:
    """REVOKE the defaults, then GRANT exactly what the source had (as pg_dump's buildACLCommands does)."""
    name = quote_ident(database)
    statements = [f"REVOKE ALL ON DATABASE {name} FROM PUBLIC", f"REVOKE ALL ON DATABASE {name} FROM {quote_ident(owner)}"]
    for grant in acl:
        if grant.grantee is not None and grant.grantee not in present:
            skipped.append(f"privilege {grant.describe()}: no role {grant.grantee} on the target")
            continue
        grantee = "PUBLIC" if grant.grantee is None else quote_ident(grant.grantee)
        statements.append(f"GRANT {grant.privilege} ON DATABASE {name} TO {grantee}"
                          + (" WITH GRANT OPTION" if grant.grantable else ""))
    return statements


# -- comparing (restore drills) ----------------------------------------------------------------------

def differences(expected: DatabaseProperties, actual: DatabaseProperties, *, roles: Iterable[str],
                restoring_role: str | None = None) -> list[str]:
    """How a restored database's properties differ from the source's, one line each.

    What a restore leaves out on purpose (settings and grants of roles the target lacks, the
    skipped settings, an owner that is the restoring role's when the source's is missing) does
    not count as a difference.
    """
    present = set(roles)
    found = locale_differences(expected, actual)
    if expected.owner and expected.owner != actual.owner and expected.owner in present:
        found.append(f"owner: source {expected.owner}, restored {actual.owner}")
    wanted = {setting.key(): setting.value for setting in expected.settings
              if setting.name.lower() not in SKIPPED_SETTINGS and (setting.role is None or setting.role in present)}
    have = {setting.key(): setting.value for setting in actual.settings if setting.name.lower() not in SKIPPED_SETTINGS}
    for key in sorted(set(wanted) | set(have), key=lambda k: (k[0] or "", k[1])):
        if wanted.get(key) != have.get(key):
            label = (f"for role {key[0]}: " if key[0] else "") + key[1]
            found.append(f"setting {label}: source {wanted.get(key)!r}, restored {have.get(key)!r}")
    if (expected.comment or None) != (actual.comment or None):
        found.append(f"comment: source {expected.comment!r}, restored {actual.comment!r}")
    if expected.acl is not None:
        owners = {expected.owner, actual.owner, restoring_role}
        want = {_grant_key(g, owners) for g in expected.acl if g.grantee is None or g.grantee in present}
        got = {_grant_key(g, owners) for g in actual.acl or ()}
        if want != got:
            found.append(f"privileges: source {_show_grants(want)}, restored {_show_grants(got)}")
    return found


def _grant_key(grant: Grant, owners: set[str | None]) -> tuple[str, str, bool]:
    """A grant, with the owner's own privileges compared as the owner's whoever owns it."""
    grantee = "<owner>" if grant.grantee in owners and grant.grantee is not None else (grant.grantee or "PUBLIC")
    return grantee, grant.privilege, grant.grantable


def _show_grants(grants: set[tuple[str, str, bool]]) -> str:
    return ", ".join(f"{privilege} to {grantee}" + ("*" if grantable else "")
                     for grantee, privilege, grantable in sorted(grants)) or "none"


# The database's own properties, in the form a backup manifest records them (database.properties).
# pg_database's locale columns differ between versions (daticulocale 15-16, datlocale 17+,
# daticurules 16+), so they are read from the row as JSON.
_DATABASE_SQL = """
SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, pg_catalog.to_jsonb(d),
       pg_catalog.pg_get_userbyid(d.datdba), d.datconnlimit, pg_catalog.shobj_description(d.oid, 'pg_database'),
       d.datacl IS NULL
FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
"""
_DATABASE_SETTINGS_SQL = """
SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole) END, s.setconfig
FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
WHERE d.datname = pg_catalog.current_database()
ORDER BY s.setrole <> 0, 1
"""
_DATABASE_ACL_SQL = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
FROM pg_catalog.pg_database d CROSS JOIN LATERAL pg_catalog.aclexplode(d.datacl) AS a
WHERE d.datname = pg_catalog.current_database()
ORDER BY 1 NULLS FIRST, 2
"""


def read_database_properties(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(_DATABASE_SQL).fetchone()
    assert row is not None
    encoding, collate, ctype, columns, owner, connection_limit, comment, default_acl = row
    provider_code = str(columns.get("datlocprovider") or "c")
    settings = []
    for role, config in conn.execute(_DATABASE_SETTINGS_SQL).fetchall():
        for item in config or []:
            name, _, value = str(item).partition("=")
            settings.append({"name": name, "value": value, "role": role})
    acl = None if default_acl else [{"grantee": grantee, "privilege": privilege, "grantable": bool(grantable)}
                                    for grantee, privilege, grantable in conn.execute(_DATABASE_ACL_SQL).fetchall()]
    return {"encoding": encoding, "collate": collate, "ctype": ctype,
            "provider": {"c": "libc", "i": "icu", "b": "builtin"}.get(provider_code, provider_code),
            "locale": columns.get("datlocale") or columns.get("daticulocale"), "icu_rules": columns.get("daticurules"),
            "owner": owner, "connection_limit": int(connection_limit), "settings": settings, "comment": comment,
            "acl": acl}


def database_properties(dsn: str, *, connect_timeout: int = 10) -> dict[str, Any]:
    """The properties of a database (a restore target, a restored one), as a backup records them."""
    with connect(dsn, application_name="archiver properties", connect_timeout=connect_timeout) as conn:
        return read_database_properties(conn)
