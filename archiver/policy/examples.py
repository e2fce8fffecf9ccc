"""The example policies shipped in the package (``examples/<kind>.yaml``), for ``archiver policy init``.

Each is the repository's ``policies/<kind>.yaml`` (a test keeps them identical). ``policy init NAME
--kind KIND`` writes the example of KIND for a database called NAME: its first comment, its DSN variable
(``${NAME_DSN}``) and its storage prefix (``.../NAME``) name NAME; everything else is the example's, to
be edited. ``policy init KIND --kind KIND`` gives the example back unchanged.
"""

from __future__ import annotations

import re
from importlib import resources

from ..errors import UsageError

KINDS = ("identity", "app", "telemetry")
NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,62}"  # a policy name (policy/fields.py Identifier)


def env_prefix(name: str) -> str:
    """``billing-eu`` -> ``BILLING_EU``: the name as an environment variable name."""
    prefix = re.sub(r"[^A-Z0-9]", "_", name.upper())
    return prefix if not prefix[0].isdigit() else f"DB_{prefix}"


def example_text(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"--kind: {kind!r} is not an example (allowed: {', '.join(KINDS)})")
    return (resources.files("archiver.policy") / "examples" / f"{kind}.yaml").read_text(encoding="utf-8")


def example_policy(name: str, kind: str) -> str:
    """The example policy of ``kind`` for a database called ``name``, as YAML text."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(f"NAME: {name!r} is not a policy name (allowed: lower-case letters, digits, '_', '.', '-'; "
                         "starting with a letter or digit; at most 63 characters)")
    text = example_text(kind)
    replacements = [(f"${{{env_prefix(kind)}_DSN}}", f"${{{env_prefix(name)}_DSN}}"),
                    (f"/{kind}\n", f"/{name}\n"),
                    (f"# {kind}: ", f"# {name}: ")]
    for old, new in replacements:
        if old not in text:
            raise AssertionError(f"examples/{kind}.yaml lacks {old!r}")  # a broken package, not bad input
        text = text.replace(old, new, 1)
    return text
