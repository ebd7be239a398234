"""The grant store's interface and the values it holds (docs/route-tables.md, "Live grants").

Client grants (api, client, scope), user grants (api, client, subject, scope), each with an
optional expiry, and met conditions (api, subject, scope). Backends: `sqlite.py` (embedded, the
default) and `redis.py` (a fleet). The decision never calls a store: the app hands it a `GrantView`
from `gateway.grants.live`, which keeps views in memory and fresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


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
        """Add a grant, or replace its expiry (and clear a revocation)."""
        ...

    async def revoke_grant(self, api: str, client: str, subject: str | None, scope: str) -> bool:
        """Revoke an active grant; False when there is none."""
        ...

    async def set_condition(self, api: str, subject: str, scope: str, met: bool) -> bool:
        """Record a condition met (`met`) or not; False when unfulfilling one that was not met."""
        ...

    async def list(self, api: str | None = None, client: str | None = None, subject: str | None = None) -> tuple[list[GrantRecord], list[ConditionRecord]]:
        """The grants not revoked (expired ones included: `expires_at` tells) and the met
        conditions, matching every filter given."""
        ...

    async def aclose(self) -> None: ...
