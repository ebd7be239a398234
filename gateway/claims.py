"""A route's claim conditions (`claims:`): which token claims must equal what, a literal or a
decoded path parameter. A value; the decision judges it before the scope requirement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ClaimCondition:
    claim: str
    value: str  # the literal, or the path parameter's name when `param`
    param: bool = False

    def holds(self, claims: Mapping[str, Any], params: Mapping[str, str]) -> bool:
        """The claim equals the value, or is a list that holds it. An integer claim is read as its
        decimal digits (tenant ids often are numbers); no other type ever equals."""
        expected = params[self.value] if self.param else self.value
        actual = claims.get(self.claim)
        if isinstance(actual, list):
            return any(_equals(item, expected) for item in actual)
        return _equals(actual, expected)

    def __str__(self) -> str:
        return f"{self.claim}: {{{self.value}}}" if self.param else f"{self.claim}: {self.value}"


def _equals(actual: Any, expected: str) -> bool:
    if isinstance(actual, str):
        return actual == expected
    return isinstance(actual, int) and not isinstance(actual, bool) and str(actual) == expected


def unmet(conditions: tuple[ClaimCondition, ...], claims: Mapping[str, Any], params: Mapping[str, str]) -> ClaimCondition | None:
    """The first condition the token's claims do not meet, or None."""
    return next((condition for condition in conditions if not condition.holds(claims, params)), None)
