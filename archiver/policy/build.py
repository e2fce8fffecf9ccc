"""Building the schema's dataclasses from YAML data: every problem collected, ``${VAR}`` interpolated.

Every problem in every file is collected (never the first one only). Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from .fields import ENV_REF, Check, Parse, RawCheck, Secret
from .issues import KeyPath, PolicyIssue, dotted, show
from .load import LoadedYaml


def interpolate(text: str, environ: typing.Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    Returns the text and the names of variables that are unset and have no default. An empty
    variable counts as unset for ``:-``, as in the shell.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)

    parts = text.split("$$")
    return "$".join(ENV_REF.sub(replace, part) for part in parts), missing


# --------------------------------------------------------------------------------------------
# Building dataclasses from YAML data, collecting issues

INVALID = object()


class Builder:
    def __init__(self, source: str, loaded: LoadedYaml, environ: typing.Mapping[str, str], strict_env: bool) -> None:
        self.source = source
        self.loaded = loaded
        self.environ = environ
        self.strict_env = strict_env
        self.issues: list[PolicyIssue] = []
        self.warnings: list[PolicyIssue] = []  # valid, but probably not what was meant (policy validate prints them)
        self.unresolved: dict[str, list[str]] = {}

    def issue(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        mark = self.loaded.mark(path, key=key)
        self.issues.append(PolicyIssue(self.source, mark.line, mark.column, dotted(path), message))

    def warn(self, path: KeyPath, message: str) -> None:
        mark = self.loaded.mark(path)
        self.warnings.append(PolicyIssue(self.source, mark.line, mark.column, dotted(path), message))

    def build(self, cls: type, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            self.issue(path, f"expected a mapping (got {show(value)})")
            return INVALID
        fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
        names = [f.name for f in fields]
        hints = typing.get_type_hints(cls, include_extras=True)
        for key in value:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                suggestion = f"; did you mean {close[0]!r}?" if close else ""
                self.issue(path + (key,), f"unknown key (got {key!r}; allowed {', '.join(names)}){suggestion}", key=True)
        kwargs: dict[str, Any] = {}
        ok = True
        for f in fields:
            if f.name in value:
                converted = self.convert(hints[f.name], value[f.name], path + (f.name,))
                ok = ok and converted is not INVALID
                kwargs[f.name] = converted
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.issue(path, f"missing required key {f.name!r}" if path else f"{f.name}: missing required section")
                ok = False
        if ok:
            return cls(**kwargs)
        return self.partial(cls, fields, kwargs)

    @staticmethod
    def partial(cls: type, fields: list[dataclasses.Field[Any]], values: dict[str, Any]) -> Any:
        """An instance with invalid or missing fields set to None, so that rules spanning
        several keys can still check the parts that are valid (every error at once)."""
        instance: Any = object.__new__(cls)
        for f in fields:
            value = values.get(f.name, INVALID)
            if value is INVALID:
                if f.name in values or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
                    value = None
                elif f.default is not dataclasses.MISSING:
                    value = f.default
                elif callable(f.default_factory):
                    value = f.default_factory()
            object.__setattr__(instance, f.name, value)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                object.__setattr__(instance, f.name, f.default)
        return instance

    def convert(self, hint: Any, value: Any, path: KeyPath) -> Any:
        metadata: tuple[Any, ...] = ()
        if typing.get_origin(hint) is Annotated:
            hint, *extra = typing.get_args(hint)
            metadata = tuple(extra)
        origin = typing.get_origin(hint)
        if origin in (Union, types.UnionType):
            options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if value is None:
                return None
            if isinstance(value, str) and ENV_REF.search(value) and not interpolate(value, self.environ)[0].strip():
                return None  # `${VAR:-}` left empty means "not set" for an optional key
            chosen = next((o for o in options if typing.get_origin(o) is list), options[0]) \
                if isinstance(value, list) else options[0]  # `str | list[str]`: a list is taken as one
            return self.convert(Annotated[chosen, *metadata] if metadata else chosen, value, path)
        if isinstance(value, str):
            for meta in metadata:
                if isinstance(meta, RawCheck) and (problem := meta.function(value)):
                    self.issue(path, problem)
                    return INVALID
            value, missing = interpolate(value, self.environ)
            if missing:
                self.unresolved[dotted(path)] = missing
                if hint is Secret and not self.strict_env:
                    return Secret(value)
                if self.strict_env or hint is not str:
                    names = ", ".join(missing)
                    self.issue(path, f"environment variable {names} is not set (allowed: set it, or give a default "
                                     f"with ${{{missing[0]}:-default}})")
                    return INVALID
                return value
        parser = next((meta for meta in metadata if isinstance(meta, Parse)), None)
        if parser is not None:
            try:
                value = parser.function(value)
            except ValueError as exc:
                self.issue(path, f"{exc} (got {show(value)}; allowed {parser.allowed})")
                return INVALID
        else:
            value = self.convert_plain(hint, origin, value, path)
            if value is INVALID:
                return INVALID
        for meta in metadata:
            if isinstance(meta, Check) and (problem := meta.function(value)):
                self.issue(path, problem)
                return INVALID
        return value

    def convert_plain(self, hint: Any, origin: Any, value: Any, path: KeyPath) -> Any:
        if origin is Literal:
            allowed = typing.get_args(hint)
            if value not in allowed:
                self.issue(path, f"invalid value (got {show(value)}; allowed {', '.join(map(str, allowed))})")
                return INVALID
            return value
        if origin is list:
            if not isinstance(value, list):
                self.issue(path, f"expected a list (got {show(value)})")
                return INVALID
            (item_hint,) = typing.get_args(hint)
            items = [self.convert(item_hint, item, path + (index,)) for index, item in enumerate(value)]
            return [None if item is INVALID else item for item in items]
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, path)  # type: ignore[arg-type]
        expected = {bool: "true or false", int: "a whole number", str: "a string", float: "a number"}
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, str):
            return value
        if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        self.issue(path, f"wrong type (got {show(value)}; allowed {expected.get(hint, str(hint))})")
        return INVALID
