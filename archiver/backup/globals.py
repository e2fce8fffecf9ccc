"""The roles of a backup's globals object (``pg_dumpall --globals-only``), filtered for a restore target.

A restore creates the roles its target lacks, with their attributes, settings, comments and the
memberships that involve them, and leaves every existing role exactly as it is: replaying the
whole script would re-``ALTER`` the target's own roles (its superuser's attributes, say).
Tablespaces are left out: their directories belong to the source server. Statements this module
does not recognise are never run; they are reported instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_ROLE = re.compile(rf"^CREATE\s+ROLE\s+({_IDENT})\s*;$", re.I | re.S)
_ROLE_STATEMENT = re.compile(rf"^(?:ALTER\s+ROLE|COMMENT\s+ON\s+ROLE|SECURITY\s+LABEL\s+FOR\s+\S+\s+ON\s+ROLE)\s+({_IDENT})",
                             re.I | re.S)
_ATTRIBUTES = re.compile(rf"^ALTER\s+ROLE\s+{_IDENT}\s+WITH\s", re.I | re.S)
_IN_DATABASE = re.compile(rf"^ALTER\s+ROLE\s+{_IDENT}\s+IN\s+DATABASE\s", re.I | re.S)
_MEMBERSHIP = re.compile(rf"^GRANT\s+({_IDENT})\s+TO\s+({_IDENT})(.*?)(\s+GRANTED\s+BY\s+({_IDENT}))?\s*;$", re.I | re.S)
_PARAMETER_GRANT = re.compile(rf"^GRANT\s+.+\s+ON\s+PARAMETER\s+.+\s+TO\s+({_IDENT})(?:\s+WITH\s+GRANT\s+OPTION)?\s*;$",
                              re.I | re.S)
_TABLESPACE = re.compile(r"^(?:CREATE|ALTER|COMMENT\s+ON|GRANT\s+.+\s+ON|REVOKE\s+.+\s+ON|SECURITY\s+LABEL.+\s+ON)"
                         r"\s+TABLESPACE\b", re.I | re.S)
_TABLESPACE_NAME = re.compile(rf"^CREATE\s+TABLESPACE\s+({_IDENT})", re.I | re.S)
_SET = re.compile(r"^SET\s+\w+\s*=\s*[^;]+;$", re.I | re.S)
_PRIVILEGED_ATTRIBUTES = re.compile(r"\b(SUPERUSER|REPLICATION|BYPASSRLS)\b")
_ANY_PRIVILEGED_ATTRIBUTE = re.compile(r"\s+(?:NO)?(?:SUPERUSER|REPLICATION|BYPASSRLS)\b")


def unquote(identifier: str) -> str:
    """``"Mixed Case"`` -> ``Mixed Case``; unquoted identifiers fold to lower case."""
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def split_statements(script: str) -> list[str]:
    """SQL statements of a script, without comments and psql meta-commands; semicolons inside quotes do not split."""
    statements: list[str] = []
    current: list[str] = []
    quote: str | None = None
    index = 0
    while index < len(script):
        char = script[index]
        if quote is not None:
            current.append(char)
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
            current.append(char)
        elif script.startswith("--", index) or (char == "\\" and not "".join(current).strip()):
            # a comment, or a psql meta-command line (pg_dumpall writes \\restrict / \\unrestrict)
            end = script.find("\n", index)
            index = len(script) if end < 0 else end
            continue
        elif char == ";":
            current.append(char)
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    rest = "".join(current).strip()
    if rest:
        statements.append(rest)
    return [statement for statement in statements if statement and statement != ";"]


@dataclass
class RolesPlan:
    """What a restore runs from the globals object on one target."""

    create: list[str] = field(default_factory=list)  # roles to create, in script order
    statements: list[str] = field(default_factory=list)  # to run, in one transaction
    existing: list[str] = field(default_factory=list)  # roles of the backup the target already has
    tablespaces: list[str] = field(default_factory=list)  # tablespaces of the source (not created)
    skipped: list[str] = field(default_factory=list)  # statements not run, with the reason

    def to_json(self) -> dict[str, object]:
        return {"create": self.create, "existing": len(self.existing), "tablespaces": self.tablespaces,
                "skipped": self.skipped}


def plan_roles(script: str, existing_roles: Iterable[str], *, superuser: bool = True) -> RolesPlan:
    """The statements that create the roles ``existing_roles`` lacks, and nothing else.

    Without ``superuser`` the privileged attributes (SUPERUSER, REPLICATION, BYPASSRLS), which
    only a superuser may even mention, are left out (new roles have none of them) and reported.
    """
    existing = set(existing_roles)
    statements = split_statements(script)
    declared = [unquote(match.group(1)) for match in map(_CREATE_ROLE.match, statements) if match]
    plan = RolesPlan(existing=[role for role in declared if role in existing])
    new = {role for role in declared if role not in existing}
    known = existing | new
    for statement in statements:
        _plan_statement(plan, statement, new, known, superuser)
    return plan


def _plan_statement(plan: RolesPlan, statement: str, new: set[str], known: set[str], superuser: bool) -> None:
    head = " ".join(statement.split()[:6])
    if _SET.match(statement):
        plan.statements.append(statement)
    elif match := _CREATE_ROLE.match(statement):
        role = unquote(match.group(1))
        if role in new:
            plan.create.append(role)
            plan.statements.append(statement)
    elif _TABLESPACE.match(statement):
        if match := _TABLESPACE_NAME.match(statement):
            plan.tablespaces.append(unquote(match.group(1)))
        plan.skipped.append(f"{head} ... (tablespaces belong to the source server)")
    elif match := _ROLE_STATEMENT.match(statement):
        if unquote(match.group(1)) not in new:
            return
        if _IN_DATABASE.match(statement):
            plan.skipped.append(f"{head} ... (a setting for one database of the source server)")
            return
        if not superuser and _ATTRIBUTES.match(statement):
            statement = _without_privileged_attributes(plan, statement, head)
        plan.statements.append(statement)
    elif match := _MEMBERSHIP.match(statement):
        role, member, options, granted_by, grantor = (match.group(1), match.group(2), match.group(3),
                                                      match.group(4), match.group(5))
        if unquote(role) not in new and unquote(member) not in new:
            return
        if granted_by and unquote(grantor) not in known:
            statement = f"GRANT {role} TO {member}{options};"
        plan.statements.append(statement)
    elif match := _PARAMETER_GRANT.match(statement):
        if unquote(match.group(1)) not in new:
            return
        if superuser:
            plan.statements.append(statement)
        else:
            plan.skipped.append(f"{head} ... (privileges on parameters need a superuser)")
    else:
        plan.skipped.append(f"{head} ... (not a role statement archiver recognises)")


def _without_privileged_attributes(plan: RolesPlan, statement: str, head: str) -> str:
    """``ALTER ROLE x WITH ...`` minus SUPERUSER/REPLICATION/BYPASSRLS in either form."""
    attributes, _, rest = statement.partition(" PASSWORD ")
    granted = _PRIVILEGED_ATTRIBUTES.findall(" ".join(word for word in attributes.split() if not word.startswith("NO")))
    if granted:
        plan.skipped.append(f"{head} ...: {', '.join(granted)} not granted (only a superuser may; the restoring role "
                            "is not one)")
    attributes = _ANY_PRIVILEGED_ATTRIBUTE.sub("", attributes)
    return f"{attributes} PASSWORD {rest}" if rest else attributes
