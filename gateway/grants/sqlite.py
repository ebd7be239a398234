"""The embedded grant store: one SQLite file shared by every process on the machine (the serving
workers, `gateway grants`, the admin API).

Each call runs in the store's own thread, never on the event loop. A change made by any process
shows in `version()` through `PRAGMA data_version` (which moves when another connection
commits), plus a count of this connection's own writes.

The file is followed by its identity, `(st_dev, st_ino)`, checked before every call (and so at
least every `grants.refresh` seconds, when the views poll `version()`): a file moved over it (a
restore from a backup, `mv copy.db grants.db`) is opened in its place, and `version()` moves, so
every view is read again from it and every write lands in it, never in the replaced file. A file
that vanishes (deleted, moved away) is never made again behind the operator's back: the store
is unavailable (503 for the requests that need it, /readyz says which file) until a file is
there again; only a store that has never opened its file makes it (`gateway grants add` does).

The journal is SQLite's rollback journal, not WAL: a WAL database keeps its `-wal` and `-shm`
files beside it by name, shared by every connection to that name, so a file replaced under
running processes would be read through the old file's WAL, and the last connection to the old
file would delete the WAL the new file's connections use. A rollback journal exists only while
a write commits. Readers wait for a commit (milliseconds; up to the busy timeout) but never for
a writer that has not begun to commit.

    grants(api, client, subject, scope, expires_at, revoked_at)   subject '' for a client grant
    conditions(api, subject, scope)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

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
Identity = tuple[int, int]  # (st_dev, st_ino) of the file a connection reads
logger = logging.getLogger("gateway.grants")
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
        self.opened: Identity | None = None  # the file the connection reads; None: none opened yet

    def _identity(self) -> Identity | None:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino

    def _connect(self) -> sqlite3.Connection:
        """The connection to the file now at `path`: the one open, unless the file was replaced.

        :raises StoreUnavailable: the file this store had opened is gone and none took its place.
        """
        identity = self._identity()
        if self._connection is not None:
            if identity == self.opened:
                return self._connection
            self._close()
            if identity is not None:
                logger.warning("grant store %s was replaced (now device %d, inode %d): reading the new file", self.path, *identity)
        if identity is None and self.opened is not None:
            raise StoreUnavailable(
                f"grant store {self.path} is gone (deleted or moved away): nothing is read or written until a file is there "
                "again (restore it, or `gateway grants add` makes a new one)")
        # a file that was opened once is never made again here ("rw"): only the first open makes it
        mode = "rwc" if self.opened is None else "rw"
        connection = sqlite3.connect(f"file:{quote(str(self.path))}?mode={mode}", uri=True, timeout=_BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None, check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            with contextlib.suppress(sqlite3.OperationalError):  # a WAL file still open elsewhere stays WAL until it is not
                connection.execute("PRAGMA journal_mode = DELETE")
            connection.executescript(_SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        opened = self._identity()
        if opened is None or (identity is not None and opened != identity):  # replaced while it was opened: open again
            connection.close()
            return self._connect()
        self._connection, self.opened = connection, opened
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return work(self._connect())
            except sqlite3.Error as exc:
                self._close()  # a broken connection is made anew next time: the file may come back
                raise StoreUnavailable(f"grant store {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def details(self) -> dict[str, object]:
        """Which file is open, for /readyz."""
        device, inode = self.opened or (None, None)
        return {"file": str(self.path), "device": device, "inode": inode}

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
        return (version, self._writes, self.opened)  # another file: another version, though its data_version may match

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
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)
