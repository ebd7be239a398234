"""A cases file for `gateway test`: a YAML list of requests and what must come of each, read into
`gateway.cases.Case` values, every problem reported as `file:line: message`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.cases import DATE_CLAIMS, MINT, Case, Condition, Expectation, GrantFixture, Probe, claim_time
from gateway.catalog import grant_scope_problem
from gateway.errors import Refusal
from gateway.loading.nodes import ConfigError, Invalid, Reader
from gateway.routing import route
from gateway.settings import Config
from gateway.tables import Tables

_CASE_KEYS = {"name", "request", "scopes", "claims", "token", "grants", "conditions", "headers", "body", "expect"}
_GRANT_KEYS = {"api", "client", "subject", "scope", "expires", "ttl"}
_CONDITION_KEYS = {"api", "subject", "scope"}
Entries = dict[str, tuple[yaml.Node, yaml.Node]]
T = TypeVar("T")


def load_cases(path: str | Path, config: Config) -> list[Case]:
    """Every case of the file at `path`, checked against the tables of `config`.

    :raises ConfigError: with one `Problem` per thing wrong, in line order.
    """
    reader = Reader()
    root = reader.parse(Path(path))
    if root is None:
        raise ConfigError(reader.problems)
    if not isinstance(root, yaml.SequenceNode) or not root.value:
        reader.report(root, "a cases file is a non-empty list of cases, each '- request: GET /path' with its caller and 'expect:'")
        raise ConfigError(reader.problems)
    cases = []
    for node in root.value:
        with reader.reporting():
            case = _CaseReader(reader, config, node).read()
            if case is not None:
                cases.append(case)
    if reader.problems:
        raise ConfigError(reader.problems)
    return cases


def matched_api(tables: Tables, probe: Probe) -> str | None:
    """The name of the table whose route the probe's request matches, or None: a case's grants and
    conditions belong to it unless they name their `api`."""
    path, _, query = probe.target.partition("?")
    try:
        return route(tables, probe.method, path.encode("utf-8"), query.encode("utf-8")).route.api.name
    except Refusal:
        return None


class _CaseReader:
    """One case of the list."""

    def __init__(self, reader: Reader, config: Config, node: yaml.Node) -> None:
        self.reader = reader
        self.config = config
        self.node = node
        self.entries = reader.mapping(node, "case", _CASE_KEYS)
        self.probe: Probe | None = None
        self.options: dict[str, Any] = {}  # the probe's, beyond its request line

    def _value(self, key: str) -> yaml.Node | None:
        return self.entries[key][1] if key in self.entries else None

    def read(self) -> Case | None:
        reader = self.reader
        before = len(reader.problems)
        expect = None
        for key, example in (("request", "request: GET /path"), ("expect", "expect: forward, or expect: 403 forbidden")):
            if key not in self.entries:
                reader.report(self.node, f"case: missing key {key!r} ({example})")
        if (node := self._value("request")) is not None:
            with reader.reporting():
                try:
                    self.probe = Probe.parse(reader.string(node, "request"))
                except ValueError as exc:
                    raise Invalid(node, f"request: {exc}") from None
        if (node := self._value("expect")) is not None:
            with reader.reporting():
                try:
                    expect = Expectation.parse(str(reader.value(node)))
                except ValueError as exc:
                    raise Invalid(node, str(exc)) from None
        name = None
        if (node := self._value("name")) is not None:
            with reader.reporting():
                name = reader.string(node, "name")
        self._caller()
        for key, read in (("headers", self._headers), ("body", self._body), ("grants", self._grants), ("conditions", self._conditions)):
            if (node := self._value(key)) is not None:
                with reader.reporting():
                    self.options[key] = read(node)
        if len(reader.problems) > before or self.probe is None or expect is None:
            return None
        return Case(Probe(self.probe.method, self.probe.target, **self.options), expect, name, f"{reader.file}:{self.node.start_mark.line + 1}")

    def _caller(self) -> None:
        reader = self.reader
        token, scopes, claims = self._value("token"), self._value("scopes"), self._value("claims")
        if token is None and scopes is None and claims is None:
            reader.report(self.node, "case: say who calls: 'scopes:' (a minted token's scopes), 'claims:', or 'token: none'")
            return
        if token is not None:
            with reader.reporting():
                if scopes is not None or claims is not None:
                    raise Invalid(token, "token: a case sends either a given token (or none) or a minted one (scopes:, claims:), not both")
                text = reader.string(token, "token")
                self.options["token"] = None if text == "none" else text
        if scopes is not None:
            with reader.reporting():
                if isinstance(scopes, yaml.ScalarNode):
                    self.options["scopes"] = reader.typed(scopes, "scopes", lambda value: isinstance(value, str), "a space-separated string or a list of scopes")
                elif isinstance(scopes, yaml.SequenceNode) and not scopes.value:
                    self.options["scopes"] = ()  # a token whose scope claim is empty
                else:
                    self.options["scopes"] = tuple(reader.strings(scopes, "scopes"))
        if claims is not None:
            with reader.reporting():
                self.options["claims"] = {}
                for name, (_, value) in reader.mapping(claims, "claims").items():
                    with reader.reporting():
                        self.options["claims"][name] = self._claim(name, value)

    def _claim(self, name: str, node: yaml.Node) -> Any:
        value = self.reader.value(node)
        if name in DATE_CLAIMS and value is not None:
            try:
                claim_time(value, 0)
            except ValueError as exc:
                raise Invalid(node, f"claims.{name}: {exc}") from None
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise Invalid(node, f"claims.{name}: {value!r} is not a JSON value (quote it to send it as a string)") from None
        return value

    def _headers(self, node: yaml.Node) -> tuple[tuple[str, str], ...]:
        headers = []
        for name, (_, value) in self.reader.mapping(node, "headers").items():
            text = self.reader.value(value)
            if not isinstance(text, (str, int)) or isinstance(text, bool):
                raise Invalid(value, f"headers.{name} must be a string, not {text!r}")
            headers.append((name, str(text)))
        return tuple(headers)

    def _body(self, node: yaml.Node) -> bytes:
        text: str = self.reader.typed(node, "body", lambda value: isinstance(value, str), "a string")
        return text.encode("utf-8")

    def _grants(self, node: yaml.Node) -> tuple[GrantFixture, ...]:
        return tuple(self._stored(node, "grant", _GRANT_KEYS, self._grant))

    def _conditions(self, node: yaml.Node) -> tuple[Condition, ...]:
        return tuple(self._stored(node, "condition", _CONDITION_KEYS, self._condition))

    def _grant(self, item: yaml.Node, entries: Entries, fields: dict[str, Any]) -> GrantFixture:
        if "client" in entries:
            fields["client"] = self.reader.string(entries["client"][1], "grant client")
        elif self._given_token():
            raise Invalid(item, "grant: name its client: the case sends no minted token to take it from")
        if "expires" in entries and "ttl" in entries:
            raise Invalid(entries["ttl"][0], "grant: give expires or ttl, not both")
        if "expires" in entries:
            fields["expires_at"] = self._moment(entries["expires"][1])
        if "ttl" in entries:
            fields["ttl"] = self.reader.typed(
                entries["ttl"][1], "grant ttl", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
                "seconds from the request (negative: expired that long before)",
            )
        return GrantFixture(**fields)

    def _condition(self, item: yaml.Node, entries: Entries, fields: dict[str, Any]) -> Condition:
        if "subject" not in entries and self._given_token():
            raise Invalid(item, "condition: name its subject: the case sends no minted token to take it from")
        return Condition(**fields)

    def _given_token(self) -> bool:
        return self.options.get("token", MINT) is not MINT

    def _stored(self, node: yaml.Node, what: str, keys: set[str], build: Callable[[yaml.Node, Entries, dict[str, Any]], T]) -> list[T]:
        """Each grant or condition of a list, its api, scope and subject read (the scope checked
        against the api's catalog) and the rest by `build`."""
        reader = self.reader
        if self.config.grants.store is None:
            raise Invalid(node, f"{what}s: {self.config.source} names no grant store (grants.store) to hold them")
        if not isinstance(node, yaml.SequenceNode):
            raise Invalid(node, f"{what}s must be a list of mappings, e.g. - {{scope: S}}")
        apis = {api.name: api for api in self.config.tables.apis}
        stored = []
        for item in node.value:
            with reader.reporting():
                entries = reader.mapping(item, what, keys)
                fields: dict[str, Any] = {}
                if "api" in entries:
                    api_node = entries["api"][1]
                    fields["api"] = reader.string(api_node, f"{what} api")
                    if fields["api"] not in apis:
                        raise Invalid(api_node, f"{what}: no route table is named {fields['api']!r} (tables: {', '.join(apis)})")
                api = fields.get("api") or (matched_api(self.config.tables, self.probe) if self.probe else None)
                if api is None:
                    raise Invalid(item, f"{what}: the request matches no route: name the table with api:")
                if "scope" not in entries:
                    raise Invalid(item, f"{what}: missing key 'scope'")
                fields["scope"] = reader.string(entries["scope"][1], f"{what} scope")
                problem = grant_scope_problem(apis[api].catalog, fields["scope"])
                if problem:
                    raise Invalid(entries["scope"][1], f"{what}: {problem} ({api})")
                if "subject" in entries:
                    fields["subject"] = reader.string(entries["subject"][1], f"{what} subject")
                stored.append(build(item, entries, fields))
        return stored

    def _moment(self, node: yaml.Node) -> float:
        # YAML reads an unquoted RFC 3339 time as a timestamp of its own
        value = self.reader.value(node)
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise Invalid(node, f"grant expires must be an RFC 3339 time with its zone, unquoted, e.g. 2026-12-31T23:59:59Z, not {value!r}")
        return value.timestamp()
