"""A route table's `scopes:` catalog and `rules:` (docs/route-tables.md, "Scope catalogs and rules"):
every entry and rule read, every reference checked, into one `gateway.catalog.Catalog`."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.catalog import CLIENT_CREDENTIALS, SUFFIXES, Catalog, ScopeEntry, StepUp, find_cycle, is_parameterised, split_parameterised
from gateway.loading.nodes import Invalid, Reader, line_of
from gateway.scopes import SCOPE_TOKEN
from gateway.types import Position

_ENTRY_KEYS = {"description", "implies", "aliases", "suffixes", "condition", "step_up", "requires", "grant_types", "grants"}
_STEP_UP_KEYS = {"acr", "max_age"}
_RULE_KEYS = {"exclusive", "unknown_scopes", "grants"}
GRANT_KINDS = ("client", "user")
UNKNOWN_SCOPES = ("ignore", "refuse")
# a live rule is never skipped silently: a table that needs live state with no grants.store configured is a load error
_LIVE = "needs live grants: configure grants.store in gateway.yaml (e.g. store: sqlite:///grants.db)"

Entries = dict[str, tuple[yaml.Node, yaml.Node]]


class CatalogReader:
    """Reads one table's catalog; problems go to the reader, named by file and line."""

    def __init__(self, reader: Reader, live: bool = False) -> None:
        self.reader = reader
        self.live = live  # a grant store is configured

    def read(self, scopes: tuple[yaml.Node, yaml.Node] | None, rules: tuple[yaml.Node, yaml.Node] | None) -> Catalog:
        reader = self.reader
        raw: dict[str, tuple[yaml.Node, Entries]] = {}  # name -> (key node, its options)
        if scopes is not None:
            with reader.reporting():
                for name, (key_node, value_node) in reader.mapping(scopes[1], "scopes").items():
                    with reader.reporting():
                        self._check_name(name, key_node)
                        options: Entries = {}
                        if not (isinstance(value_node, yaml.ScalarNode) and reader.value(value_node) is None):
                            options = reader.mapping(value_node, f"scopes.{name}", _ENTRY_KEYS)
                        raw[name] = (key_node, options)
        names = set(raw)
        entries = [self._entry(name, options, names, Position(reader.file, line_of(key_node))) for name, (key_node, options) in raw.items()]
        self._check_aliases(entries, raw)
        direct = {entry.name: entry.implies for entry in entries if entry.implies}
        cycle = find_cycle(direct)
        if cycle:
            reader.report(raw[cycle[0]][1]["implies"][1], f"scopes: implication cycle {' -> '.join(cycle)}")
        exclusive: list[tuple[str, ...]] = []
        unknown_scopes = "ignore"
        default_grants: frozenset[str] = frozenset()
        if rules is not None:
            with reader.reporting():
                options = reader.mapping(rules[1], "rules", _RULE_KEYS)
                if "exclusive" in options:
                    with reader.reporting():
                        exclusive = self._exclusive(options["exclusive"][1], names)
                if "unknown_scopes" in options:
                    with reader.reporting():
                        unknown_scopes = reader.choice(options["unknown_scopes"][1], "rules.unknown_scopes", UNKNOWN_SCOPES)
                if "grants" in options:
                    with reader.reporting():
                        default_grants = self._grants(options["grants"][1], "rules.grants")
                        if not self.live:
                            raise Invalid(options["grants"][0], f"rules.grants {_LIVE}")
        return Catalog(entries, exclusive=exclusive, unknown_scopes=unknown_scopes, grants=default_grants)

    def _check_name(self, name: str, node: yaml.Node) -> None:
        if not SCOPE_TOKEN.fullmatch(name):
            raise Invalid(node, f"scopes: {name!r} is not a valid scope (no spaces, quotes or backslashes)")
        if ("{" in name or "}" in name) and split_parameterised(name) is None:
            raise Invalid(node, f"scopes: {name!r}: a parameterised scope has one parameter, as prefix{{name}}suffix (e.g. id:{{bank_id}})")

    def _entry(self, name: str, options: Entries, names: set[str], source: Position) -> ScopeEntry:
        """One entry; a wrong key is reported and left at its default, so the rest is still checked."""
        reader = self.reader
        values: dict[str, Any] = {}
        what = f"scopes.{name}"

        def read(key: str, parse: Any) -> None:
            if key in options:
                with reader.reporting():
                    values[key] = parse(options[key][1], f"{what}.{key}")

        read("description", reader.string)
        read("implies", lambda node, label: self._references(node, label, names))
        read("requires", lambda node, label: self._references(node, label, names))
        read("aliases", self._aliases)
        read("suffixes", lambda node, label: frozenset(self._choices(node, label, SUFFIXES)))
        read("condition", reader.string)
        read("step_up", self._step_up)
        read("grant_types", lambda node, label: frozenset(
            CLIENT_CREDENTIALS if value == "client-credentials" else value for value in reader.strings(node, label)
        ))
        read("grants", self._grants)
        if is_parameterised(name):
            for key in ("suffixes", "aliases"):
                if key in options:
                    reader.report(options[key][0], f"{what}.{key}: a parameterised scope has no {key}")
                    values.pop(key, None)
        if not self.live:
            if "grants" in values:
                reader.report(options["grants"][0], f"{what}.grants {_LIVE}")
            if "offline" in values.get("suffixes", ()):
                reader.report(options["suffixes"][1], f"{what}.suffixes: the offline form {_LIVE} (an offline form counts while the user grant {name}_offline is active)")
            if "condition" in values and "optional" in values.get("suffixes", ()):
                reader.report(options["condition"][0], f"{what}.condition {_LIVE} (an optional form counts once the store records the condition met)")
        return ScopeEntry(name, source=source, **values)

    def _references(self, node: yaml.Node, what: str, names: set[str]) -> tuple[str, ...]:
        found = []
        for item in self.reader.string_nodes(node, what):
            with self.reader.reporting():
                scope = self.reader.string(item, f"{what} item")
                if scope not in names:
                    raise Invalid(item, f"{what}: {scope!r} is not in this table's scopes catalog")
                found.append(scope)
        return tuple(found)

    def _aliases(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        aliases = self.reader.strings(node, what)
        for alias in aliases:
            if not SCOPE_TOKEN.fullmatch(alias):
                raise Invalid(node, f"{what}: {alias!r} is not a valid scope string")
        return tuple(aliases)

    def _check_aliases(self, entries: list[ScopeEntry], raw: dict[str, tuple[yaml.Node, Entries]]) -> None:
        owners: dict[str, str] = {}
        for entry in entries:
            for alias in entry.aliases:
                node = raw[entry.name][1]["aliases"][1]
                if alias in raw:
                    self.reader.report(node, f"scopes.{entry.name}.aliases: {alias!r} is a scope of this catalog itself")
                elif alias in owners:
                    self.reader.report(node, f"scopes.{entry.name}.aliases: {alias!r} is already an alias of {owners[alias]}")
                owners.setdefault(alias, entry.name)

    def _choices(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> list[str]:
        values = self.reader.strings(node, what)
        for value in values:
            if value not in allowed:
                raise Invalid(node, f"{what}: {value!r} is not one of {', '.join(allowed)}")
        if len(set(values)) != len(values):
            raise Invalid(node, f"{what}: a value is listed twice")
        return values

    def _grants(self, node: yaml.Node, what: str) -> frozenset[str]:
        return frozenset(self._choices(node, what, GRANT_KINDS))

    def _step_up(self, node: yaml.Node, what: str) -> StepUp:
        options = self.reader.mapping(node, what, _STEP_UP_KEYS)
        if "acr" not in options:
            raise Invalid(node, f"{what} needs acr: the accepted values of the token's acr (or amr)")
        acr = tuple(self.reader.strings(options["acr"][1], f"{what}.acr"))
        max_age = self.reader.number(options["max_age"][1], f"{what}.max_age", minimum=1) if "max_age" in options else None
        return StepUp(acr, max_age)

    def _exclusive(self, node: yaml.Node, names: set[str]) -> list[tuple[str, ...]]:
        if not isinstance(node, yaml.SequenceNode):
            raise Invalid(node, "rules.exclusive must be a list of groups, each a list of scopes")
        groups = []
        for group in node.value:
            with self.reader.reporting():
                if not isinstance(group, yaml.SequenceNode) or len(group.value) < 2:
                    raise Invalid(group, 'rules.exclusive: a group is a list of at least two scopes (quote "id:{bank_id}": YAML reads { in a flow list as a mapping)')
                members = self._references(group, "rules.exclusive", names)
                if len(members) == len(group.value):
                    groups.append(members)
        return groups
