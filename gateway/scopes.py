"""Route requirements: what a route asks of a caller, and whether a set of effective scopes
(worked out by `gateway.catalog`) meets it; the request a decision allowed (`Allowed`), and the
requirements an exchange found below its route that the caller does not meet (`Unmet`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Access(Enum):
    PUBLIC = "public"  # no token needed
    AUTHENTICATED = "authenticated"  # any valid token
    SCOPES = "scopes"  # one of the alternatives must be held whole


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a route asks of a caller: any one of `alternatives`, each a set held together."""

    access: Access
    alternatives: tuple[frozenset[str], ...] = ()
    # some scope names a path parameter (`id:{bankId}`): `bind` before checking
    bound: bool = False

    def met_by(self, effective: frozenset[str]) -> bool:
        if self.access is not Access.SCOPES:
            return True
        for alternative in self.alternatives:  # a loop, not any(): no generator per request
            if alternative <= effective:
                return True
        return False

    def bind(self, params: Mapping[str, str]) -> Requirement:
        """This requirement with each `{param}` replaced by the path parameter's value."""
        if not self.bound:
            return self
        alternatives = tuple(
            frozenset(_PARAMETER.sub(lambda match: params[match.group(1)], scope) for scope in alternative)
            for alternative in self.alternatives
        )
        return Requirement(self.access, alternatives)

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


def all_of(requirements: Iterable[Requirement]) -> Requirement:
    """One requirement that holds when each of `requirements` does: each alternative of one,
    joined with each of every other (a GraphQL field that its own directive, its type and the
    route's `fields:` all guard). No requirement at all is `public`."""
    requirements = tuple(requirements)
    scoped = [requirement for requirement in requirements if requirement.access is Access.SCOPES]
    if not scoped:
        accesses = {requirement.access for requirement in requirements}
        return Requirement(Access.AUTHENTICATED if Access.AUTHENTICATED in accesses else Access.PUBLIC)
    alternatives: list[frozenset[str]] = [frozenset()]
    for requirement in scoped:
        alternatives = [held | alternative for held in alternatives for alternative in requirement.alternatives]
    # an alternative holding another adds nothing: the smaller one meets first
    kept = tuple(dict.fromkeys(alternative for alternative in alternatives if not any(other < alternative for other in alternatives)))
    return Requirement(Access.SCOPES, kept)


# per-request values are not frozen: a frozen dataclass's __init__ costs four times as much
@dataclass(slots=True)
class Allowed:
    """A request the decision allowed: who is calling and with which effective scopes."""

    subject: str | None
    client: str | None
    scopes: frozenset[str]


class Unmet(Exception):
    """Requirements an exchange found below its route (the fields a GraphQL operation selects)
    that the caller does not meet. The exchange says what they are and how to word each answer;
    the decision judges them with the route's own rule (`decision.judge_unmet`): 401 without a
    token, 401 step-up or 404 when they would be met after a step-up or once the user meets a
    condition, else 403 forbidden.

    :param requirements: each unmet requirement; None: one that nothing covers (deny by default).
    :param what: what asks them, for a step-up or condition answer (`the operation (...)`).
    :param anonymous: the 401's description, without a token.
    :param forbidden: the 403's description (the decision adds why live scopes did not count).
    :param extra: members every answer to it carries (GraphQL `errors`).
    """

    def __init__(
        self, requirements: Sequence[Requirement | None], what: str, anonymous: str, forbidden: str, extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(forbidden)
        self.requirements = tuple(requirements)
        self.what = what
        self.anonymous = anonymous
        self.forbidden = forbidden
        self.extra = extra or {}
