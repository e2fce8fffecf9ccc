"""Reading YAML (the only module that imports it): every key and value remembers where it came from.

Policy files come from operators, but a policy directory is also a place where a mistake (or a
hostile file) can make a worker hang or crash. So the loader is bounded, and refuses with a
position instead of trying harder:

- at most :data:`MAX_BYTES` of text and :data:`MAX_SCALAR_CHARS` per value;
- at most :data:`MAX_DEPTH` levels of nesting, counted while composing, before Python's own
  recursion limit could be reached (10,000 nested lists end in a message, not a RecursionError);
- at most :data:`MAX_VALUES` values once aliases and merge keys are expanded, measured on the
  composed node graph (linear in the file's size) before anything is expanded: a "billion
  laughs" document is refused in milliseconds; an alias that refers to its own ancestor too;
- only the plain YAML types (mappings, lists, strings, numbers, booleans, null, timestamps):
  other tags (``!!python/...``, ``!!binary``, ``!custom``) are refused, keys must be scalars,
  and a value that cannot be read (a 5,000-digit number, the date 2024-13-45) is an error
  with its position, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 100_000
MAX_SCALAR_CHARS = 64 * 1024
MAX_NUMBER_CHARS = 40

_YAML_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE, _VALUE = (_YAML_TAG + name for name in ("map", "seq", "merge", "value"))
_SCALAR_TAGS = {_YAML_TAG + name for name in ("str", "int", "float", "bool", "null", "timestamp")}
_NUMBER_TAGS = {_YAML_TAG + "int", _YAML_TAG + "float"}


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based

    @classmethod
    def of(cls, mark: yaml.Mark | None) -> Mark:
        return cls(mark.line + 1, mark.column + 1) if mark else cls(1, 1)


@dataclass
class LoadedYaml:
    data: Any
    value_marks: dict[Path_, Mark]
    key_marks: dict[Path_, Mark]
    duplicate_keys: list[tuple[Path_, Mark]]

    def mark(self, path: Path_, *, key: bool = False) -> Mark:
        """The closest known position for ``path``: the key itself, its value, or an ancestor."""
        table = self.key_marks if key else self.value_marks
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if key and probe in self.value_marks:
                return self.value_marks[probe]
            if not key and probe in self.key_marks:
                return self.key_marks[probe]
            probe = probe[:-1]
        return self.value_marks.get((), Mark(1, 1))


class YamlError(ValueError):
    """A document that cannot be loaded, with the position of the problem."""

    kind = "YAML error"

    def __init__(self, message: str, mark: Mark) -> None:
        super().__init__(message)
        self.mark = mark


class YamlSyntaxError(YamlError):
    kind = "YAML syntax error"


class YamlRefused(YamlError):
    """Well-formed YAML that the loader will not take: over a limit, or a construct policies never need."""

    kind = "refused"


def load_yaml(text: str) -> LoadedYaml:
    """Parse one YAML document into plain Python data plus the marks of every key and value.

    Duplicate keys are collected instead of silently keeping the last one, as PyYAML does.
    Raises :class:`YamlSyntaxError` or :class:`YamlRefused` (both :class:`YamlError`).
    """
    if len(text) > MAX_BYTES:
        raise YamlRefused(f"the document is larger than {MAX_BYTES // 1024} KiB ({len(text)} characters)", Mark(1, 1))
    root = _compose(text)
    result = LoadedYaml(None, {}, {}, [])
    if root is None:
        return result
    _measure(root, 1, set(), {})
    result.data = _construct(root, (), result, yaml.SafeLoader(""))
    return result


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's composer (recursive) with a depth limit and a per-scalar size limit."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs leave it untyped
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels", Mark.of(event.start_mark))
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:  # an anchor name (PyYAML's stubs say otherwise)
        node = super().compose_scalar_node(anchor)
        if len(node.value) > MAX_SCALAR_CHARS:
            raise YamlRefused(f"a value longer than {MAX_SCALAR_CHARS // 1024} KiB ({len(node.value)} characters)",
                              Mark.of(node.start_mark))
        return node


def _compose(text: str) -> yaml.Node | None:
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as exc:  # raised while checking the text for unprintable characters
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlSyntaxError(f"unacceptable character #x{code:04x} ({exc.reason})",
                              _position_mark(text, exc.position)) from None
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        problem = " ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise YamlSyntaxError(problem, Mark.of(exc.problem_mark or exc.context_mark)) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc).splitlines()[0], Mark(1, 1)) from None
    finally:
        loader.dispose()


def _position_mark(text: str, position: int) -> Mark:
    before = text[:position]
    return Mark(before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG):] if tag.startswith(_YAML_TAG) else tag


def _measure(node: yaml.Node, depth: int, ancestors: set[int], measured: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values, height) of ``node`` with aliases expanded, each shared node measured once.

    Refuses, at the offending node, a structure deeper than MAX_DEPTH or larger than MAX_VALUES
    once expanded, an alias inside the node it refers to, and tags and keys policies never use.
    The recursion is bounded by MAX_DEPTH: depth is checked before going further down.
    """
    where = Mark.of(node.start_mark)
    if id(node) in ancestors:
        raise YamlRefused("an alias refers to a node that contains it (a recursive structure)", where)
    if id(node) in measured:
        size, height = measured[id(node)]
        if depth + height - 1 > MAX_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded", where)
        return size, height
    if depth > MAX_DEPTH:
        raise YamlRefused(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded", where)
    _check_tag(node, where)
    size, height = 1, 1
    ancestors.add(id(node))
    for child in _children(node):
        child_size, child_height = _measure(child, depth + 1, ancestors, measured)
        size += child_size
        height = max(height, child_height + 1)
        if size > MAX_VALUES:
            raise YamlRefused(_too_many_values(measured), where)
    ancestors.discard(id(node))
    measured[id(node)] = (size, height)
    return size, height


def _too_many_values(measured: dict[int, tuple[int, int]]) -> str:
    distinct = len(measured)
    if distinct >= MAX_VALUES // 2:
        return f"holds more than {MAX_VALUES} values"
    return (f"expands to more than {MAX_VALUES} values through aliases or merge keys, from about {distinct} "
            "written (a 'billion laughs' document?)")


def _check_tag(node: yaml.Node, where: Mark) -> None:
    if isinstance(node, yaml.MappingNode):
        allowed = node.tag == _MAP
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlRefused("a key must be a plain value, not a list or a mapping", Mark.of(key_node.start_mark))
            if key_node.tag == _MERGE:
                _check_merge_source(value_node)
    elif isinstance(node, yaml.SequenceNode):
        allowed = node.tag == _SEQ
    else:
        allowed = node.tag in _SCALAR_TAGS or node.tag in (_MERGE, _VALUE)
        if allowed and node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            raise YamlRefused(f"a number with more than {MAX_NUMBER_CHARS} characters ({len(node.value)})", where)
    if not allowed:
        raise YamlRefused(f"tag {_short_tag(node.tag)} is not supported (allowed: plain mappings, lists, strings, "
                          "numbers, true/false, null)", where)


def _check_merge_source(value_node: yaml.Node) -> None:
    sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise YamlRefused("a merge key (<<) takes a mapping or a list of mappings, e.g. <<: *defaults",
                              Mark.of(source.start_mark))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _construct(node: yaml.Node, path: Path_, out: LoadedYaml, scalar_loader: yaml.SafeLoader) -> Any:
    out.value_marks[path] = Mark.of(node.start_mark)
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in _with_merges_expanded(node):
            # Keys are taken as written: YAML 1.1 would turn a key like `on` or `no` into a bool.
            key = key_node.value
            child = path + (key,)
            if key in mapping:
                out.duplicate_keys.append((child, Mark.of(key_node.start_mark)))
            out.key_marks[child] = Mark.of(key_node.start_mark)
            mapping[key] = _construct(value_node, child, out, scalar_loader)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (index,), out, scalar_loader) for index, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)  # tags were checked: what is not a mapping or a list is a scalar
    return _construct_scalar(node, scalar_loader)


def _construct_scalar(node: yaml.ScalarNode, scalar_loader: yaml.SafeLoader) -> Any:
    if node.tag in (_MERGE, _VALUE):  # `<<` or `=` where a plain value stands: the text as written
        return node.value
    try:
        return scalar_loader.construct_object(node, deep=True)
    except (ValueError, OverflowError, yaml.YAMLError) as exc:
        what = _short_tag(node.tag)[2:]
        shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        raise YamlRefused(f"cannot read {shown!r} as a {what}: {exc}", Mark.of(node.start_mark)) from None


def _with_merges_expanded(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """Key/value pairs with YAML merge keys (``<<: *defaults``) expanded; explicit keys win."""
    explicit = [(k, v) for k, v in node.value if k.tag != _MERGE]
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE:
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            merged.extend(_with_merges_expanded(source))
    explicit_keys = {k.value for k, _ in explicit}
    seen: set[str] = set()
    inherited = []
    for key_node, value_node in merged:
        if key_node.value not in explicit_keys and key_node.value not in seen:
            seen.add(key_node.value)
            inherited.append((key_node, value_node))
    return inherited + explicit


def dump_yaml(document: Any) -> str:
    """``document`` as block-style YAML, keys in their given order (policy show, the demo's policies)."""
    return str(yaml.safe_dump(document, sort_keys=False, default_flow_style=False))
