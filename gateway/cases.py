"""The cases of `gateway test` and of the pytest plugin, as values: a request to put to the gateway
(`Probe`), with the grants and conditions the grant store holds before it (`GrantFixture`,
`Condition`), what must come of it (`Expectation`), and what did (`Decision`). `loading.cases`
reads them from a cases file; `harness` runs them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.types import Headers

if TYPE_CHECKING:
    import httpx

# NumericDate claims (RFC 7519, OpenID Connect's auth_time) that may be written relative to the
# moment the token is minted: "now", "now-60", "now+3600"
DATE_CLAIMS = frozenset({"exp", "nbf", "iat", "auth_time"})
_RELATIVE_TIME = re.compile(r"now(?:\s*([+-])\s*(\d+(?:\.\d+)?))?")
_REQUEST_LINE = re.compile(r"([A-Z]+) (/\S*)")
_EXPECTATION = re.compile(r"(\d{3})(?: ([a-z_]+))?")


class Mint(enum.Enum):
    TOKEN = "mint"


MINT: Literal[Mint.TOKEN] = Mint.TOKEN  # the default caller: a token minted from `scopes` and `claims`


def claim_time(value: Any, now: float) -> float:
    """A date claim's value: a number as given, "now", "now-N" or "now+N" as seconds since the epoch.

    :raises ValueError: anything else.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    matched = _RELATIVE_TIME.fullmatch(value) if isinstance(value, str) else None
    if matched is None:
        raise ValueError(f"{value!r} is not a time: write seconds since the epoch, now, now-SECONDS or now+SECONDS")
    sign, seconds = matched.groups()
    offset = 0.0 if seconds is None else float(seconds) * (-1 if sign == "-" else 1)
    return int(now + offset)


@dataclass(frozen=True, slots=True)
class GrantFixture:
    """A client grant (a user grant with `subject`) the store holds before the request.

    `api` defaults to the table of the route the request matches, `client` to the token's client;
    `ttl` is seconds from the request (negative: expired that long ago), `expires_at` an epoch time.
    """

    scope: str
    api: str | None = None
    client: str | None = None
    subject: str | None = None
    expires_at: float | None = None
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    """A scope's condition the store records as met; `subject` defaults to the token's `sub`."""

    scope: str
    api: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    """One request to put to the gateway, and who sends it.

    :param token: `MINT` (a token minted from `scopes` and `claims`), None (no Authorization
        header) or a token to send as it is.
    """

    method: str
    target: str  # path and query string, sent byte for byte
    scopes: str | Sequence[str] | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    token: str | None | Literal[Mint.TOKEN] = MINT
    grants: Sequence[GrantFixture] = ()
    conditions: Sequence[Condition] = ()
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""

    @classmethod
    def parse(cls, line: str, **options: Any) -> Probe:
        """A probe of a request line, "METHOD /path?query".

        :raises ValueError: not a request line.
        """
        matched = _REQUEST_LINE.fullmatch(line.strip())
        if matched is None:
            raise ValueError(f"{line!r} is not a request line such as 'GET /path?query'")
        return cls(matched[1], matched[2], **options)

    @property
    def line(self) -> str:
        return f"{self.method} {self.target}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the gateway answered, and what reached the upstream (None: nothing did)."""

    status: int
    headers: Headers
    body: bytes
    upstream_request: httpx.Request | None
    error: str | None = None  # the refusal's `error`, when the gateway answered itself
    description: str | None = None  # its `error_description`

    @property
    def forwarded(self) -> bool:
        return self.upstream_request is not None

    @property
    def outcome(self) -> str:
        """`forward`, or the refusal as `STATUS error`, as a cases file writes an expectation."""
        if self.forwarded:
            return "forward"
        return f"{self.status} {self.error}" if self.error else str(self.status)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        return next((value.decode("latin-1") for key, value in self.headers if key == wanted), None)


@dataclass(frozen=True, slots=True)
class Expectation:
    """`forward` (the upstream was reached), or `STATUS [error]` (refused so, the upstream not reached)."""

    status: int | None = None  # None: forward
    error: str | None = None

    @classmethod
    def parse(cls, text: str) -> Expectation:
        """:raises ValueError: neither `forward` nor a refusal's status (400-599) and error code."""
        if text == "forward":
            return cls()
        matched = _EXPECTATION.fullmatch(text)
        if matched is None or not 400 <= int(matched[1]) <= 599:
            raise ValueError(f"expect must be 'forward' or a refusal's 'STATUS error', such as '403 forbidden', not {text!r}")
        return cls(int(matched[1]), matched[2])

    def met_by(self, decision: Decision) -> bool:
        if self.status is None:
            return decision.forwarded
        return not decision.forwarded and decision.status == self.status and self.error in (None, decision.error)

    def __str__(self) -> str:
        if self.status is None:
            return "forward"
        return f"{self.status} {self.error}" if self.error else str(self.status)


@dataclass(frozen=True, slots=True)
class Case:
    """One case of a cases file: a probe and what must come of it."""

    probe: Probe
    expect: Expectation
    name: str | None = None
    source: str = ""  # file:line

    def mismatch(self, decision: Decision) -> str | None:
        """`file:line: name: expected X, got Y (error_description)`, or None when it passed."""
        if self.expect.met_by(decision):
            return None
        reason = f" ({decision.description})" if decision.description else ""
        return f"{self.source}: {self.name or self.probe.line}: expected {self.expect}, got {decision.outcome}{reason}"
