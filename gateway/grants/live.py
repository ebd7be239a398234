"""Grant views in memory, kept fresh: what the decision reads of the grant store.

A view per (api, client, subject), fetched from the store on a miss and kept (at most
`max_views`, least recently used out). Every view is dropped when the store changes: at once when
the backend publishes its writes (Redis), and within `refresh` seconds in any case, when the
version read every `refresh` seconds has moved (the only way with SQLite, and the fallback when
a publication is lost). When the store cannot be read, views are dropped too and requests that
need live state are refused (503) until it answers again: never a decision on a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from pathlib import Path

from gateway.grants.store import GrantStore, GrantView, StoreUnavailable
from gateway.grants.urls import StoreAddress, parse_store
from gateway.types import UNCOUNTED, Metrics

logger = logging.getLogger("gateway.grants")
Key = tuple[str, str | None, str | None]


def open_store(store: StoreAddress | str, base: Path = Path(".")) -> GrantStore:
    """The backend `store` names, not yet connected; a URL (for a tool or a test holding one) is
    parsed first, a relative sqlite path taken from `base`.

    :raises ValueError: a URL `parse_store` refuses.
    """
    address = store if isinstance(store, StoreAddress) else parse_store(store, base)
    if address.path is not None:
        from gateway.grants.sqlite import SQLiteStore

        return SQLiteStore(address.path)
    from gateway.grants.redis import RedisStore

    return RedisStore(address.url)


async def read_view(store: StoreAddress, api: str, client: str | None, subject: str | None) -> GrantView:
    """One view, from the store `store` names, opened for this read and closed after it: for a
    command (`explain`, `scopes validate`), never for serving, which keeps its views (`LiveGrants`).

    :raises StoreUnavailable: the store cannot be read.
    """
    opened = open_store(store)
    try:
        return await opened.view(api, client, subject)
    finally:
        await opened.aclose()


class LiveGrants:
    """The views of one grant store, for every request of one process; `metrics` counts each read
    of the store that failed (a poll, or a view a request needed)."""

    def __init__(self, store: GrantStore, refresh: float, max_views: int = 10_000, metrics: Metrics = UNCOUNTED) -> None:
        self.store = store
        self.metrics = metrics
        self.refresh = refresh
        self.max_views = max_views
        self._views: OrderedDict[Key, GrantView] = OrderedDict()
        self._reading: dict[Key, asyncio.Future[GrantView]] = {}  # views being read, for the callers that want them meanwhile
        self._version: object = None
        self._generation = 0  # counts the times every view was dropped
        self.error: str | None = "not started"  # why the store cannot be read now; None when it can
        self._poller: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Read the store's version once (an unreachable store is reported, not fatal: requests
        that need it get 503 until it answers) and keep polling it."""
        await self._check()
        self._poller = asyncio.ensure_future(self._poll())
        self._watcher = asyncio.ensure_future(self._watch())

    def cached(self, api: str, client: str | None, subject: str | None) -> GrantView | None:
        """The view in memory, if any: no await on the usual request."""
        key = (api, client, subject)
        view = self._views.get(key)
        if view is not None:
            self._views.move_to_end(key)
        return view

    async def view(self, api: str, client: str | None, subject: str | None) -> GrantView:
        """The caller's view, from memory or the store: one read, however many requests of a new
        caller arrive while it is under way.

        :raises StoreUnavailable: the store cannot be read (counted: a request refused for it).
        """
        try:
            return await self._view(api, client, subject)
        except StoreUnavailable:
            self.metrics.grant_store_error()
            raise

    async def _view(self, api: str, client: str | None, subject: str | None) -> GrantView:
        view = self.cached(api, client, subject)
        if view is not None:
            return view
        if self.error is not None:
            raise StoreUnavailable(self.error)
        key = (api, client, subject)
        reading = self._reading.get(key)
        if reading is not None:
            return await asyncio.shield(reading)
        reading = self._reading[key] = asyncio.get_running_loop().create_future()
        generation = self._generation
        try:
            view = await self.store.view(api, client, subject)
        except BaseException as exc:
            reading.set_exception(exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"the read was interrupted: {exc!r}"))
            reading.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._reading[key]
        reading.set_result(view)
        if generation == self._generation:  # not kept if a change was heard of while it was read
            self._views[key] = view
            if len(self._views) > self.max_views:
                self._views.popitem(last=False)
        return view

    def _drop_views(self) -> None:
        self._generation += 1
        self._views.clear()

    async def _watch(self) -> None:
        """Hear of the store's changes as they happen, while the backend tells them; after a broken
        subscription, subscribe again (the version polling covers the time between)."""
        while not self._stop.is_set():
            try:
                await self.store.watch(self._drop_views, self._stop)
                return  # stopped, or the backend tells nothing: polling alone
            except StoreUnavailable as exc:
                logger.debug("grant store change notifications interrupted: %s", exc)
                self._drop_views()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(self.refresh, 1.0))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            await self._check()

    async def _check(self) -> None:
        try:
            version = await self.store.version()
        except StoreUnavailable as exc:
            self.metrics.grant_store_error()
            if self.error is None:
                logger.error("grant store unreadable: %s; requests that need live grants are refused until it answers", exc)
            self.error = str(exc)
            self._drop_views()
            return
        if self.error is not None and self.error != "not started":
            logger.warning("grant store readable again")
        self.error = None
        if version != self._version:
            self._version = version
            self._drop_views()

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        # the watcher is asked to stop, not cancelled (see RedisStore.watch), and is waited for:
        # the subscription must close before the store does
        self._stop.set()
        if self._watcher is not None:
            await asyncio.wait([self._watcher], timeout=5)
        await self.store.aclose()
