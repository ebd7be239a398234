"""Effective scopes and route requirements: what a route asks for and whether a token meets it.

Effective scopes are their own step (DESIGN.md): the token's granted scopes expanded by the
implications of the API's catalog, in `ScopeCatalog.effective`, apart from the decision that
checks them against a requirement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


class Access(Enum):
    PUBLIC = "public"  # no token needed
    AUTHENTICATED = "authenticated"  # any valid token
    SCOPES = "scopes"  # one of the alternatives must be held whole


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a route asks of a caller: any one of `alternatives`, each a set held together."""

    access: Access
    alternatives: tuple[frozenset[str], ...] = ()

    def met_by(self, effective: frozenset[str]) -> bool:
        if self.access is not Access.SCOPES:
            return True
        for alternative in self.alternatives:  # a loop, not any(): no generator per request
            if alternative <= effective:
                return True
        return False

    def first_alternative(self) -> str:
        """The scopes of the first alternative, space-separated: the `scope` of a 403 challenge."""
        return " ".join(sorted(self.alternatives[0])) if self.alternatives else ""

    def describe(self) -> str:
        if self.access is not Access.SCOPES:
            return self.access.value
        options = [" and ".join(sorted(alternative)) for alternative in self.alternatives]
        if len(options) == 1:
            return options[0]
        return "one of: " + "; ".join(options)


# distinct granted scope sets whose effective scopes a catalog remembers
_EFFECTIVE_MAX = 1024


@dataclass(frozen=True, slots=True)
class ScopeCatalog:
    """The scopes an API declares: descriptions and the closure of `implies`."""

    descriptions: Mapping[str, str] = field(default_factory=dict)
    # scope -> every scope it implies, directly or through others (never itself)
    implied: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # granted -> effective: callers share a few scope sets, and today the answer depends on
    # nothing else (a source of grants that changes at run time would have to be in the key)
    _effective: dict[frozenset[str], frozenset[str]] = field(default_factory=dict, init=False, compare=False, repr=False)

    def effective(self, granted: frozenset[str]) -> frozenset[str]:
        """The scopes a token holds for this API once implications are applied."""
        if not self.implied:
            return granted
        found = self._effective.get(granted)
        if found is None:
            extra = [self.implied[scope] for scope in granted if scope in self.implied]
            found = granted.union(*extra) if extra else granted
            if len(self._effective) >= _EFFECTIVE_MAX:
                self._effective.clear()
            self._effective[granted] = found
        return found


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
    """One implication cycle as a path `[a, b, ..., a]`, or None."""
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
