"""Expectations for a policy's SQL checks: ``> 0``, ``== 42``, ``between 1 and 10``, ``is null``."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

EXPECT_HELP = ("a comparison such as '> 0', '>= 10', '== 42', '!= 0', \"== 'ok'\", "
               "'between 1 and 10', 'is null', 'is not null', 'is true', 'is false'")

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
    ">": operator.gt, "<": operator.lt,
}
_COMPARISON = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")
_BETWEEN = re.compile(r"^\s*between\s+(\S+)\s+and\s+(\S+)\s*$", re.IGNORECASE)
_IS = re.compile(r"^\s*is\s+(not\s+null|null|true|false)\s*$", re.IGNORECASE)


class ExpectationError(ValueError):
    pass


def _literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ExpectationError(f"{text!r} is neither a number nor a quoted string") from None


def _comparable(value: Any, expected: Any) -> Any:
    """Bring a query result to the expected value's kind (numbers compare as Decimal)."""
    if isinstance(expected, Decimal):
        if isinstance(value, bool) or value is None:
            return value
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return value
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Expectation:
    text: str
    test: Callable[[Any], bool]

    def holds(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except TypeError:
            return False


def parse_expectation(text: str) -> Expectation:
    text = str(text)
    if match := _IS.match(text):
        word = " ".join(match.group(1).lower().split())
        tests: dict[str, Callable[[Any], bool]] = {
            "null": lambda v: v is None, "not null": lambda v: v is not None,
            "true": lambda v: v is True, "false": lambda v: v is False,
        }
        return Expectation(text, tests[word])
    if match := _BETWEEN.match(text):
        low, high = _literal(match.group(1)), _literal(match.group(2))
        if not isinstance(low, Decimal) or not isinstance(high, Decimal) or low > high:
            raise ExpectationError("'between A and B' needs two numbers with A <= B")
        return Expectation(text, lambda v: v is not None and low <= _comparable(v, low) <= high)
    if match := _COMPARISON.match(text):
        compare, expected = _OPERATORS[match.group(1)], _literal(match.group(2))
        return Expectation(text, lambda v: v is not None and compare(_comparable(v, expected), expected))
    raise ExpectationError(f"not an expectation; write {EXPECT_HELP}")
