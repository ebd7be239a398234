"""Loading gateway.yaml and its route tables into one frozen `Config`.

Everything is validated before anything serves: unknown keys, unknown methods, malformed
templates, duplicate routes, scope expressions of the wrong shape and `implies` naming nothing
are each a `Problem` naming file, line and what is wrong. A load either yields a whole `Config`
or raises `ConfigError` with every problem found; a running gateway keeps its last good one.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from gateway.keys import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, VerificationKey, key_from_pem, key_from_secret, keys_from_jwks
from gateway.routing import METHODS, Api, Route, RouteTrie, Upstream, parse_template, template_params
from gateway.scopes import SCOPE_TOKEN, Access, Requirement, ScopeCatalog, find_cycle, implication_closure

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Problem(NamedTuple):
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be loaded; `problems` says where and why, one entry each."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True)
class TokenSettings:
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwks_url: str | None = None
    static_keys: tuple[VerificationKey, ...] = ()
    leeway: float = 0.0
    scope_claims: tuple[str, ...] = ("scope", "scp")
    jwks_refetch_interval: float = 30.0
    jwks_max_age: float = 600.0
    cache_size: int = 10_000


@dataclass(frozen=True)
class ProxySettings:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    total_timeout: float = 0.0  # 0: no limit on the whole exchange
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    client: str = "pool"  # "pool" (asyncio protocols + httptools) or "httpx" (mockable with respx)
    max_connections: int = 1024  # per upstream (Envoy's default); requests past it wait in line
    idle_timeout: float = 30.0
    ca_file: Path | None = None


@dataclass(frozen=True)
class Tables:
    """Every route of every table, compiled. Swapped whole, never edited."""

    apis: tuple[Api, ...]
    trie: RouteTrie
    routes: tuple[Route, ...]

    def needs_tokens(self) -> bool:
        return any(route.requirement.access is not Access.PUBLIC for route in self.routes)


@dataclass(frozen=True)
class Config:
    source: Path
    tables: Tables
    tokens: TokenSettings = field(default_factory=TokenSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)


def load_config(path: str | Path) -> Config:
    """Load gateway.yaml and every route table it names.

    :raises ConfigError: with one `Problem` per thing wrong, in file order.
    """
    return _Loader().load(Path(path))


_GATEWAY_KEYS = {"routes", "tokens", "proxy"}
_TOKEN_KEYS = {
    "issuer", "audience", "algorithms", "jwks_url", "jwks_file", "public_keys", "hmac_secret_file",
    "leeway", "scope_claims", "jwks_refetch_interval", "jwks_max_age", "cache_size",
}
_PROXY_KEYS = {"connect_timeout", "read_timeout", "total_timeout", "trusted_proxies", "client", "max_connections", "idle_timeout", "ca_file"}
UPSTREAM_CLIENTS = ("pool", "httpx")
_TABLE_KEYS = {"name", "upstream", "prefix", "scopes", "routes"}
_CATALOG_ENTRY_KEYS = {"description", "implies"}
_ROUTE_OPTION_KEYS = {"scopes"}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Invalid(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        self.node, self.message = node, message


class _Loader:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._file = ""
        self._constructor = yaml.constructor.SafeConstructor()

    # --- reading YAML nodes -------------------------------------------------------------

    def _report(self, node: yaml.Node | int, message: str) -> None:
        self.problems.append(Problem(self._file, node if isinstance(node, int) else _line(node), message))

    def _parse(self, path: Path) -> yaml.Node | None:
        self._file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self._report(1, f"cannot read file: {exc}")
            return None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            self._report(mark.line + 1 if mark else 1, f"invalid YAML: {exc.problem or exc}")
            return None
        if node is None:
            self._report(1, "file is empty")
        return node

    def _mapping(self, node: yaml.Node, what: str, allowed: set[str] | None = None) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise _Invalid(node, f"{what} must be a mapping")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self._value(key_node)
            if not isinstance(key, str):
                self._report(key_node, f"{what}: key {key!r} must be a string")
                continue
            if key in entries:
                self._report(key_node, f"{what}: duplicate key {key!r} (first at line {_line(entries[key][0])})")
                continue
            if allowed is not None and key not in allowed:
                self._report(key_node, f"{what}: unknown key {key!r} (expected one of: {', '.join(sorted(allowed))})")
                continue
            entries[key] = (key_node, value_node)
        return entries

    def _value(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def _typed(self, node: yaml.Node, what: str, check: Callable[[Any], bool], expected: str) -> Any:
        value = self._value(node)
        if not check(value):
            raise _Invalid(node, f"{what} must be {expected}, not {value!r}")
        return value

    def _string(self, node: yaml.Node, what: str) -> str:
        return self._typed(node, what, lambda v: isinstance(v, str) and v != "", "a non-empty string")

    def _number(self, node: yaml.Node, what: str, minimum: float = 0) -> float:
        return float(self._typed(
            node, what, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= minimum,
            f"a number >= {minimum:g}",
        ))

    def _strings(self, node: yaml.Node, what: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode):
            return [self._string(node, what)]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise _Invalid(node, f"{what} must be a string or a non-empty list of strings")
        return [self._string(item, f"{what} item") for item in node.value]

    def _section(self, parse: Callable[[], None]) -> None:
        try:
            parse()
        except _Invalid as invalid:
            self._report(invalid.node, invalid.message)

    # --- gateway.yaml -------------------------------------------------------------------

    def load(self, path: Path) -> Config:
        root = self._parse(path)
        if root is None:
            raise ConfigError(self.problems)
        gateway_file = self._file
        tokens = TokenSettings()
        proxy = ProxySettings()
        tables: Tables | None = None
        try:
            entries = self._mapping(root, "gateway config", _GATEWAY_KEYS)
        except _Invalid as invalid:
            self._report(invalid.node, invalid.message)
            raise ConfigError(self.problems) from None
        if "routes" not in entries:
            self._report(root, "missing key 'routes' (a route table file, or a folder of *.yaml tables)")
        else:
            key_node, value_node = entries["routes"]
            try:
                routes_path = path.parent / self._string(value_node, "routes")
                tables = self._load_tables(routes_path, value_node)
            except _Invalid as invalid:
                self._report(invalid.node, invalid.message)
        self._file = gateway_file
        if "tokens" in entries:
            try:
                tokens = self._tokens(entries["tokens"][1], path.parent)
            except _Invalid as invalid:
                self._report(invalid.node, invalid.message)
        if "proxy" in entries:
            try:
                proxy = self._proxy(entries["proxy"][1], path.parent)
            except _Invalid as invalid:
                self._report(invalid.node, invalid.message)
        if tables is not None and tables.needs_tokens() and not (tokens.static_keys or tokens.jwks_url):
            line = _line(entries["tokens"][0]) if "tokens" in entries else 1
            self._report(line, "routes require tokens but no key is configured (tokens: jwks_url, jwks_file, public_keys or hmac_secret_file)")
        if self.problems or tables is None:
            raise ConfigError(self.problems)
        return Config(source=path, tables=tables, tokens=tokens, proxy=proxy)

    def _tokens(self, node: yaml.Node, base: Path) -> TokenSettings:
        entries = self._mapping(node, "tokens", _TOKEN_KEYS)
        settings: dict[str, Any] = {}
        keys: list[VerificationKey] = []

        def value(name: str) -> yaml.Node | None:
            return entries[name][1] if name in entries else None

        def read_file(node: yaml.Node, what: str) -> tuple[Path, bytes]:
            file = base / self._string(node, what)
            try:
                return file, file.read_bytes()
            except OSError as exc:
                raise _Invalid(node, f"{what}: cannot read {file}: {exc.strerror}") from None

        def parse() -> None:
            if (node := value("issuer")) is not None:
                settings["issuer"] = self._string(node, "tokens.issuer")
            if (node := value("audience")) is not None:
                settings["audience"] = tuple(self._strings(node, "tokens.audience"))
            algorithms = DEFAULT_ALGORITHMS
            if (node := value("algorithms")) is not None:
                algorithms = tuple(self._strings(node, "tokens.algorithms"))
                for name in algorithms:
                    if name.lower() == "none":
                        raise _Invalid(node, "tokens.algorithms: 'none' is never accepted: unsigned tokens prove nothing")
                    if name not in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS:
                        raise _Invalid(node, f"tokens.algorithms: unknown algorithm {name!r} (known: {', '.join(sorted(ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS))})")
            hmac = [name for name in algorithms if name in HMAC_ALGORITHMS]
            if hmac and "hmac_secret_file" not in entries:
                raise _Invalid(value("algorithms"), f"tokens.algorithms: {', '.join(hmac)} needs a shared secret; set hmac_secret_file on purpose or remove it")
            settings["algorithms"] = algorithms
            if (node := value("jwks_url")) is not None:
                url = self._string(node, "tokens.jwks_url")
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise _Invalid(node, f"tokens.jwks_url must be an http(s) URL, not {url!r}")
                settings["jwks_url"] = url
            if (node := value("jwks_file")) is not None:
                file, data = read_file(node, "tokens.jwks_file")
                try:
                    found, _ = keys_from_jwks(json.loads(data), f"jwks_file {file}")
                except ValueError as exc:
                    raise _Invalid(node, f"tokens.jwks_file {file}: {exc}") from None
                keys.extend(found)
            if (node := value("public_keys")) is not None:
                items = node.value if isinstance(node, yaml.SequenceNode) else [node]
                for item in items:
                    file, data = read_file(item, "tokens.public_keys")
                    try:
                        keys.append(key_from_pem(data, f"public_keys {file}"))
                    except ValueError as exc:
                        raise _Invalid(item, f"tokens.public_keys {file}: {exc}") from None
            if (node := value("hmac_secret_file")) is not None:
                if not hmac:
                    raise _Invalid(node, "tokens.hmac_secret_file is set but tokens.algorithms lists no HS256/HS384/HS512")
                file, data = read_file(node, "tokens.hmac_secret_file")
                try:
                    keys.append(key_from_secret(data.strip(), hmac, f"hmac_secret_file {file}"))
                except ValueError as exc:
                    raise _Invalid(node, f"tokens.hmac_secret_file {file}: {exc}") from None
            for name in ("leeway", "jwks_refetch_interval", "jwks_max_age"):
                if (node := value(name)) is not None:
                    settings[name] = self._number(node, f"tokens.{name}")
            if (node := value("cache_size")) is not None:
                settings["cache_size"] = int(self._typed(node, "tokens.cache_size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"))
            if (node := value("scope_claims")) is not None:
                settings["scope_claims"] = tuple(self._strings(node, "tokens.scope_claims"))

        self._section(parse)
        return TokenSettings(static_keys=tuple(keys), **settings)

    def _proxy(self, node: yaml.Node, base: Path) -> ProxySettings:
        entries = self._mapping(node, "proxy", _PROXY_KEYS)
        settings: dict[str, Any] = {}
        for name in ("connect_timeout", "read_timeout", "idle_timeout"):
            if name in entries:
                settings[name] = self._number(entries[name][1], f"proxy.{name}", minimum=0.001)
        if "total_timeout" in entries:
            settings["total_timeout"] = self._number(entries["total_timeout"][1], "proxy.total_timeout")
        if "max_connections" in entries:
            settings["max_connections"] = int(self._typed(entries["max_connections"][1], "proxy.max_connections", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"))
        if "client" in entries:
            settings["client"] = self._typed(entries["client"][1], "proxy.client", lambda v: v in UPSTREAM_CLIENTS, " or ".join(UPSTREAM_CLIENTS))
        if "ca_file" in entries:
            node = entries["ca_file"][1]
            ca_file = base / self._string(node, "proxy.ca_file")
            if not ca_file.is_file():
                raise _Invalid(node, f"proxy.ca_file: {ca_file} does not exist")
            settings["ca_file"] = ca_file
        if "trusted_proxies" in entries:
            node = entries["trusted_proxies"][1]
            networks = []
            for item in self._strings(node, "proxy.trusted_proxies"):
                try:
                    networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise _Invalid(node, f"proxy.trusted_proxies: {item!r} is not an IP address or network") from None
            settings["trusted_proxies"] = tuple(networks)
        return ProxySettings(**settings)

    # --- route tables -------------------------------------------------------------------

    def _load_tables(self, routes_path: Path, node: yaml.Node) -> Tables | None:
        if routes_path.is_dir():
            files = sorted(routes_path.glob("*.yaml"))
            if not files:
                raise _Invalid(node, f"routes: no *.yaml route tables in {routes_path}")
        elif routes_path.is_file():
            files = [routes_path]
        else:
            raise _Invalid(node, f"routes: {routes_path} does not exist")
        apis: list[Api] = []
        entries: list[tuple[tuple[str | None, ...], Route]] = []
        names: dict[str, str] = {}
        for file in files:
            table = self._table(file)
            if table is None:
                continue
            api, routes, name_line = table
            if api.name in names:
                self._report(name_line, f"table name {api.name!r} is already used by {names[api.name]}")
            names[api.name] = f"{file}:{name_line}"
            apis.append(api)
            entries.extend(routes)
        seen: dict[tuple[str, tuple[str | None, ...]], Route] = {}
        for shape, route in entries:
            clash = seen.setdefault((route.method, shape), route)
            if clash is not route:
                file, _, line = route.source.rpartition(":")
                self.problems.append(Problem(file, int(line), f"{route.method} {route.template}: same method and path as {clash.method} {clash.template} at {clash.source}"))
        if self.problems:
            return None
        return Tables(apis=tuple(apis), trie=RouteTrie(entries), routes=tuple(route for _, route in entries))

    def _table(self, file: Path) -> tuple[Api, list[tuple[tuple[str | None, ...], Route]], int] | None:
        root = self._parse(file)
        if root is None:
            return None
        before = len(self.problems)
        try:
            entries = self._mapping(root, "route table", _TABLE_KEYS)
        except _Invalid as invalid:
            self._report(invalid.node, invalid.message)
            return None
        for required in ("name", "upstream", "routes"):
            if required not in entries:
                self._report(root, f"missing key {required!r}")
        name, upstream, prefix = "", None, ()
        catalog_direct: dict[str, tuple[str, ...]] = {}
        catalog_lines: dict[str, yaml.Node] = {}
        descriptions: dict[str, str] = {}

        def parse_head() -> None:
            nonlocal name, upstream, prefix
            if "name" in entries:
                node = entries["name"][1]
                name = self._string(node, "name")
                if not _NAME.fullmatch(name):
                    raise _Invalid(node, f"name {name!r} may hold only letters, digits, '.', '_' and '-'")
            if "upstream" in entries:
                upstream = _upstream(entries["upstream"][1], self._string(entries["upstream"][1], "upstream"))
            if "prefix" in entries:
                node = entries["prefix"][1]
                text = self._string(node, "prefix")
                try:
                    shape = parse_template(text)
                except ValueError as exc:
                    raise _Invalid(node, f"prefix: {exc}") from None
                if None in shape:
                    raise _Invalid(node, "prefix must be literal segments, without {parameters}")
                prefix = tuple(segment for segment in shape if segment is not None)

        def parse_catalog() -> None:
            if "scopes" not in entries:
                return
            for scope, (key_node, value_node) in self._mapping(entries["scopes"][1], "scopes").items():
                if not SCOPE_TOKEN.fullmatch(scope):
                    self._report(key_node, f"scopes: {scope!r} is not a valid scope (no spaces, quotes or backslashes)")
                    continue
                catalog_lines[scope] = key_node
                if isinstance(value_node, yaml.ScalarNode) and self._value(value_node) is None:
                    continue
                try:
                    options = self._mapping(value_node, f"scopes.{scope}", _CATALOG_ENTRY_KEYS)
                    if "description" in options:
                        descriptions[scope] = self._string(options["description"][1], f"scopes.{scope}.description")
                    if "implies" in options:
                        implied_node = options["implies"][1]
                        implied = self._strings(implied_node, f"scopes.{scope}.implies")
                        catalog_direct[scope] = tuple(implied)
                        catalog_lines[f"implies {scope}"] = implied_node
                except _Invalid as invalid:
                    self._report(invalid.node, invalid.message)

        self._section(parse_head)
        self._section(parse_catalog)

        parsed: list[tuple[str, str, tuple[str | None, ...], Requirement, int]] = []
        used_scopes: set[str] = set()
        if "routes" in entries:
            try:
                table_routes = self._mapping(entries["routes"][1], "routes")
            except _Invalid as invalid:
                self._report(invalid.node, invalid.message)
                table_routes = {}
            for key, (key_node, value_node) in table_routes.items():
                try:
                    method, template, shape = self._route_key(key, key_node)
                    requirement = self._route_value(key, value_node)
                except _Invalid as invalid:
                    self._report(invalid.node, invalid.message)
                    continue
                for alternative in requirement.alternatives:
                    used_scopes.update(alternative)
                parsed.append((method, template, shape, requirement, _line(key_node)))

        known = set(catalog_lines) | used_scopes
        for scope, implied in catalog_direct.items():
            for target in implied:
                if target not in known:
                    self._report(catalog_lines[f"implies {scope}"], f"scopes.{scope}.implies: {target!r} names nothing: it is neither in this table's scopes nor used by a route")
        cycle = find_cycle(catalog_direct)
        if cycle:
            self._report(catalog_lines[f"implies {cycle[0]}"], f"scopes: implication cycle {' -> '.join(cycle)}")
        if len(self.problems) > before or upstream is None:
            return None
        catalog = ScopeCatalog(descriptions=descriptions, implied=implication_closure(catalog_direct))
        api = Api(name=name, upstream=upstream, prefix=prefix, catalog=catalog, source=str(file))
        routes = [
            ((*prefix, *shape), Route(
                api=api, method=method, template=template, requirement=requirement,
                params=template_params(template, len(prefix)), source=f"{file}:{line}",
            ))
            for method, template, shape, requirement, line in parsed
        ]
        return api, routes, _line(entries["name"][1])

    def _route_key(self, key: str, key_node: yaml.Node) -> tuple[str, str, tuple[str | None, ...]]:
        method, _, template = key.partition(" ")
        if not template or " " in template.strip():
            raise _Invalid(key_node, f"route {key!r} must be 'METHOD /path/template'")
        template = template.strip()
        if method not in METHODS:
            raise _Invalid(key_node, f"{key}: unknown method {method!r} (expected one of: {', '.join(sorted(METHODS))})")
        try:
            shape = parse_template(template)
        except ValueError as exc:
            raise _Invalid(key_node, f"{key}: {exc}") from None
        return method, template, shape

    def _route_value(self, key: str, value_node: yaml.Node) -> Requirement:
        if isinstance(value_node, yaml.MappingNode):
            options = self._mapping(value_node, key, _ROUTE_OPTION_KEYS)
            if "scopes" not in options:
                raise _Invalid(value_node, f"{key}: the mapping form needs 'scopes'")
            value_node = options["scopes"][1]
        return self._requirement(key, value_node)

    def _requirement(self, key: str, node: yaml.Node) -> Requirement:
        shape_help = "a scope, 'public', 'authenticated', a list of scopes (any one), or a list holding lists (all of each together)"
        if isinstance(node, yaml.ScalarNode):
            value = self._value(node)
            if value == "public":
                return Requirement(Access.PUBLIC)
            if value == "authenticated":
                return Requirement(Access.AUTHENTICATED)
            return Requirement(Access.SCOPES, (frozenset({self._scope(key, node)}),))
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise _Invalid(node, f"{key}: requirement must be {shape_help}")
        alternatives = []
        for item in node.value:
            if isinstance(item, yaml.SequenceNode):
                if not item.value:
                    raise _Invalid(item, f"{key}: an all-of list must hold at least one scope")
                if any(not isinstance(inner, yaml.ScalarNode) for inner in item.value):
                    raise _Invalid(item, f"{key}: lists nest only one level deep ([[a, b]] means a and b together)")
                alternatives.append(frozenset(self._scope(key, inner) for inner in item.value))
            elif isinstance(item, yaml.ScalarNode):
                alternatives.append(frozenset({self._scope(key, item)}))
            else:
                raise _Invalid(item, f"{key}: requirement must be {shape_help}")
        return Requirement(Access.SCOPES, tuple(dict.fromkeys(alternatives)))

    def _scope(self, key: str, node: yaml.Node) -> str:
        value = self._value(node)
        if not isinstance(value, str) or not value:
            raise _Invalid(node, f"{key}: scope must be a string, not {value!r}")
        if value in ("public", "authenticated"):
            raise _Invalid(node, f"{key}: {value!r} stands alone as the whole requirement, not inside a list")
        if " " in value:
            raise _Invalid(node, f"{key}: {value!r} holds a space; write [a, b] for any one of them or [[a, b]] for all together")
        if not SCOPE_TOKEN.fullmatch(value):
            raise _Invalid(node, f"{key}: {value!r} is not a valid scope (no quotes, backslashes or control characters)")
        return value


def _upstream(node: yaml.Node, url: str) -> Upstream:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(node, f"upstream must be an http:// or https:// URL with a host, not {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise _Invalid(node, "upstream must not carry a query, fragment or credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _Invalid(node, f"upstream {url!r} has an invalid port") from None
    base_path = parts.path.rstrip("/")
    if not base_path.isascii():
        raise _Invalid(node, "upstream path must be ASCII (percent-encode it)")
    if base_path:
        try:
            parse_template(base_path)
        except ValueError as exc:
            raise _Invalid(node, f"upstream path: {exc}") from None
    return Upstream.build(url, parts.scheme, parts.hostname, port, base_path.encode("ascii"))
