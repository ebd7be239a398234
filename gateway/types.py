"""ASGI type aliases, in one place (as in starlette/types.py), and the small values every layer shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class Origin(NamedTuple):
    """Where an upstream listens; built once when tables load, used as the pool's key."""

    scheme: str
    host: str
    port: int


class Position(NamedTuple):
    """Where a loaded value was written: the loader keeps it, so every later message (a load
    problem, `gateway check`'s warnings, `explain`) names it without reading the file again."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class Metrics(Protocol):
    """What the key stores and the grant views count, outside any one request: handed to them (a
    serving process's `metrics.Recorder`), so they import no edge."""

    def jwks_fetched(self, success: bool) -> None: ...

    def grant_store_error(self) -> None: ...


class Uncounted:
    """Metrics off: nothing is counted."""

    __slots__ = ()

    def jwks_fetched(self, success: bool) -> None:
        pass

    def grant_store_error(self) -> None:
        pass


UNCOUNTED = Uncounted()
