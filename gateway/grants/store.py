"""The grant store's interface and the values it holds (docs/route-tables.md, "Live grants").

Client grants (api, client, scope), user grants (api, client, subject, scope), each with an
optional expiry, and met conditions (api, subject, scope). Backends: `sqlite.py` (embedded, the
default) and `redis.py` (a fleet). The decision never calls a store: the app hands it a `GrantView`
from `gateway.grants.live`, which keeps views in memory and fresh.

The contract every backend keeps (tests/test_grants_contract.py runs one table on each):
- Writes: api, client, subject and scope are non-empty strings without control characters or
  line breaks (`ValueError` otherwise, before anything is written): a client grant has no subject (None), never an empty one, so an empty
  subject can never turn a user grant into a client grant. Expiries are `times.valid`.
- `view(api, client, subject)`: an empty client or subject reads as none. Without a client, no
  grants (a grant is always to a client), but the subject's met conditions, which belong to the
  subject whatever client it comes through; without a subject, no user grants and no conditions.
- `list(api, client, subject, revoked)`: filters are non-empty when given (`ValueError`). The
  grants matching every filter (with a subject, user grants only), revoked ones only with
  `revoked`, expired ones always (`expires_at` tells); the met conditions matching `api` and
  `subject`: a `client` filter does not apply to them, as they belong to the subject whatever
  client it comes through (`list(client=C, subject=S)` shows S's conditions, which count for S's
  requests through C). Sorted by api, client, client grant before user grants, subject, scope.
- A stored expiry or revocation time that is not `times.valid` (a row written by hand, by an
  older version, or damaged) never fails a read: the grant reads as revoked at `times.EARLIEST`,
  inactive, and the row is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway import times

logger = logging.getLogger("gateway.grants")
_MAX_LOGGED = 1000  # unreadable rows remembered as logged, so that a damaged store logs each once
_logged: set[str] = set()
# in no name a grant is written with: they would forge lines in `gateway grants list` and in logs
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class StoreUnavailable(Exception):
    """The store cannot be read or written now (unreachable, locked, unreadable)."""


@dataclass(frozen=True, slots=True)
class GrantState:
    """One grant as the store keeps it: revoking keeps the row, so a refusal can say when."""

    expires_at: float | None = None  # seconds since the epoch; None: no expiry
    revoked_at: float | None = None  # set by revoke; cleared when the grant is added again

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class GrantView:
    """What the store holds for one caller of one API: the client grants of (api, client), the
    user grants of (api, client, subject) and the conditions met by (api, subject)."""

    client_grants: Mapping[str, GrantState] = field(default_factory=dict)  # scope -> state
    user_grants: Mapping[str, GrantState] = field(default_factory=dict)  # scope -> state
    conditions: frozenset[str] = frozenset()  # scopes whose condition the subject has met


EMPTY_VIEW = GrantView()


def stored_state(expires_at: object, revoked_at: object, where: str) -> GrantState:
    """The state a store row holds; a row whose times are not `times.valid` reads as revoked
    (fail closed: a grant whose end cannot be read never counts), logged once per `where`."""
    if (expires_at is None or times.valid(expires_at)) and (revoked_at is None or times.valid(revoked_at)):
        return GrantState(expires_at, revoked_at)  # type: ignore[arg-type]  # checked by times.valid
    if where not in _logged and len(_logged) < _MAX_LOGGED:
        _logged.add(where)
        logger.error("grant store row %s holds an unreadable time (expires_at %r, revoked_at %r): it counts as revoked until written again",
                     where, expires_at, revoked_at)
    return GrantState(None, times.EARLIEST)


def _check_name(kind: str, what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a {kind}'s {what} must be a non-empty string, not {value!r}")
    if _CONTROL.search(value):
        raise ValueError(f"a {kind}'s {what} must not hold control characters or line breaks, not {value!r}")


def check_grant(api: str, client: str, subject: str | None, scope: str, expires_at: float | None) -> None:
    """What every backend checks before it writes a grant (the contract above).

    :raises ValueError: an empty name or one with a control character, or an expiry outside `times.valid`.
    """
    for what, value in (("api", api), ("client", client), ("subject", subject), ("scope", scope)):
        if value is not None:
            _check_name("grant", what, value)
    if expires_at is not None:
        times.checked(expires_at, "expires_at")


def check_filters(*filters: str | None) -> None:
    """:raises ValueError: a filter of `list` given, but empty (it would match client grants'
    missing subject in one backend and nothing in another)."""
    if any(value is not None and (not isinstance(value, str) or not value) for value in filters):
        raise ValueError("a filter of the grant list is a non-empty string, or not given")


def check_condition(api: str, subject: str, scope: str) -> None:
    """:raises ValueError: an empty name or one with a control character."""
    for what, value in (("api", api), ("subject", subject), ("scope", scope)):
        _check_name("condition", what, value)


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A row of `list`: a client grant when `subject` is None, else a user grant."""

    api: str
    client: str
    subject: str | None
    scope: str
    expires_at: float | None
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class ConditionRecord:
    api: str
    subject: str
    scope: str


class GrantStore(Protocol):
    """A backend. Every method may raise `StoreUnavailable`; none blocks the event loop."""

    async def view(self, api: str, client: str | None, subject: str | None) -> GrantView:
        """Everything the store holds for this caller of `api` (an empty view for no client)."""
        ...

    async def version(self) -> object:
        """A value that changes whenever anything in the store changes, from any process."""
        ...

    async def watch(self, changed: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `changed` after each write from any process, as it happens, until `stop` is set.
        Returns at once when the backend has no such notification (its `version` is polled).

        :raises StoreUnavailable: the notification stream broke (or never started)."""
        ...

    async def put_grant(self, api: str, client: str, subject: str | None, scope: str, expires_at: float | None) -> None:
        """Add a grant, or replace its expiry (and clear a revocation).

        :raises ValueError: refused by `check_grant`."""
        ...

    async def revoke_grant(self, api: str, client: str, subject: str | None, scope: str) -> bool:
        """Revoke an active grant; False when there is none."""
        ...

    async def set_condition(self, api: str, subject: str, scope: str, met: bool) -> bool:
        """Record a condition met (`met`) or not; False when unfulfilling one that was not met."""
        ...

    async def list(
        self, api: str | None = None, client: str | None = None, subject: str | None = None, revoked: bool = False,
    ) -> tuple[list[GrantRecord], list[ConditionRecord]]:
        """The grants (expired ones included: `expires_at` tells; revoked ones only with `revoked`)
        and the met conditions, matching every filter given, as the contract above says."""
        ...

    def details(self) -> dict[str, object]:
        """What the store is, for /readyz (the file and its inode; the URL, without its password)."""
        ...

    async def aclose(self) -> None: ...
