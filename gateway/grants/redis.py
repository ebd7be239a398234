"""The grant store in Redis, shared by a fleet of gateway replicas (`grants.store: redis://...`).

Key layout. Every component written {like_this} is percent-encoded (`quote(..., safe="")`), so a
':' or '/' in an API name, client id or subject never makes two keys collide, and no key holds a
glob character that a SCAN pattern would read as one:

    gateway:client:{api}:{client}             hash: scope -> {"expires_at": float|null, "revoked_at": float|null}
    gateway:user:{api}:{client}:{subject}     hash: the same, for the user grants of one subject
    gateway:condition:{api}:{subject}         set: the scopes whose condition the subject has met
    gateway:version                           counter, incremented by every write
    gateway:epoch                             random token, set by the first write into an empty Redis
    channel gateway:changes                   every write publishes the key it changed; every
                                              serving process subscribes and drops its views

Scopes are hash fields and set members, stored as they are. Expiries are timestamps that the reader
checks (`GrantState.active`), never Redis TTLs: a grant's row must outlive its expiry so that a
refusal can say when it expired. Revoking keeps the row too, with `revoked_at` set.

Each write, its version increment and its publication go in one MULTI/EXEC, so no reader sees a
changed store with an old version. `version()` is (epoch, counter): a Redis that restarts empty (or
is flushed) counts from 0 again, and the epoch keeps an old counter value from meaning "unchanged".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import quote, unquote

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, WatchError

from gateway.grants.store import (
    EMPTY_VIEW,
    ConditionRecord,
    GrantRecord,
    GrantState,
    GrantView,
    StoreUnavailable,
    check_condition,
    check_filters,
    check_grant,
    stored_state,
)
from gateway.grants.urls import redacted, scrubbed

PREFIX = "gateway:"
VERSION_KEY = PREFIX + "version"
EPOCH_KEY = PREFIX + "epoch"
CHANNEL = PREFIX + "changes"
# A dead or hung Redis fails a call within about a second; the view cache keeps serving its last views.
TIMEOUT = 1.0
WATCH_STEP = 0.25  # seconds a subscription waits for a publication before it looks at its stop event


def _key(kind: str, *parts: str) -> str:
    return PREFIX + kind + "".join(":" + quote(part, safe="") for part in parts)


def _pattern(kind: str, *parts: str | None) -> str:
    """A SCAN pattern for keys of `kind`, a None part matching any value of that component."""
    return PREFIX + kind + "".join(":" + ("*" if part is None else quote(part, safe="")) for part in parts)


def _parts(key: str) -> tuple[str, list[str]]:
    kind, *parts = key[len(PREFIX):].split(":")
    return kind, [unquote(part) for part in parts]


def _encode(state: GrantState) -> str:
    return json.dumps({"expires_at": state.expires_at, "revoked_at": state.revoked_at})


def _decode(key: str, scope: str, raw: str) -> GrantState:
    """The state of one hash field; one that is not JSON, or holds unreadable times, reads as
    revoked (`stored_state`), as a damaged SQLite row does."""
    try:
        fields = json.loads(raw)
        expires_at, revoked_at = fields["expires_at"], fields["revoked_at"]
    except (ValueError, TypeError, KeyError):
        expires_at, revoked_at = raw, None
    return stored_state(expires_at, revoked_at, f"{key} {scope}")


def _states(key: str, fields: dict[str, str]) -> dict[str, GrantState]:
    return {scope: _decode(key, scope, raw) for scope, raw in fields.items()}


class RedisStore:
    """A `GrantStore` in one Redis (or a Redis endpoint in front of a replicated set), for a fleet."""

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        self.url = redacted(url)  # for messages: no password
        self._url = url
        self._timeout = timeout  # seconds a call waits for Redis (a test of a hung one waits less)
        options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": timeout, "socket_timeout": timeout}
        # One retry, on a fresh connection, for a connection found closed (a Redis that restarted
        # since the pooled one was opened); never for a timeout, so a hung Redis fails within `timeout`.
        try:
            self._client = redis.asyncio.Redis.from_url(url, retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)), **options)
        except ValueError as exc:  # redis-py's own words may quote the URL
            raise ValueError(f"grants.store {self.url}: {scrubbed(str(exc), url)}") from None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"grant store {self.url}: {scrubbed(str(exc), self._url)}") from exc

    @staticmethod
    def _grant_key(api: str, client: str, subject: str | None) -> str:
        return _key("client", api, client) if subject is None else _key("user", api, client, subject)

    @staticmethod
    def _changed(pipe: Pipeline, key: str) -> None:
        """Queue, after a write to `key` in a MULTI, what every write does: the version, the epoch
        (kept if there is one) and the publication."""
        pipe.incr(VERSION_KEY)
        pipe.set(EPOCH_KEY, secrets.token_hex(8), nx=True)
        pipe.publish(CHANNEL, key)

    async def view(self, api: str, client: str | None, subject: str | None) -> GrantView:
        """The caller's client grants, user grants and met conditions, read in one round trip and
        from one snapshot (MULTI/EXEC)."""
        client, subject = client or None, subject or None  # empty reads as none (store.py's contract)
        if client is None and subject is None:
            return EMPTY_VIEW
        client_key = None if client is None else _key("client", api, client)
        user_key = None if client is None or subject is None else _key("user", api, client, subject)
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                for key in (client_key, user_key):
                    if key is not None:
                        pipe.hgetall(key)
                if subject is not None:
                    pipe.smembers(_key("condition", api, subject))
                replies = iter(await pipe.execute())  # in the order queued
        return GrantView(
            client_grants=_states(client_key, next(replies)) if client_key is not None else {},
            user_grants=_states(user_key, next(replies)) if user_key is not None else {},
            conditions=frozenset(next(replies)) if subject is not None else frozenset(),
        )

    async def version(self) -> tuple[str | None, int]:
        """(epoch, number of writes since the epoch began): changes with every write from any replica."""
        with self._errors():
            # str, not bytes: decode_responses, which redis-py's types do not follow
            counter, epoch = cast("list[str | None]", await self._client.mget(VERSION_KEY, EPOCH_KEY))
        return epoch, int(counter or 0)

    async def watch(self, changed: Callable[[], None], stop: asyncio.Event) -> None:
        """Subscribe to the change channel and call `changed` for each publication; once also as
        soon as the subscription holds, for writes made while none did. Returns once `stop` is set."""
        # A client of its own that never reconnects by itself: publications sent while it was down
        # are lost, so its break must reach the caller, which drops every view.
        subscriber = redis.asyncio.Redis.from_url(
            self._url, decode_responses=True, socket_connect_timeout=self._timeout, socket_timeout=self._timeout, retry=Retry(NoBackoff(), 0))
        with self._errors():
            async with subscriber, subscriber.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(CHANNEL)
                changed()
                # short bounded reads, and `stop` between them: a read cancelled midway can leave
                # the task waiting on its stream for ever (seen with redis-py 8 on Python 3.11)
                while not stop.is_set():
                    if await pubsub.get_message(timeout=WATCH_STEP) is not None:
                        changed()

    async def put_grant(self, api: str, client: str, subject: str | None, scope: str, expires_at: float | None) -> None:
        """Add a grant, or replace its expiry and clear its revocation."""
        check_grant(api, client, subject, scope, expires_at)
        key = self._grant_key(api, client, subject)
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, scope, _encode(GrantState(expires_at=expires_at)))
                self._changed(pipe, key)
                await pipe.execute()

    async def revoke_grant(self, api: str, client: str, subject: str | None, scope: str) -> bool:
        """Mark a grant revoked, keeping its expiry; False when there is no such grant or it is revoked
        already. An expired grant is revoked (True): the row then tells both."""
        check_grant(api, client, subject, scope, None)
        key = self._grant_key(api, client, subject)
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                # Read, check, write under WATCH: a concurrent write to this hash makes EXEC fail, and
                # the check runs again on what that write left.
                while True:
                    try:
                        await pipe.watch(key)
                        raw = cast("str | None", await pipe.hget(key, scope))  # decode_responses, as above
                        if raw is None:
                            return False
                        state = _decode(key, scope, raw)
                        if state.revoked_at is not None:
                            return False
                        pipe.multi()
                        pipe.hset(key, scope, _encode(GrantState(expires_at=state.expires_at, revoked_at=time.time())))
                        self._changed(pipe, key)
                        await pipe.execute()
                        return True
                    except WatchError:
                        continue

    async def set_condition(self, api: str, subject: str, scope: str, met: bool) -> bool:
        """Record that `subject` has met the condition of `scope` (`met`), or no longer has; False
        when unfulfilling one that was not met."""
        check_condition(api, subject, scope)
        key = _key("condition", api, subject)
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                if met:
                    pipe.sadd(key, scope)
                else:
                    pipe.srem(key, scope)
                self._changed(pipe, key)
                changed, *_ = await pipe.execute()
        return met or changed == 1

    async def list(
        self, api: str | None = None, client: str | None = None, subject: str | None = None, revoked: bool = False,
    ) -> tuple[list[GrantRecord], list[ConditionRecord]]:
        """As store.py's contract says: a `subject` leaves out client grants; `client` does not
        filter the conditions, which belong to a subject whatever client it comes through.

        Not a snapshot: keys are found with SCAN (never KEYS, which would block Redis), then read in
        one round trip."""
        check_filters(api, client, subject)
        patterns = [_pattern("user", api, client, subject), _pattern("condition", api, subject)]
        if subject is None:
            patterns.append(_pattern("client", api, client))
        with self._errors():
            # A set: SCAN may return a key more than once.
            keys = list({key for pattern in patterns async for key in self._client.scan_iter(match=pattern, count=1000)})
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    if key.startswith(PREFIX + "condition:"):
                        pipe.smembers(key)
                    else:
                        pipe.hgetall(key)
                replies = await pipe.execute()
        grants: list[GrantRecord] = []
        conditions: list[ConditionRecord] = []
        for key, reply in zip(keys, replies):
            kind, parts = _parts(key)
            if kind == "condition":
                conditions.extend(ConditionRecord(parts[0], parts[1], scope) for scope in reply)
                continue
            grant_api, grant_client, *grant_subject = parts
            for scope, state in _states(key, reply).items():
                if revoked or state.revoked_at is None:
                    grants.append(GrantRecord(grant_api, grant_client, grant_subject[0] if grant_subject else None, scope,
                                              state.expires_at, state.revoked_at))
        grants.sort(key=lambda g: (g.api, g.client, g.subject is not None, g.subject or "", g.scope))
        conditions.sort(key=lambda c: (c.api, c.subject, c.scope))
        return grants, conditions

    def details(self) -> dict[str, object]:
        return {"url": self.url}

    async def aclose(self) -> None:
        """Close the client and its connections."""
        with self._errors():
            await self._client.aclose()
