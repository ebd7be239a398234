"""Route match: a request line's canonical path to its route (`route()`), through the compiled
tables' trie (`gateway.tables.RouteTrie`); and the templates' syntax the loader compiles them from."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import NotFound
from gateway.paths import CanonicalPath, canonicalise
from gateway.tables import Route, Tables

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


# per-request values are not frozen: a frozen dataclass's __init__ costs four times as much
@dataclass(slots=True)
class RouteMatch:
    route: Route
    path: CanonicalPath
    # what goes on the upstream's request line: its base path, the raw path after the prefix, the query
    upstream_target: bytes

    @property
    def params(self) -> dict[str, str]:
        """The template's `{name}` values, decoded (only explanations need them)."""
        return self.route.bind(self.path.segments)


def route(tables: Tables, method: str, raw_path: bytes, query_string: bytes = b"") -> RouteMatch:
    """Find the route for a request line.

    :raises InvalidRequest: the path is ambiguous.
    :raises NotFound: no route for this method and path (deny by default).
    """
    path = canonicalise(raw_path)
    matched = tables.trie.match(method, path.segments)
    if matched is None:
        raise NotFound(f"no route for {method} {raw_path.decode('ascii', 'backslashreplace')}")
    target = matched.api.upstream.base_path + path.raw_tail(len(matched.api.prefix))
    if query_string:
        target += b"?" + query_string
    return RouteMatch(matched, path, target)
