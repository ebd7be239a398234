"""Reading YAML nodes into values, with every problem kept as `file:line: message`.

A `Reader` goes through a file key by key: a key that is wrong is reported and skipped, and the
reading goes on, so one run shows every problem of a file, in line order, and nothing that only
follows from an earlier one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml


class Problem(NamedTuple):
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be loaded; `problems` says where and why, one entry each, file by
    file in the order they were read, and in line order within a file."""

    def __init__(self, problems: list[Problem]) -> None:
        files = {problem.file: index for index, problem in reversed(list(enumerate(problems)))}
        self.problems = sorted(problems, key=lambda problem: (files[problem.file], problem.line))
        super().__init__("\n".join(map(str, self.problems)))


class Invalid(Exception):
    """One value is wrong; raised while reading it, reported by `Reader.reporting`."""

    def __init__(self, node: yaml.Node | int, message: str) -> None:
        super().__init__(message)
        self.node, self.message = node, message


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _is_integer(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


class Reader:
    """Reads the nodes of one file after another, collecting `problems`."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.file = ""
        self.read: list[Path] = []  # every file and folder read so far, for the reload's watch
        self._constructor = yaml.constructor.SafeConstructor()

    def report(self, node: yaml.Node | int, message: str) -> None:
        self.problems.append(Problem(self.file, node if isinstance(node, int) else line_of(node), message))

    @contextlib.contextmanager
    def reporting(self) -> Iterator[None]:
        """Report an `Invalid` raised inside, and go on after the block."""
        try:
            yield
        except Invalid as invalid:
            self.report(invalid.node, invalid.message)

    def parse(self, path: Path) -> yaml.Node | None:
        """The file's root node, or None (reported) when it cannot be read, parsed, or is empty.
        Problems reported from here on name this file."""
        self.file = str(path)
        self.read.append(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.report(1, f"cannot read file: {exc}")
            return None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            self.report(mark.line + 1 if mark else 1, f"invalid YAML: {exc.problem or exc}")
            return None
        if node is None:
            self.report(1, "file is empty")
        return node

    def mapping(self, node: yaml.Node, what: str, allowed: set[str] | None = None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The entries of a mapping node by key; bad, duplicate and unknown keys are reported and left out.

        :raises Invalid: the node is not a mapping.
        """
        if not isinstance(node, yaml.MappingNode):
            raise Invalid(node, f"{what} must be a mapping")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                self.report(key_node, f"{what}: key {key!r} must be a string")
            elif key in entries:
                self.report(key_node, f"{what}: duplicate key {key!r} (first at line {line_of(entries[key][0])})")
            elif allowed is not None and key not in allowed:
                self.report(key_node, f"{what}: unknown key {key!r} (expected one of: {', '.join(sorted(allowed))})")
            else:
                entries[key] = (key_node, value_node)
        return entries

    def value(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def typed(self, node: yaml.Node, what: str, check: Callable[[Any], bool], expected: str) -> Any:
        value = self.value(node)
        if not check(value):
            raise Invalid(node, f"{what} must be {expected}, not {value!r}")
        return value

    def string(self, node: yaml.Node, what: str) -> str:
        value: str = self.typed(node, what, lambda v: isinstance(v, str) and v != "", "a non-empty string")
        return value

    def number(self, node: yaml.Node, what: str, minimum: float = 0) -> float:
        return float(self.typed(
            node, what, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= minimum,
            f"a number >= {minimum:g}",
        ))

    def integer(self, node: yaml.Node, what: str, minimum: int = 0) -> int:
        return int(self.typed(node, what, lambda v: _is_integer(v, minimum), f"an integer >= {minimum}"))

    def choice(self, node: yaml.Node, what: str, choices: tuple[str, ...]) -> str:
        value: str = self.typed(node, what, lambda v: v in choices, " or ".join(choices))
        return value

    def string_nodes(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        """The items of a string-or-list value, as nodes, each still to be read.

        :raises Invalid: neither a scalar nor a non-empty list.
        """
        if isinstance(node, yaml.ScalarNode):
            return [node]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise Invalid(node, f"{what} must be a string or a non-empty list of strings")
        return list(node.value)

    def strings(self, node: yaml.Node, what: str) -> list[str]:
        return [self.string(item, f"{what} item") for item in self.string_nodes(node, what)]
