"""YAML loading that remembers where every key and value came from (file:line:col)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based

    @classmethod
    def of(cls, mark: yaml.Mark | None) -> "Mark":
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


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, mark: Mark) -> None:
        super().__init__(message)
        self.mark = mark


def load_yaml(text: str) -> LoadedYaml:
    """Parse one YAML document into plain Python data plus the marks of every key and value.

    Duplicate keys are collected instead of silently keeping the last one, as PyYAML does.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        problem = " ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise YamlSyntaxError(problem, Mark.of(exc.problem_mark or exc.context_mark)) from None
    finally:
        loader.dispose()
    result = LoadedYaml(None, {}, {}, [])
    if root is None:
        return result
    result.data = _construct(root, (), result, yaml.SafeLoader(""))
    return result


def _construct(node: yaml.Node, path: Path_, out: LoadedYaml, scalar_loader: yaml.SafeLoader) -> Any:
    out.value_marks[path] = Mark.of(node.start_mark)
    if isinstance(node, yaml.MappingNode):
        mapping: dict[Any, Any] = {}
        for key_node, value_node in _with_merges_expanded(node):
            # Keys are taken as written: YAML 1.1 would turn a key like `on` or `no` into a bool.
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = path + (key,)
            if key in mapping:
                out.duplicate_keys.append((child, Mark.of(key_node.start_mark)))
            out.key_marks[child] = Mark.of(key_node.start_mark)
            mapping[key] = _construct(value_node, child, out, scalar_loader)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (index,), out, scalar_loader) for index, item in enumerate(node.value)]
    return scalar_loader.construct_object(node, deep=True)


def _with_merges_expanded(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    """Key/value pairs with YAML merge keys (``<<: *defaults``) expanded; explicit keys win."""
    explicit = [(k, v) for k, v in node.value if not (isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:merge")]
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if (key_node, value_node) in explicit:
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            if isinstance(source, yaml.MappingNode):
                merged.extend(_with_merges_expanded(source))
    explicit_keys = {k.value for k, _ in explicit if isinstance(k, yaml.ScalarNode)}
    seen: set[str] = set()
    inherited = []
    for key_node, value_node in merged:
        if key_node.value not in explicit_keys and key_node.value not in seen:
            seen.add(key_node.value)
            inherited.append((key_node, value_node))
    return inherited + explicit
