"""Route templates compiled into a segment trie: lookup cost follows the path's depth, never the
number of routes. At each segment a literal child is tried before the parameter child, so the
most specific template wins whatever order the tables were written in."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.scopes import Access
from gateway.tables import Api, Route

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f/\\{}%?#]")


def parse_template(template: str) -> tuple[str | None, ...]:
    """Split `/a/{id}/b` into ('a', None, 'b'): a literal segment, or None for a parameter.

    :raises ValueError: with a message naming what is wrong.
    """
    if not template.startswith("/"):
        raise ValueError("path template must start with '/'")
    if template == "/":
        return ()
    shape: list[str | None] = []
    names: set[str] = set()
    for segment in template[1:].split("/"):
        if not segment:
            raise ValueError("path template has an empty segment ('//' or a trailing '/')")
        param = _PARAM.fullmatch(segment)
        if param:
            if param.group(1) in names:
                raise ValueError(f"parameter {{{param.group(1)}}} appears twice")
            names.add(param.group(1))
            shape.append(None)
        elif "{" in segment or "}" in segment:
            raise ValueError(f"segment {segment!r}: a parameter is a whole segment '{{name}}' with a name of letters, digits and '_'")
        elif segment in (".", ".."):
            raise ValueError("dot segments are not allowed in templates")
        elif _LITERAL_FORBIDDEN.search(segment):
            raise ValueError(f"segment {segment!r} has a character a decoded path segment cannot hold")
        else:
            shape.append(segment)
    return tuple(shape)


def template_params(template: str, offset: int) -> tuple[tuple[str, int], ...]:
    return tuple(
        (match.group(1), offset + index)
        for index, segment in enumerate(template[1:].split("/"))
        if (match := _PARAM.fullmatch(segment))
    )


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    routes: dict[str, Route] = field(default_factory=dict)


def _route_at(node: _Node, method: str) -> Route | None:
    route = node.routes.get(method)
    if route is None and method == "HEAD":
        route = node.routes.get("GET")
    return route


class RouteTrie:
    """All routes of all tables, keyed by full path (prefix included). Built once, never edited."""

    __slots__ = ("_root", "count")

    def __init__(self, entries: Iterable[tuple[tuple[str | None, ...], Route]]) -> None:
        self._root = _Node()
        self.count = 0
        for shape, route in entries:
            node = self._root
            for segment in shape:
                if segment is None:
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literals.setdefault(segment, _Node())
            if route.method in node.routes:
                raise ValueError(f"duplicate of {node.routes[route.method].source}")
            node.routes[route.method] = route
            self.count += 1

    def match(self, method: str, segments: tuple[str, ...]) -> Route | None:
        """The most specific route for `method` and decoded `segments`, or None."""
        # the walk's first descent (a literal child where there is one), without recursion: it
        # is the answer whenever it ends on a route, which is nearly always
        node = self._root
        for segment in segments:
            child = node.literals.get(segment)
            node = child if child is not None else node.param  # type: ignore[assignment]  # None only until the check below breaks out
            if node is None:
                break
        else:
            route = _route_at(node, method)
            if route is not None:
                return route
        return self._walk(self._root, method, segments, 0)

    def _walk(self, node: _Node, method: str, segments: tuple[str, ...], depth: int) -> Route | None:
        if depth == len(segments):
            return _route_at(node, method)
        child = node.literals.get(segments[depth])
        if child is not None:
            route = self._walk(child, method, segments, depth + 1)
            if route is not None:
                return route
        if node.param is not None:
            return self._walk(node.param, method, segments, depth + 1)
        return None

    def candidates(self, segments: tuple[str, ...]) -> tuple[Route, ...]:
        """Every route whose template matches `segments`, whatever its method, most specific
        first (the order `match` tries them in). For explanations: `match` does not use it."""
        found: list[Route] = []

        def walk(node: _Node, depth: int) -> None:
            if depth == len(segments):
                found.extend(node.routes.values())
                return
            child = node.literals.get(segments[depth])
            if child is not None:
                walk(child, depth + 1)
            if node.param is not None:
                walk(node.param, depth + 1)

        walk(self._root, 0)
        return tuple(found)


@dataclass(frozen=True)
class Tables:
    """Every route of every table, compiled. Swapped whole, never edited."""

    apis: tuple[Api, ...]
    trie: RouteTrie
    routes: tuple[Route, ...]
    # the RFC 9728 documents the tables publish, by raw request path; read only when no route matched
    documents: Mapping[bytes, bytes] = field(default_factory=dict)

    def candidates(self, segments: tuple[str, ...]) -> tuple[Route, ...]:
        """Every route whose template matches `segments`, any method, most specific first."""
        return self.trie.candidates(segments)

    def needs_tokens(self) -> bool:
        return any(route.requirement.access is not Access.PUBLIC for route in self.routes)
