"""The embedded grant store: one SQLite file in WAL mode, shared by every process on the machine
(the serving workers, `gateway grants`, the admin API).

Each call runs in the store's own thread, never on the event loop. A change made by any process
shows in `version()` through `PRAGMA data_version` (which moves when another connection
commits), plus a count of this connection's own writes.

    grants(api, client, subject, scope, expires_at, revoked_at)   subject '' for a client grant
    conditions(api, subject, scope)
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.grants.store import (
    ConditionRecord,
    GrantRecord,
    GrantView,
    StoreUnavailable,
    check_condition,
    check_filters,
    check_grant,
    stored_state,
)

T = TypeVar("T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    api TEXT NOT NULL, client TEXT NOT NULL, subject TEXT NOT NULL, scope TEXT NOT NULL,
    expires_at REAL, revoked_at REAL,
    PRIMARY KEY (api, client, subject, scope)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conditions (
    api TEXT NOT NULL, subject TEXT NOT NULL, scope TEXT NOT NULL,
    PRIMARY KEY (api, subject, scope)
) WITHOUT ROWID;
"""
# how long a write waits for another process's write to finish before the store counts as locked
_BUSY_TIMEOUT_MS = 2000


class SQLiteStore:
    """A `GrantStore` on one SQLite file.

    :param path: the database file; made, with its tables, on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grants-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._writes = 0

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            try:
                connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                connection.execute("PRAGMA journal_mode = WAL")
                connection.executescript(_SCHEMA)
            except sqlite3.Error:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return work(self._connect())
            except sqlite3.Error as exc:
                # a broken connection is made anew next time: the file may come back
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
                raise StoreUnavailable(f"grant store {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def view(self, api: str, client: str | None, subject: str | None) -> GrantView:
        client, subject = client or None, subject or None  # empty reads as none (store.py's contract)
        if client is None:
            return GrantView(conditions=await self._conditions(api, subject))

        def read(connection: sqlite3.Connection) -> GrantView:
            rows = connection.execute(
                "SELECT subject, scope, expires_at, revoked_at FROM grants WHERE api = ? AND client = ? AND subject IN ('', ?)",
                (api, client, subject or ""),
            ).fetchall()
            met = connection.execute("SELECT scope FROM conditions WHERE api = ? AND subject = ?", (api, subject or "")).fetchall()
            states = {(who, scope): stored_state(expires, revoked, f"{self.path}: {api} {client} {who} {scope}")
                      for who, scope, expires, revoked in rows}
            client_grants = {scope: state for (who, scope), state in states.items() if who == ""}
            user_grants = {scope: state for (who, scope), state in states.items() if who != ""} if subject else {}
            return GrantView(client_grants, user_grants, frozenset(scope for (scope,) in met) if subject else frozenset())

        return await self._run(read)

    async def _conditions(self, api: str, subject: str | None) -> frozenset[str]:
        if not subject:
            return frozenset()
        rows = await self._run(lambda connection: connection.execute(
            "SELECT scope FROM conditions WHERE api = ? AND subject = ?", (api, subject)).fetchall())
        return frozenset(scope for (scope,) in rows)

    async def version(self) -> object:
        version = await self._run(lambda connection: connection.execute("PRAGMA data_version").fetchone()[0])
        return (version, self._writes)

    async def watch(self, changed: Callable[[], None], stop: asyncio.Event) -> None:
        """SQLite tells no other process of a commit: readers poll `version`."""

    async def _write(self, statement: str, parameters: tuple[object, ...]) -> int:
        def write(connection: sqlite3.Connection) -> int:
            changed = connection.execute(statement, parameters).rowcount
            self._writes += 1
            return changed

        return await self._run(write)

    async def put_grant(self, api: str, client: str, subject: str | None, scope: str, expires_at: float | None) -> None:
        check_grant(api, client, subject, scope, expires_at)
        await self._write(
            "INSERT INTO grants (api, client, subject, scope, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, NULL) "
            "ON CONFLICT (api, client, subject, scope) DO UPDATE SET expires_at = excluded.expires_at, revoked_at = NULL",
            (api, client, subject or "", scope, expires_at),
        )

    async def revoke_grant(self, api: str, client: str, subject: str | None, scope: str) -> bool:
        check_grant(api, client, subject, scope, None)
        changed = await self._write(
            "UPDATE grants SET revoked_at = ? WHERE api = ? AND client = ? AND subject = ? AND scope = ? AND revoked_at IS NULL",
            (time.time(), api, client, subject or "", scope),
        )
        return changed > 0

    async def set_condition(self, api: str, subject: str, scope: str, met: bool) -> bool:
        check_condition(api, subject, scope)
        if met:
            await self._write("INSERT OR IGNORE INTO conditions (api, subject, scope) VALUES (?, ?, ?)", (api, subject, scope))
            return True
        return await self._write("DELETE FROM conditions WHERE api = ? AND subject = ? AND scope = ?", (api, subject, scope)) > 0

    async def list(
        self, api: str | None = None, client: str | None = None, subject: str | None = None, revoked: bool = False,
    ) -> tuple[list[GrantRecord], list[ConditionRecord]]:
        check_filters(api, client, subject)

        def read(connection: sqlite3.Connection) -> tuple[list[GrantRecord], list[ConditionRecord]]:
            where = ["1 = 1" if revoked else "revoked_at IS NULL"]
            parameters: list[object] = []
            for column, value in (("api", api), ("client", client), ("subject", subject)):
                if value is not None:
                    where.append(f"{column} = ?")
                    parameters.append(value)
            rows = connection.execute(
                f"SELECT api, client, subject, scope, expires_at, revoked_at FROM grants WHERE {' AND '.join(where)} "
                "ORDER BY api, client, subject, scope", parameters,
            ).fetchall()
            grants = []
            for a, c, s, scope, expires, revoked_at in rows:
                state = stored_state(expires, revoked_at, f"{self.path}: {a} {c} {s} {scope}")
                grants.append(GrantRecord(a, c, s or None, scope, state.expires_at, state.revoked_at))
            where, parameters = [], []
            for column, value in (("api", api), ("subject", subject)):  # never client: conditions belong to none
                if value is not None:
                    where.append(f"{column} = ?")
                    parameters.append(value)
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            conditions = [ConditionRecord(*row) for row in connection.execute(
                f"SELECT api, subject, scope FROM conditions{clause} ORDER BY api, subject, scope", parameters).fetchall()]
            return grants, conditions

        return await self._run(read)

    async def aclose(self) -> None:
        def close(_: sqlite3.Connection) -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        if self._connection is not None:
            await self._run(close)
        self._thread.shutdown(wait=False)
