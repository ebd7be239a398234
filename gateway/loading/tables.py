"""Route tables: each file's head, scope catalog and routes read into `gateway.tables` values
and compiled into one `Tables`; every reference checked, every problem reported."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from gateway.catalog import Catalog, is_parameterised, split_parameterised
from gateway.claims import ClaimCondition
from gateway.fields import ResponseFields
from gateway.loading.catalog import CatalogReader
from gateway.loading.graphql import GraphQLReader
from gateway.loading.nodes import Invalid, Problem, Reader, line_of
from gateway.loading.resource import ResourceBlock, read_resource, supported_scopes
from gateway.paths import canonicalise
from gateway.routing import METHODS, parse_template, template_params
from gateway.scopes import PARAMETER, SCOPE_TOKEN, Access, Requirement
from gateway.tables import Api, Exchange, Route, RouteTrie, Tables, Upstream
from gateway.types import Position

_TABLE_KEYS = {"name", "upstream", "prefix", "scopes", "rules", "routes", "resource", "issuers", "mode"}
_MODES = ("enforce", "shadow")
_ROUTE_OPTION_KEYS = {"scopes", "user", "claims", "hide", "response_fields", "graphql"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REQUIREMENT_SHAPES = "a scope, 'public', 'authenticated', a list of scopes (any one), or a list holding lists (all of each together)"

Shape = tuple[str | None, ...]


def load_tables(
    reader: Reader, routes_path: Path, node: yaml.Node, *, live: bool = False, issuers: frozenset[str] | None = None,
) -> Tables | None:
    """Every table of `routes_path` (a file, or a folder of *.yaml), compiled; None if any has a problem.

    :param live: a grant store is configured, so tables may use keys that need live grants.
    :param issuers: the issuers gateway.yaml names, which a table's `issuers:` may list; None:
        not known here, so not checked.

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
        table = _TableReader(reader, file, live, issuers).read()
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
            reader.problems.append(Problem(*route.source, f"{route.method} {route.template}: same method and path as {clash.method} {clash.template} at {clash.source}"))
    if len(reader.problems) > before:
        return None
    trie = RouteTrie(entries)
    documents = _documents(reader, apis, trie)
    if len(reader.problems) > before:
        return None
    return Tables(apis=tuple(apis), trie=trie, routes=tuple(route for _, route in entries), documents=documents)


def _documents(reader: Reader, apis: list[Api], trie: RouteTrie) -> dict[bytes, bytes]:
    """The RFC 9728 documents by path; a path two tables publish at, or that a route of any
    method matches, is a problem (the route would take the document's requests, or hide it)."""
    documents: dict[bytes, bytes] = {}
    publishers: dict[bytes, tuple[str, Position]] = {}  # path -> the table's name and its resource's source
    for api in apis:
        resource = api.resource
        if resource is None:
            continue
        path = resource.metadata_path
        shown = path.decode("ascii")
        if path in publishers:
            other, source = publishers[path]
            reader.problems.append(Problem(*resource.source, f"resource: metadata path {shown} is table {other}'s too ({source})"))
            continue
        routes = trie.candidates(canonicalise(path).segments)
        if routes:
            clash = routes[0]
            reader.problems.append(Problem(*resource.source, f"resource: metadata path {shown} is matched by route {clash.method} {clash.template} of table {clash.api.name} ({clash.source})"))
            continue
        publishers[path] = (api.name, resource.source)
        documents[path] = resource.document
    return documents


class _TableReader:
    """One route table file."""

    def __init__(self, reader: Reader, file: Path, live: bool, issuers: frozenset[str] | None = None) -> None:
        self.reader = reader
        self.file = file
        self.live = live
        self.issuers = issuers
        self.catalog: Catalog = Catalog()
        self.has_catalog = False

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
        issuers: frozenset[str] | None = None
        if "issuers" in entries:
            with reader.reporting():
                issuers = self._issuers(entries["issuers"][1])
        shadow: Position | None = None
        if "mode" in entries:
            with reader.reporting():
                if self._mode(entries["mode"][1]) == "shadow":
                    shadow = Position(str(self.file), line_of(entries["mode"][0]))
        block: ResourceBlock | None = None
        if "resource" in entries:
            with reader.reporting():
                block = read_resource(reader, entries["resource"][1])
        if "scopes" in entries or "rules" in entries:
            self.has_catalog = "scopes" in entries
            self.catalog = CatalogReader(reader, self.live).read(entries.get("scopes"), entries.get("rules"))
        parsed: list[tuple[str, str, Shape, Requirement, str | None, tuple[ClaimCondition, ...], bool, Exchange | None, int]] = []
        if "routes" in entries:
            table_routes: dict[str, tuple[yaml.Node, yaml.Node]] = {}
            with reader.reporting():
                table_routes = reader.mapping(entries["routes"][1], "routes")
            for key, (key_node, value_node) in table_routes.items():
                with reader.reporting():
                    method, template, shape = self._route_key(key, key_node)
                    requirement, user, claims, hide, exchange = self._route_value(key, method, template, value_node)
                    parsed.append((method, template, shape, requirement, user, claims, hide, exchange, line_of(key_node)))
        if len(reader.problems) > before or upstream is None:
            return None
        resource = None
        if block is not None:
            scopes = supported_scopes(self.catalog if self.has_catalog else None, (requirement for _, _, _, requirement, *_ in parsed))
            resource = block.publish(name, str(self.file), scopes)
        api = Api(name=name, upstream=upstream, prefix=prefix, catalog=self.catalog, source=Position(str(self.file), line_of(entries["routes"][0])),
                  resource=resource, issuers=issuers, shadow=shadow)
        routes = [
            ((*prefix, *shape), Route(
                api=api, method=method, template=template, requirement=requirement, params=template_params(template, len(prefix)),
                source=Position(str(self.file), line), shape=(*prefix, *shape), user=user, claims=claims, hide=hide,
                exchange=exchange, plain=user is None and not claims and not requirement.bound and issuers is None,
                live=self.catalog.live or user is not None,
            ))
            for method, template, shape, requirement, user, claims, hide, exchange, line in parsed
        ]
        return api, routes, line_of(entries["name"][1])

    def _name(self, node: yaml.Node) -> str:
        name = self.reader.string(node, "name")
        if not _NAME.fullmatch(name):
            raise Invalid(node, f"name {name!r} may hold only letters, digits, '.', '_' and '-'")
        return name

    def _mode(self, node: yaml.Node) -> str:
        mode = self.reader.string(node, "mode")
        if mode not in _MODES:
            raise Invalid(node, f"mode {mode!r} is not one of {', '.join(_MODES)} (enforce: the default; shadow: forward what it would refuse)")
        return mode

    def _issuers(self, node: yaml.Node) -> frozenset[str]:
        """The issuers whose tokens the table accepts: each one gateway.yaml's tokens name."""
        names = []
        for item in self.reader.string_nodes(node, "issuers"):
            with self.reader.reporting():
                name = self.reader.string(item, "issuers item")
                if self.issuers is not None and name not in self.issuers:
                    known = ", ".join(sorted(self.issuers)) or "none: tokens names no issuer"
                    raise Invalid(item, f"issuers: {name!r} is not an issuer of gateway.yaml's tokens (known: {known})")
                names.append(name)
        return frozenset(names)

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

    def _route_value(
        self, key: str, method: str, template: str, value_node: yaml.Node,
    ) -> tuple[Requirement, str | None, tuple[ClaimCondition, ...], bool, Exchange | None]:
        """The requirement, the `user:` parameter, the `claims:` conditions, `hide:` and the exchange of one route."""
        user: str | None = None
        claims: tuple[ClaimCondition, ...] = ()
        hide = False
        exchange: Exchange | None = None
        params = {name for name, _ in template_params(template, 0)}
        if isinstance(value_node, yaml.MappingNode):
            options = self.reader.mapping(value_node, key, _ROUTE_OPTION_KEYS)
            if "scopes" not in options:
                raise Invalid(value_node, f"{key}: the mapping form needs 'scopes'")
            if "user" in options:
                node = options["user"][1]
                user = self.reader.string(node, f"{key}: user")
                if user not in params:
                    raise Invalid(node, f"{key}: user: {user!r} names no parameter of the template (it has: {', '.join(sorted(params)) or 'none'})")
            if "claims" in options:
                claims = self._claims(key, options["claims"][1], params)
            if "hide" in options:
                hide = self.reader.typed(options["hide"][1], f"{key}: hide", lambda v: isinstance(v, bool), "true or false")
            if "response_fields" in options:
                exchange = self._response_fields(key, options["response_fields"][1])
            if "graphql" in options:
                if exchange is not None:
                    raise Invalid(options["graphql"][0], f"{key}: a route has graphql or response_fields, not both")
                requirement_of = functools.partial(self._requirement, params=set())
                exchange = GraphQLReader(self.reader, self.file, requirement_of, self._scope_problem).read(key, method, options["graphql"][1])
            value_node = options["scopes"][1]
        requirement = self._requirement(key, value_node, params)
        if claims and requirement.access is Access.PUBLIC:
            raise Invalid(value_node, f"{key}: a public route reads no token, so its claims could never be checked")
        return requirement, user, claims, hide, exchange

    def _claims(self, key: str, node: yaml.Node, params: set[str]) -> tuple[ClaimCondition, ...]:
        """`claims: {org_id: "{orgId}", tier: gold}`: each value a literal, or one whole `{param}`
        of the template."""
        members = self.reader.mapping(node, f"{key}: claims")
        if not members:
            raise Invalid(node, f"{key}: claims maps token claims to the values they must hold")
        conditions = []
        for claim, (_, value_node) in members.items():
            what = f"{key}: claims.{claim}"
            value = self.reader.typed(value_node, what, lambda v: (isinstance(v, str) and v != "") or (isinstance(v, int) and not isinstance(v, bool)), "a string, an integer or a '{param}' of the template")
            text = str(value)
            param = PARAMETER.fullmatch(text)
            if param is not None:
                if param[1] not in params:
                    raise Invalid(value_node, f"{what}: {text} names no parameter of the template (it has: {', '.join(sorted(params)) or 'none'})")
                conditions.append(ClaimCondition(claim, param[1], param=True))
            elif "{" in text or "}" in text:
                raise Invalid(value_node, f"{what}: a value is a literal or one whole '{{param}}', not {text!r}")
            else:
                conditions.append(ClaimCondition(claim, text))
        return tuple(conditions)

    def _response_fields(self, key: str, node: yaml.Node) -> ResponseFields:
        members = self.reader.mapping(node, f"{key}: response_fields")
        if not members:
            raise Invalid(node, f"{key}: response_fields maps top-level members of the JSON answer to requirements")
        requirements = {}
        for member, (_, requirement_node) in members.items():
            requirement = self._requirement(f"{key}: response_fields.{member}", requirement_node, set())
            if requirement.access is Access.PUBLIC:
                raise Invalid(requirement_node, f"{key}: response_fields.{member}: a member anyone may see needs no entry")
            requirements[member] = requirement
        return ResponseFields(requirements)

    def _requirement(self, key: str, node: yaml.Node, params: set[str]) -> Requirement:
        if isinstance(node, yaml.ScalarNode):
            value = self.reader.value(node)
            if value == "public":
                return Requirement(Access.PUBLIC)
            if value == "authenticated":
                return Requirement(Access.AUTHENTICATED)
            return self._scopes_requirement((frozenset({self._scope(key, node, params)}),))
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise Invalid(node, f"{key}: requirement must be {_REQUIREMENT_SHAPES}")
        alternatives = []
        for item in node.value:
            if isinstance(item, yaml.SequenceNode):
                if not item.value:
                    raise Invalid(item, f"{key}: an all-of list must hold at least one scope")
                if any(not isinstance(inner, yaml.ScalarNode) for inner in item.value):
                    raise Invalid(item, f"{key}: lists nest only one level deep ([[a, b]] means a and b together)")
                alternatives.append(frozenset(self._scope(key, inner, params) for inner in item.value))
            elif isinstance(item, yaml.ScalarNode):
                alternatives.append(frozenset({self._scope(key, item, params)}))
            else:
                raise Invalid(item, f"{key}: requirement must be {_REQUIREMENT_SHAPES}")
        return self._scopes_requirement(tuple(dict.fromkeys(alternatives)))

    @staticmethod
    def _scopes_requirement(alternatives: tuple[frozenset[str], ...]) -> Requirement:
        bound = any(is_parameterised(scope) for alternative in alternatives for scope in alternative)
        return Requirement(Access.SCOPES, alternatives, bound)

    def _scope(self, key: str, node: yaml.Node, params: set[str]) -> str:
        value = self.reader.value(node)
        if not isinstance(value, str) or not value:
            raise Invalid(node, f"{key}: scope must be a string, not {value!r}")
        if value in ("public", "authenticated"):
            raise Invalid(node, f"{key}: {value!r} stands alone as the whole requirement, not inside a list")
        if " " in value:
            raise Invalid(node, f"{key}: {value!r} holds a space; write [a, b] for any one of them or [[a, b]] for all together")
        if not SCOPE_TOKEN.fullmatch(value):
            raise Invalid(node, f"{key}: {value!r} is not a valid scope (no quotes, backslashes or control characters)")
        if is_parameterised(value):
            parts = split_parameterised(value)
            if parts is None:
                raise Invalid(node, f"{key}: {value!r}: a scope names one path parameter at most, as prefix{{param}}suffix")
            param = value[len(parts[0]) + 1:len(value) - len(parts[1]) - 1]
            if param not in params:
                raise Invalid(node, f"{key}: {value!r} names {{{param}}}, which the template lacks (it has: {', '.join(sorted(params)) or 'none'})")
            if self.has_catalog and self.catalog.pattern_for(value) is None:
                raise Invalid(node, f"{key}: {value!r} matches no parameterised scope of this table's catalog")
        elif self.has_catalog and not self.catalog.knows(value):
            raise Invalid(node, f"{key}: {value!r} is not in this table's scopes catalog")
        return value


    def _scope_problem(self, value: str) -> str | None:
        """What is wrong with a scope named outside the YAML (a GraphQL SDL directive), or None."""
        if not SCOPE_TOKEN.fullmatch(value) or is_parameterised(value):
            return f"{value!r} is not a valid scope (no quotes, spaces, backslashes, control characters or {{parameters}})"
        if self.has_catalog and not self.catalog.knows(value):
            return f"{value!r} is not in this table's scopes catalog"
        return None


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
