"""gateway.yaml: its sections read into `gateway.settings` values, every problem reported."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.grants.live import open_store
from gateway.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    VerificationKey,
    jwks_document,
    key_from_pem,
    key_from_secret,
    keys_from_jwks,
    unusable,
    usable_keys,
)
from gateway.loading.nodes import ConfigError, Invalid, Problem, Reader, line_of
from gateway.loading.tables import load_tables
from gateway.tables import Tables
from gateway.settings import (
    DEFAULT_ALGORITHMS, UNDERSCORE_HEADERS, UPSTREAM_CLIENTS, AdminSettings, Config, DecisionSettings, GrantSettings, LimitSettings, ProxySettings, TokenSettings,
)

_GATEWAY_KEYS = {"routes", "tokens", "proxy", "limits", "grants", "admin", "decision"}
_DECISION_KEYS = {"trusted_proxies"}
_ADMIN_KEYS = {"listen", "token_file", "metrics"}
_MIN_ADMIN_TOKEN = 16
_GRANT_KEYS = {"store", "refresh"}
_TOKEN_KEYS = {
    "issuer", "audience", "algorithms", "jwks_url", "jwks_file", "public_keys", "hmac_secret_file",
    "leeway", "scope_claims", "jwks_refetch_interval", "jwks_max_age", "cache_size", "grant_type_claim",
}
_KEY_SOURCES = ("jwks_url", "jwks_file", "public_keys", "hmac_secret_file")
_PROXY_KEYS = {
    "connect_timeout", "read_timeout", "total_timeout", "trusted_proxies", "client", "max_connections", "idle_timeout", "ca_file",
    "underscore_headers", "max_rewritten_response",
}
# what the httpx client (the one respx mocks) has no way to honour
_POOL_ONLY = ("ca_file", "total_timeout", "max_connections", "idle_timeout")
_LIMIT_KEYS = {"max_uri", "max_headers"}
_KNOWN_ALGORITHMS = ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS

Entries = dict[str, tuple[yaml.Node, yaml.Node]]


def load_config(path: str | Path, mode: str = "proxy") -> Config:
    """Load gateway.yaml and every route table it names.

    :param mode: how it is served: `proxy`, or `decision`, where a route that needs the request
        body or the upstream's answer (`graphql:`, `response_fields:`) cannot be enforced.

    :raises ConfigError: with one `Problem` per thing wrong, file by file, in line order.
    """
    path = Path(path)
    reader = Reader()
    root = reader.parse(path)
    if root is None:
        raise ConfigError(reader.problems)
    gateway_file = reader.file
    warnings: list[Problem] = []
    try:
        entries = reader.mapping(root, "gateway config", _GATEWAY_KEYS)
    except Invalid as invalid:
        reader.report(invalid.node, invalid.message)
        raise ConfigError(reader.problems) from None
    grants = _section(reader, entries, "grants", lambda node: _grants(reader, node, path.parent), GrantSettings(base=path.parent))
    tables: Tables | None = None
    if "routes" not in entries:
        reader.report(root, "missing key 'routes' (a route table file, or a folder of *.yaml tables)")
    else:
        with reader.reporting():
            node = entries["routes"][1]
            routes_path = path.parent / reader.string(node, "routes")
            reader.read.append(routes_path)  # a folder: a table added to it is a change too
            tables = load_tables(reader, routes_path, node, live=grants.store is not None)
        reader.file = gateway_file
    tokens = _section(reader, entries, "tokens", lambda node: _tokens(reader, node, path.parent, warnings), TokenSettings())
    proxy = _section(reader, entries, "proxy", lambda node: _proxy(reader, node, path.parent), ProxySettings())
    limits = _section(reader, entries, "limits", lambda node: _limits(reader, node), LimitSettings())
    admin = _section(reader, entries, "admin", lambda node: _admin(reader, node, path.parent), AdminSettings())
    decision = _section(reader, entries, "decision", lambda node: _decision(reader, node), DecisionSettings())
    token_entries = entries.get("tokens")
    named_keys = token_entries is not None and isinstance(token_entries[1], yaml.MappingNode) and any(
        reader.value(key) in _KEY_SOURCES for key, _ in token_entries[1].value
    )
    # a key source that was named but broken is reported where it is, not as missing here
    if tables is not None and tables.needs_tokens() and not named_keys:
        line = line_of(token_entries[0]) if token_entries else 1
        reader.report(line, "routes require tokens but no key is configured (tokens: jwks_url, jwks_file, public_keys or hmac_secret_file)")
    if reader.problems or tables is None:
        raise ConfigError(reader.problems)
    if mode == "decision":
        _decision_mode(tables)
    files = tuple(dict.fromkeys(reader.read))
    return Config(source=path, tables=tables, tokens=tokens, proxy=proxy, limits=limits, grants=grants, admin=admin, decision=decision,
                  files=files, warnings=tuple(str(warning) for warning in warnings))


def _decision(reader: Reader, node: yaml.Node) -> DecisionSettings:
    entries = reader.mapping(node, "decision", _DECISION_KEYS)
    if "trusted_proxies" not in entries:
        return DecisionSettings()
    return DecisionSettings(trusted_proxies=_networks(reader, entries["trusted_proxies"][1], "decision.trusted_proxies"))


def _decision_mode(tables: Tables) -> None:
    """:raises ConfigError: a route decision mode cannot enforce: it sees neither the request's body nor the answer."""
    problems = []
    for route in tables.routes:
        if route.exchange is not None:
            file, _, line = route.source.rpartition(":")
            problems.append(Problem(file, int(line), f"{route.method} {route.template}: {route.exchange.option}: cannot be enforced in "
                                    "decision mode, which sees neither the request body nor the upstream's answer; serve this table in proxy mode"))
    if problems:
        raise ConfigError(problems)


def _section(reader: Reader, entries: Entries, name: str, read: Any, default: Any) -> Any:
    if name not in entries:
        return default
    try:
        return read(entries[name][1])
    except Invalid as invalid:
        reader.report(invalid.node, invalid.message)
        return default


def _tokens(reader: Reader, node: yaml.Node, base: Path, warnings: list[Problem]) -> TokenSettings:
    """The token settings; a key no allowed algorithm can use is an error (every token it
    could check would be refused), or a warning when it comes in a JWKS beside usable ones, as
    an identity provider's JWKS may list keys for other clients or an encryption key."""
    entries = reader.mapping(node, "tokens", _TOKEN_KEYS)
    settings: dict[str, Any] = {}
    keys: list[VerificationKey] = []

    def value(name: str) -> yaml.Node | None:
        return entries[name][1] if name in entries else None

    if (node := value("issuer")) is not None:
        with reader.reporting():
            settings["issuer"] = reader.string(node, "tokens.issuer")
    if (node := value("audience")) is not None:
        with reader.reporting():
            settings["audience"] = tuple(reader.strings(node, "tokens.audience"))
    algorithms: tuple[str, ...] | None = DEFAULT_ALGORITHMS  # None: unreadable, so nothing depending on it is checked
    if (node := value("algorithms")) is not None:
        algorithms = _algorithms(reader, node)
    if algorithms is not None:
        settings["algorithms"] = algorithms
        hmac = [name for name in algorithms if name in HMAC_ALGORITHMS]
        if hmac and "hmac_secret_file" not in entries:
            reader.report(value("algorithms"), f"tokens.algorithms: {', '.join(hmac)} needs a shared secret; set hmac_secret_file on purpose or remove it")
    if (node := value("jwks_url")) is not None:
        with reader.reporting():
            url = reader.string(node, "tokens.jwks_url")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise Invalid(node, f"tokens.jwks_url must be an http(s) URL, not {url!r}")
            settings["jwks_url"] = url
    if (node := value("jwks_file")) is not None:
        with reader.reporting():
            file, data = _read_file(reader, base, node, "tokens.jwks_file")
            try:
                found, skipped = keys_from_jwks(jwks_document(data), f"jwks_file {file}")
                if algorithms is not None:
                    found, left_out = usable_keys(found, algorithms)
                    skipped += [f"jwks_file {file}: {warning}, left out" for warning in left_out]
            except ValueError as exc:
                raise Invalid(node, f"tokens.jwks_file {file}: {exc}") from None
            warnings.extend(Problem(reader.file, line_of(node), f"warning: tokens.{warning}") for warning in skipped)
            keys.extend(found)
    if (node := value("public_keys")) is not None:
        with reader.reporting():
            for item in reader.string_nodes(node, "tokens.public_keys"):
                with reader.reporting():
                    file, data = _read_file(reader, base, item, "tokens.public_keys")
                    try:
                        key = key_from_pem(data, f"public_keys {file}")
                    except ValueError as exc:
                        raise Invalid(item, f"tokens.public_keys {file}: {exc}") from None
                    why = None if algorithms is None else unusable(key, algorithms)
                    if why is not None:
                        raise Invalid(item, f"tokens.public_keys {file}: {why}, so every token would be refused")
                    keys.append(key)
    if (node := value("hmac_secret_file")) is not None:
        with reader.reporting():
            hmac = [name for name in algorithms or () if name in HMAC_ALGORITHMS]
            if algorithms is not None and not hmac:
                raise Invalid(node, "tokens.hmac_secret_file is set but tokens.algorithms lists no HS256/HS384/HS512")
            file, data = _read_file(reader, base, node, "tokens.hmac_secret_file")
            try:
                keys.append(key_from_secret(data.strip(), hmac, f"hmac_secret_file {file}"))
            except ValueError as exc:
                raise Invalid(node, f"tokens.hmac_secret_file {file}: {exc}") from None
    for name in ("leeway", "jwks_refetch_interval", "jwks_max_age"):
        if (node := value(name)) is not None:
            with reader.reporting():
                settings[name] = reader.number(node, f"tokens.{name}")
    if (node := value("cache_size")) is not None:
        with reader.reporting():
            settings["cache_size"] = reader.integer(node, "tokens.cache_size")
    if (node := value("grant_type_claim")) is not None:
        with reader.reporting():
            settings["grant_type_claim"] = reader.string(node, "tokens.grant_type_claim")
    if (node := value("scope_claims")) is not None:
        with reader.reporting():
            settings["scope_claims"] = tuple(reader.strings(node, "tokens.scope_claims"))
    return TokenSettings(static_keys=tuple(keys), **settings)


def _algorithms(reader: Reader, node: yaml.Node) -> tuple[str, ...] | None:
    """The allow-list, or None when any item is wrong (each reported)."""
    try:
        items = reader.string_nodes(node, "tokens.algorithms")
    except Invalid as invalid:
        reader.report(invalid.node, invalid.message)
        return None
    names: list[str] = []
    for item in items:
        with reader.reporting():
            name = reader.string(item, "tokens.algorithms item")
            if name.lower() == "none":
                raise Invalid(item, "tokens.algorithms: 'none' is never accepted: unsigned tokens prove nothing")
            if name not in _KNOWN_ALGORITHMS:
                raise Invalid(item, f"tokens.algorithms: unknown algorithm {name!r} (known: {', '.join(sorted(_KNOWN_ALGORITHMS))})")
            names.append(name)
    return tuple(names) if len(names) == len(items) else None


def _read_file(reader: Reader, base: Path, node: yaml.Node, what: str) -> tuple[Path, bytes]:
    file = base / reader.string(node, what)
    reader.read.append(file)
    try:
        return file, file.read_bytes()
    except OSError as exc:
        raise Invalid(node, f"{what}: cannot read {file}: {exc.strerror}") from None


def _proxy(reader: Reader, node: yaml.Node, base: Path) -> ProxySettings:
    entries = reader.mapping(node, "proxy", _PROXY_KEYS)
    settings: dict[str, Any] = {}

    def read(name: str, parse: Any) -> None:
        if name in entries:
            with reader.reporting():
                settings[name] = parse(entries[name][1], f"proxy.{name}")

    for name in ("connect_timeout", "read_timeout", "idle_timeout"):
        read(name, lambda node, what: reader.number(node, what, minimum=0.001))
    read("total_timeout", reader.number)
    read("max_connections", lambda node, what: reader.integer(node, what, minimum=1))
    read("max_rewritten_response", lambda node, what: reader.integer(node, what, minimum=1))
    read("client", lambda node, what: reader.choice(node, what, UPSTREAM_CLIENTS))
    read("underscore_headers", lambda node, what: reader.choice(node, what, UNDERSCORE_HEADERS))
    read("ca_file", lambda node, what: _ca_file(reader, base, node, what))
    read("trusted_proxies", lambda node, what: _networks(reader, node, what))
    if settings.get("client") == "httpx":
        for name in _POOL_ONLY:
            if name in entries:
                reader.report(entries[name][0], f"proxy.{name} is not supported by client: httpx; remove it, or use client: pool")
    return ProxySettings(**settings)


def _ca_file(reader: Reader, base: Path, node: yaml.Node, what: str) -> Path:
    ca_file = base / reader.string(node, what)
    reader.read.append(ca_file)
    if not ca_file.is_file():
        raise Invalid(node, f"{what}: {ca_file} does not exist")
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise Invalid(node, f"{what}: {ca_file} is not a PEM bundle of CA certificates ({exc})") from None
    return ca_file


def _networks(reader: Reader, node: yaml.Node, what: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in reader.string_nodes(node, what):
        with reader.reporting():
            text = reader.string(item, f"{what} item")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise Invalid(item, f"{what}: {text!r} is not an IP address or network") from None
    return tuple(networks)


def _grants(reader: Reader, node: yaml.Node, base: Path) -> GrantSettings:
    entries = reader.mapping(node, "grants", _GRANT_KEYS)
    settings: dict[str, Any] = {"base": base}
    if "store" in entries:
        with reader.reporting():
            store_node = entries["store"][1]
            url = reader.string(store_node, "grants.store")
            try:
                open_store(url, base)  # only parsed: nothing is opened until the gateway starts
            except ValueError as exc:
                raise Invalid(store_node, str(exc)) from None
            settings["store"] = url
    if "refresh" in entries:
        with reader.reporting():
            settings["refresh"] = reader.number(entries["refresh"][1], "grants.refresh", minimum=0.05)
    return GrantSettings(**settings)


def admin_settings(path: str | Path) -> AdminSettings:
    """The admin section alone, read from gateway.yaml (its listener's address and token file),
    so that a table or key file being edited does not make a serving gateway look unhealthy.

    :raises ConfigError: gateway.yaml, or its admin section, does not read.
    """
    path = Path(path)
    reader = Reader()
    root = reader.parse(path)
    try:
        if root is not None:
            admin = reader.mapping(root, "gateway config").get("admin")
            settings = _admin(reader, admin[1], path.parent) if admin is not None else AdminSettings()
            if not reader.problems:
                return settings
    except Invalid as invalid:
        reader.report(invalid.node, invalid.message)
    raise ConfigError(reader.problems)


def _listen(reader: Reader, node: yaml.Node) -> tuple[str, int]:
    text = reader.string(node, "admin.listen")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(node, f"admin.listen must be host:port, e.g. 127.0.0.1:9901, not {text!r}")
    return host.strip("[]"), int(port)


def _admin(reader: Reader, node: yaml.Node, base: Path) -> AdminSettings:
    entries = reader.mapping(node, "admin", _ADMIN_KEYS)
    settings: dict[str, Any] = {}
    if "listen" in entries:
        with reader.reporting():
            settings["listen"] = _listen(reader, entries["listen"][1])
            if "token_file" not in entries:
                raise Invalid(entries["listen"][0], "admin.listen needs admin.token_file: every admin path but health needs a bearer token")
    if "token_file" in entries:
        with reader.reporting():
            file, data = _read_file(reader, base, entries["token_file"][1], "admin.token_file")
            if len(data.strip()) < _MIN_ADMIN_TOKEN:
                raise Invalid(entries["token_file"][1], f"admin.token_file {file}: the token has {len(data.strip())} bytes; at least {_MIN_ADMIN_TOKEN} are required")
            settings["token_file"] = file
    if "metrics" in entries:
        with reader.reporting():
            settings["metrics"] = reader.typed(entries["metrics"][1], "admin.metrics", lambda value: isinstance(value, bool), "true or false")
    return AdminSettings(**settings)


def _limits(reader: Reader, node: yaml.Node) -> LimitSettings:
    entries = reader.mapping(node, "limits", _LIMIT_KEYS)
    settings = {}
    for name in sorted(_LIMIT_KEYS & entries.keys()):
        with reader.reporting():
            settings[name] = reader.integer(entries[name][1], f"limits.{name}", minimum=1)
    return LimitSettings(**settings)
