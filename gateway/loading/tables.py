"""Route tables: each file's head, scope catalog and routes read into `gateway.tables` values
and compiled into one `Tables`; every reference checked, every problem reported."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from gateway.loading.nodes import Invalid, Problem, Reader, line_of
from gateway.routing import METHODS, RouteTrie, Tables, parse_template, template_params
from gateway.scopes import SCOPE_TOKEN, Access, Requirement, ScopeCatalog, find_cycle, implication_closure
from gateway.tables import Api, Route, Upstream

_TABLE_KEYS = {"name", "upstream", "prefix", "scopes", "routes"}
_CATALOG_ENTRY_KEYS = {"description", "implies"}
_ROUTE_OPTION_KEYS = {"scopes"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REQUIREMENT_SHAPES = "a scope, 'public', 'authenticated', a list of scopes (any one), or a list holding lists (all of each together)"

Shape = tuple[str | None, ...]


def load_tables(reader: Reader, routes_path: Path, node: yaml.Node) -> Tables | None:
    """Every table of `routes_path` (a file, or a folder of *.yaml), compiled; None if any has a problem.

    :raises Invalid: `routes_path` names nothing to load.
    """
    if routes_path.is_dir():
        files = sorted(routes_path.glob("*.yaml"))
        if not files:
            raise Invalid(node, f"routes: no *.yaml route tables in {routes_path}")
    elif routes_path.is_file():
        files = [routes_path]
    else:
        raise Invalid(node, f"routes: {routes_path} does not exist")
    before = len(reader.problems)
    apis: list[Api] = []
    entries: list[tuple[Shape, Route]] = []
    names: dict[str, str] = {}
    for file in files:
        table = _TableReader(reader, file).read()
        if table is None:
            continue
        api, routes, name_line = table
        if api.name in names:
            reader.report(name_line, f"table name {api.name!r} is already used by {names[api.name]}")
        names[api.name] = f"{file}:{name_line}"
        apis.append(api)
        entries.extend(routes)
    seen: dict[tuple[str, Shape], Route] = {}
    for shape, route in entries:
        clash = seen.setdefault((route.method, shape), route)
        if clash is not route:
            file, _, line = route.source.rpartition(":")
            reader.problems.append(Problem(file, int(line), f"{route.method} {route.template}: same method and path as {clash.method} {clash.template} at {clash.source}"))
    if len(reader.problems) > before:
        return None
    return Tables(apis=tuple(apis), trie=RouteTrie(entries), routes=tuple(route for _, route in entries))


class _TableReader:
    """One route table file."""

    def __init__(self, reader: Reader, file: Path) -> None:
        self.reader = reader
        self.file = file

    def read(self) -> tuple[Api, list[tuple[Shape, Route]], int] | None:
        reader = self.reader
        root = reader.parse(self.file)
        if root is None:
            return None
        before = len(reader.problems)
        try:
            entries = reader.mapping(root, "route table", _TABLE_KEYS)
        except Invalid as invalid:
            reader.report(invalid.node, invalid.message)
            return None
        for required in ("name", "upstream", "routes"):
            if required not in entries:
                reader.report(root, f"missing key {required!r}")
        name = ""
        upstream: Upstream | None = None
        prefix: tuple[str, ...] = ()
        if "name" in entries:
            with reader.reporting():
                name = self._name(entries["name"][1])
        if "upstream" in entries:
            with reader.reporting():
                node = entries["upstream"][1]
                upstream = _upstream(node, reader.string(node, "upstream"))
        if "prefix" in entries:
            with reader.reporting():
                prefix = self._prefix(entries["prefix"][1])
        catalog_direct: dict[str, tuple[str, ...]] = {}
        implies_nodes: dict[str, yaml.Node] = {}
        descriptions: dict[str, str] = {}
        declared: set[str] = set()
        if "scopes" in entries:
            with reader.reporting():
                for scope, (key_node, value_node) in reader.mapping(entries["scopes"][1], "scopes").items():
                    if not SCOPE_TOKEN.fullmatch(scope):
                        reader.report(key_node, f"scopes: {scope!r} is not a valid scope (no spaces, quotes or backslashes)")
                        continue
                    declared.add(scope)
                    if isinstance(value_node, yaml.ScalarNode) and reader.value(value_node) is None:
                        continue
                    with reader.reporting():
                        options = reader.mapping(value_node, f"scopes.{scope}", _CATALOG_ENTRY_KEYS)
                        if "description" in options:
                            with reader.reporting():
                                descriptions[scope] = reader.string(options["description"][1], f"scopes.{scope}.description")
                        if "implies" in options:
                            with reader.reporting():
                                implies_node = options["implies"][1]
                                catalog_direct[scope] = tuple(reader.strings(implies_node, f"scopes.{scope}.implies"))
                                implies_nodes[scope] = implies_node

        parsed: list[tuple[str, str, Shape, Requirement, int]] = []
        used_scopes: set[str] = set()
        if "routes" in entries:
            table_routes: dict[str, tuple[yaml.Node, yaml.Node]] = {}
            with reader.reporting():
                table_routes = reader.mapping(entries["routes"][1], "routes")
            for key, (key_node, value_node) in table_routes.items():
                with reader.reporting():
                    method, template, shape = self._route_key(key, key_node)
                    requirement = self._route_value(key, value_node)
                    for alternative in requirement.alternatives:
                        used_scopes.update(alternative)
                    parsed.append((method, template, shape, requirement, line_of(key_node)))

        known = declared | used_scopes
        for scope, implied in catalog_direct.items():
            for target in implied:
                if target not in known:
                    reader.report(implies_nodes[scope], f"scopes.{scope}.implies: {target!r} names nothing: it is neither in this table's scopes nor used by a route")
        cycle = find_cycle(catalog_direct)
        if cycle:
            reader.report(implies_nodes[cycle[0]], f"scopes: implication cycle {' -> '.join(cycle)}")
        if len(reader.problems) > before or upstream is None:
            return None
        catalog = ScopeCatalog(descriptions=descriptions, implied=implication_closure(catalog_direct))
        api = Api(name=name, upstream=upstream, prefix=prefix, catalog=catalog, source=str(self.file))
        routes = [
            ((*prefix, *shape), Route(
                api=api, method=method, template=template, requirement=requirement,
                params=template_params(template, len(prefix)), source=f"{self.file}:{line}",
            ))
            for method, template, shape, requirement, line in parsed
        ]
        return api, routes, line_of(entries["name"][1])

    def _name(self, node: yaml.Node) -> str:
        name = self.reader.string(node, "name")
        if not _NAME.fullmatch(name):
            raise Invalid(node, f"name {name!r} may hold only letters, digits, '.', '_' and '-'")
        return name

    def _prefix(self, node: yaml.Node) -> tuple[str, ...]:
        text = self.reader.string(node, "prefix")
        try:
            shape = parse_template(text)
        except ValueError as exc:
            raise Invalid(node, f"prefix: {exc}") from None
        if None in shape:
            raise Invalid(node, "prefix must be literal segments, without {parameters}")
        return tuple(segment for segment in shape if segment is not None)

    def _route_key(self, key: str, key_node: yaml.Node) -> tuple[str, str, Shape]:
        method, _, template = key.partition(" ")
        if not template or " " in template.strip():
            raise Invalid(key_node, f"route {key!r} must be 'METHOD /path/template'")
        template = template.strip()
        if method not in METHODS:
            raise Invalid(key_node, f"{key}: unknown method {method!r} (expected one of: {', '.join(sorted(METHODS))})")
        try:
            shape = parse_template(template)
        except ValueError as exc:
            raise Invalid(key_node, f"{key}: {exc}") from None
        return method, template, shape

    def _route_value(self, key: str, value_node: yaml.Node) -> Requirement:
        if isinstance(value_node, yaml.MappingNode):
            options = self.reader.mapping(value_node, key, _ROUTE_OPTION_KEYS)
            if "scopes" not in options:
                raise Invalid(value_node, f"{key}: the mapping form needs 'scopes'")
            value_node = options["scopes"][1]
        return self._requirement(key, value_node)

    def _requirement(self, key: str, node: yaml.Node) -> Requirement:
        if isinstance(node, yaml.ScalarNode):
            value = self.reader.value(node)
            if value == "public":
                return Requirement(Access.PUBLIC)
            if value == "authenticated":
                return Requirement(Access.AUTHENTICATED)
            return Requirement(Access.SCOPES, (frozenset({self._scope(key, node)}),))
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise Invalid(node, f"{key}: requirement must be {_REQUIREMENT_SHAPES}")
        alternatives = []
        for item in node.value:
            if isinstance(item, yaml.SequenceNode):
                if not item.value:
                    raise Invalid(item, f"{key}: an all-of list must hold at least one scope")
                if any(not isinstance(inner, yaml.ScalarNode) for inner in item.value):
                    raise Invalid(item, f"{key}: lists nest only one level deep ([[a, b]] means a and b together)")
                alternatives.append(frozenset(self._scope(key, inner) for inner in item.value))
            elif isinstance(item, yaml.ScalarNode):
                alternatives.append(frozenset({self._scope(key, item)}))
            else:
                raise Invalid(item, f"{key}: requirement must be {_REQUIREMENT_SHAPES}")
        return Requirement(Access.SCOPES, tuple(dict.fromkeys(alternatives)))

    def _scope(self, key: str, node: yaml.Node) -> str:
        value = self.reader.value(node)
        if not isinstance(value, str) or not value:
            raise Invalid(node, f"{key}: scope must be a string, not {value!r}")
        if value in ("public", "authenticated"):
            raise Invalid(node, f"{key}: {value!r} stands alone as the whole requirement, not inside a list")
        if " " in value:
            raise Invalid(node, f"{key}: {value!r} holds a space; write [a, b] for any one of them or [[a, b]] for all together")
        if not SCOPE_TOKEN.fullmatch(value):
            raise Invalid(node, f"{key}: {value!r} is not a valid scope (no quotes, backslashes or control characters)")
        return value


def _upstream(node: yaml.Node, url: str) -> Upstream:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(node, f"upstream must be an http:// or https:// URL with a host, not {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise Invalid(node, "upstream must not carry a query, fragment or credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Invalid(node, f"upstream {url!r} has an invalid port") from None
    base_path = parts.path.rstrip("/")
    if not base_path.isascii():
        raise Invalid(node, "upstream path must be ASCII (percent-encode it)")
    if base_path:
        try:
            parse_template(base_path)
        except ValueError as exc:
            raise Invalid(node, f"upstream path: {exc}") from None
    return Upstream.build(url, parts.scheme, parts.hostname, port, base_path.encode("ascii"))
