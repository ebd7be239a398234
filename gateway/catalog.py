"""Scope catalogs: what a token's scope strings mean for one API (docs/route-tables.md, "Scope
catalogs and rules" and "Live grants").

    token scopes -> 1. normalise: aliases, suffix forms (_offline, _optional), parameter instances
                 -> 2. rules: suffixes offered and in order, exclusive groups, requires,
                       grant types, unknown scopes                          403 invalid_scope
                 -> 3. live state (the grant store)
                 -> 4. step-up: acr / amr and auth_time                     401 step-up
                 -> 5. implications, applied to what counts

What depends only on the token's scope strings is worked out once per distinct scope set and
remembered (`Catalog.assess`); what depends on the token's other claims (its grant type, its
authentication) is left to the decision, for the few tokens that hold such scopes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.scopes import PARAMETER, SCOPE_TOKEN
from gateway.types import Position

SUFFIXES = ("offline", "optional")
# the ending of each suffix form, longest first: `_offline_optional` before `_optional`
_FORMS = (("_offline_optional", frozenset(SUFFIXES)), ("_offline", frozenset({"offline"})), ("_optional", frozenset({"optional"})))
_WRONG_ORDER = "_optional_offline"
CLIENT_CREDENTIALS = "client_credentials"
# distinct scope sets a catalog remembers the assessment of
_ASSESSED_MAX = 1024


@dataclass(frozen=True, slots=True)
class StepUp:
    """A scope that counts only with a fresh or strong enough user authentication (RFC 9470)."""

    acr: tuple[str, ...]  # accepted values of the token's `acr`, or of any `amr` entry
    max_age: float | None = None  # seconds since `auth_time`, at most


@dataclass(frozen=True, slots=True)
class ScopeEntry:
    """One scope of a catalog, as its table declares it."""

    name: str
    description: str | None = None
    implies: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    suffixes: frozenset[str] = frozenset()
    condition: str | None = None
    step_up: StepUp | None = None
    requires: tuple[str, ...] = ()  # held only with one of these
    grant_types: frozenset[str] | None = None  # None: any grant type
    grants: frozenset[str] | None = None  # None: the API's `rules.grants`
    source: Position | None = field(default=None, compare=False)  # where its table declares it; None: built in code


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A parameterised scope such as `id:{bank_id}`: it stands for `id:<anything>`."""

    name: str
    prefix: str
    suffix: str

    def matches(self, scope: str) -> bool:
        return len(scope) > len(self.prefix) + len(self.suffix) and scope.startswith(self.prefix) and scope.endswith(self.suffix)


class GrantNeed(NamedTuple):
    """A grant a live scope counts only with, while it is active."""

    kind: str  # "client" (the client's grant), "user" (the user's to the client) or "offline" (the user's offline one)
    scope: str  # the grant's scope: the live scope itself, or `<scope>_offline` for its offline form


def grants_needed(scope: str, form: frozenset[str], grants: frozenset[str]) -> tuple[GrantNeed, ...]:
    """The grants the live scope `scope`, read in `form` and whose entry needs `grants`, counts
    only with: the one rule, for the decision's shortcut and for its step 3 alike."""
    needs = [GrantNeed(kind, scope) for kind in ("client", "user") if kind in grants]
    if "offline" in form:
        needs.append(GrantNeed("offline", f"{scope}_offline"))
    return tuple(needs)


def is_parameterised(name: str) -> bool:
    return "{" in name


def split_parameterised(name: str) -> tuple[str, str] | None:
    """`id:{bank_id}` -> ('id:', ''): the text around its one parameter, or None if it has not
    exactly one `{name}`."""
    found = PARAMETER.findall(name)
    if len(found) != 1 or name.count("{") != 1 or name.count("}") != 1:
        return None
    prefix, _, rest = name.partition("{")
    return prefix, rest.partition("}")[2]


@dataclass(frozen=True, slots=True)
class Reading:
    """One scope string of a token, read against the catalog."""

    raw: str
    scope: str | None  # the canonical scope ('id:B1' for an instance); None when unknown
    entry: str | None  # the catalog entry it belongs to ('id:{bank_id}' for an instance)
    form: frozenset[str] = frozenset()  # the suffixes of a suffix form; empty for the scope itself
    problem: str | None = None  # why this string breaks a rule on its own

    def describe(self) -> str:
        if self.problem:
            return f"{self.raw}: {self.problem}"
        if self.scope is None:
            return f"{self.raw}: not in the catalog"
        if self.form:
            return f"{self.raw} -> {self.scope}, its {'_'.join(sorted(self.form, key=SUFFIXES.index))} form"
        if self.raw != self.scope:
            return f"{self.raw} -> {self.scope} (alias)"
        if self.entry != self.scope:
            return f"{self.raw}: an instance of {self.entry}"
        return self.raw


@dataclass(frozen=True, slots=True)
class Assessment:
    """What one set of token scopes means for one API, before anything that depends on the
    token's other claims."""

    readings: tuple[Reading, ...]
    refusal: str | None  # the rule the scopes break, in words: 403 invalid_scope
    counted: frozenset[str]  # canonical scopes that count now, before implications
    step_up: tuple[tuple[str, StepUp], ...]  # scopes that count only with a step-up
    grant_typed: tuple[tuple[str, frozenset[str]], ...]  # scopes allowed only to some grant types
    # scopes that count only through the grant store: the reading, and the grants its entry needs
    live: tuple[tuple[Reading, frozenset[str]], ...]
    effective: frozenset[str]  # `counted` with its implications
    # nothing depends on the token's other claims: `effective` is the whole answer
    simple: bool
    # for the usual live request, where every live scope counts: each grant the live scopes need,
    # each condition they need met, and the effective scopes then; only when nothing but the
    # grant store is in play
    live_needs: tuple[GrantNeed, ...] = ()
    live_conditions: tuple[str, ...] = ()
    effective_with_live: frozenset[str] | None = None

    @property
    def ignored(self) -> tuple[str, ...]:
        """The token's scopes the catalog lacks, left out (`unknown_scopes: ignore`)."""
        return tuple(reading.raw for reading in self.readings if reading.scope is None and not reading.problem)


class Catalog:
    """An API's scopes and rules, compiled. An empty catalog leaves a token's scopes as they are."""

    def __init__(
        self,
        entries: Iterable[ScopeEntry] = (),
        *,
        exclusive: Iterable[tuple[str, ...]] = (),
        unknown_scopes: str = "ignore",
        grants: frozenset[str] = frozenset(),
    ) -> None:
        self.entries: dict[str, ScopeEntry] = {entry.name: entry for entry in entries}
        self.exclusive = tuple(exclusive)
        self.refuse_unknown = unknown_scopes == "refuse"
        self.grants = grants
        self.aliases = {alias: entry.name for entry in self.entries.values() for alias in entry.aliases}
        self._patterns = tuple(
            _Pattern(name, *parts) for name in self.entries if (parts := split_parameterised(name)) is not None
        )
        self.implied = implication_closure({name: entry.implies for name, entry in self.entries.items() if entry.implies})
        # some scope counts only through the grant store: requests of this API may need a view
        self.live = bool(grants) or any(
            entry.grants or "offline" in entry.suffixes or (entry.condition is not None and "optional" in entry.suffixes)
            for entry in self.entries.values()
        )
        self._assessed: dict[frozenset[str], Assessment] = {}

    @property
    def descriptions(self) -> Mapping[str, str]:
        return {name: entry.description for name, entry in self.entries.items() if entry.description}

    def knows(self, scope: str) -> bool:
        """Whether a requirement may name `scope`: a catalog scope, or an instance of a parameterised one."""
        return scope in self.entries or any(pattern.matches(scope) for pattern in self._patterns)

    def pattern_for(self, template: str) -> str | None:
        """The parameterised entry a requirement's `id:{bankId}` stands for, if any."""
        parts = split_parameterised(template)
        if parts is None:
            return None
        return next((pattern.name for pattern in self._patterns if (pattern.prefix, pattern.suffix) == parts), None)

    def read(self, raw: str) -> Reading:
        """Step 1: one token scope string, normalised."""
        entry = self.entries.get(raw)
        if entry is not None and not is_parameterised(raw):
            return Reading(raw, raw, raw)
        alias = self.aliases.get(raw)
        if alias is not None:
            return Reading(raw, alias, alias)
        if raw.endswith(_WRONG_ORDER) and raw[: -len(_WRONG_ORDER)] in self.entries:
            return Reading(raw, None, raw[: -len(_WRONG_ORDER)], problem="suffixes in the wrong order (write _offline_optional: offline first)")
        for ending, form in _FORMS:
            base = raw[: -len(ending)]
            if raw.endswith(ending) and base in self.entries and not is_parameterised(base):
                missing = form - self.entries[base].suffixes
                if missing:
                    offered = ", ".join(f"_{suffix}" for suffix in SUFFIXES if suffix in self.entries[base].suffixes) or "none"
                    return Reading(raw, None, base, form, problem=f"{base} does not offer the {'/'.join(sorted(missing))} suffix (offered: {offered})")
                return Reading(raw, base, base, form)
        for pattern in self._patterns:
            if pattern.matches(raw):
                return Reading(raw, raw, pattern.name)
        return Reading(raw, None, None)

    def assess(self, granted: frozenset[str]) -> Assessment:
        """Steps 1, 2 and 5 for a token's scope set (remembered: callers share a few sets)."""
        found = self._assessed.get(granted)
        if found is None:
            found = self._assess(granted)
            if len(self._assessed) >= _ASSESSED_MAX:
                self._assessed.clear()
            self._assessed[granted] = found
        return found

    def _assess(self, granted: frozenset[str]) -> Assessment:
        if not self.entries:
            readings = tuple(Reading(raw, raw, None) for raw in sorted(granted))
            return Assessment(readings, None, granted, (), (), (), granted, True)
        readings = tuple(self.read(raw) for raw in sorted(granted))
        known = [reading for reading in readings if reading.scope is not None]
        refusal = next(self.broken_rules(readings), None)
        counted: set[str] = set()
        step_up: list[tuple[str, StepUp]] = []
        grant_typed: list[tuple[str, frozenset[str]]] = []
        live: list[tuple[Reading, frozenset[str]]] = []
        for reading in known:
            entry = self.entries[reading.entry]  # type: ignore[index]  # a known reading has its entry
            if entry.grant_types is not None:
                grant_typed.append((reading.scope, entry.grant_types))  # type: ignore[arg-type]  # known: scope not None
            grants = self.grants if entry.grants is None else entry.grants
            if grants or "offline" in reading.form or (entry.condition is not None and "optional" in reading.form):
                live.append((reading, grants))  # counts only through the grant store (step 3)
                continue
            if entry.step_up is not None:
                step_up.append((reading.scope, entry.step_up))  # type: ignore[arg-type]  # known: scope not None
                continue
            counted.add(reading.scope)  # type: ignore[arg-type]  # known: scope not None
        counted_set = frozenset(counted)
        simple = refusal is None and not step_up and not grant_typed and not live
        live_needs: tuple[GrantNeed, ...] = ()
        live_conditions: tuple[str, ...] = ()
        effective_with_live = None
        if live and refusal is None and not step_up and not grant_typed:
            live_needs, live_conditions = self._live_needs(live)
            effective_with_live = self.with_implications(counted_set | {reading.scope for reading, _ in live})  # type: ignore[misc]  # known readings: no None scope
        return Assessment(
            readings, refusal, counted_set, tuple(step_up), tuple(grant_typed), tuple(live), self.with_implications(counted_set), simple,
            live_needs, live_conditions, effective_with_live,
        )

    def _live_needs(self, live: list[tuple[Reading, frozenset[str]]]) -> tuple[tuple[GrantNeed, ...], tuple[str, ...]]:
        """The grants and conditions that make every live scope count (step 3 of the decision)."""
        needs: list[GrantNeed] = []
        conditions: list[str] = []
        for reading, grants in live:
            scope = reading.scope
            assert scope is not None and reading.entry is not None
            needs.extend(grants_needed(scope, reading.form, grants))
            if "optional" in reading.form and self.entries[reading.entry].condition is not None:
                conditions.append(scope)
        return tuple(needs), tuple(conditions)

    def broken_rules(self, readings: Iterable[Reading]) -> Iterator[str]:
        """Step 2, for what the scope strings alone decide: each rule broken, in words."""
        readings = tuple(readings)
        for reading in readings:
            if reading.problem:
                yield f"{reading.raw}: {reading.problem}"
        if self.refuse_unknown:
            unknown = [reading.raw for reading in readings if reading.scope is None and not reading.problem]
            if unknown:
                yield f"unknown scopes are refused by this API: {' '.join(unknown)}"
        known = [reading for reading in readings if reading.scope is not None]
        for group in self.exclusive:
            members = [reading.scope for reading in known if reading.entry in group]
            if len(members) > 1:
                yield f"at most one of {', '.join(group)} may be held at once; the token holds {' and '.join(members)}"  # type: ignore[arg-type]  # known: scope not None
        held = {reading.scope for reading in known}
        for reading in known:
            requires = self.entries[reading.entry].requires  # type: ignore[index]  # a known reading has its entry
            if requires and not held.intersection(requires):
                yield f"{reading.scope} is held only with one of {', '.join(requires)}, and the token holds none"

    def with_implications(self, scopes: frozenset[str]) -> frozenset[str]:
        """Step 5: `scopes` and every scope they imply (an instance implies what its entry does)."""
        extra = []
        for scope in scopes:
            implied = self.implied.get(scope)
            if implied is None and self._patterns and scope not in self.entries:
                entry = next((pattern.name for pattern in self._patterns if pattern.matches(scope)), None)
                implied = self.implied.get(entry) if entry else None
            if implied:
                extra.append(implied)
        return scopes.union(*extra) if extra else scopes


def implication_closure(direct: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    """Expand direct `implies` lists into their transitive closure (the caller rejects cycles)."""
    closure: dict[str, frozenset[str]] = {}

    def expand(scope: str, seen: frozenset[str]) -> frozenset[str]:
        if scope in closure:
            return closure[scope]
        result: set[str] = set()
        for implied in direct.get(scope, ()):
            if implied in seen:
                continue
            result.add(implied)
            result |= expand(implied, seen | {implied})
        closure[scope] = frozenset(result - {scope})
        return closure[scope]

    for scope in direct:
        expand(scope, frozenset({scope}))
    return {scope: implied for scope, implied in closure.items() if implied}


def find_cycle(direct: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """One cycle as a path `[a, b, ..., a]`, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(scope: str, path: list[str]) -> list[str] | None:
        state[scope] = 1
        for implied in direct.get(scope, ()):
            if state.get(implied) == 1:
                return [*path[path.index(implied):], implied] if implied in path else [scope, implied]
            if implied not in state:
                found = visit(implied, [*path, implied])
                if found:
                    return found
        state[scope] = 2
        return None

    for scope in direct:
        if scope not in state:
            found = visit(scope, [scope])
            if found:
                return found
    return None


def grant_scope_problem(catalog: Catalog, scope: str) -> str | None:
    """Why `scope` cannot be granted on an API with `catalog`, or None: a grant names a catalog
    scope, or `X_offline` for a user's offline consent to X (any scope-token without a catalog)."""
    if not SCOPE_TOKEN.fullmatch(scope):
        return f"{scope!r} is not a valid scope (RFC 6749 3.3)"
    if not catalog.entries or scope in catalog.entries:
        return None
    base = scope.removesuffix("_offline")
    if base != scope and "offline" in getattr(catalog.entries.get(base), "suffixes", ()):
        return None
    return f"{scope!r} is neither a scope of this API's catalog nor the _offline form of one that offers it"
