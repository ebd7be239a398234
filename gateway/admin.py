"""The admin listener's ASGI app (DESIGN.md, "Live grants" and "Operating it"): grants and
conditions over HTTP, and the health of the process. Never served on the proxy's port.

    GET    /healthz                                       200 while the process serves (no token)
    GET    /readyz                                        200 with details of every serving process, or 503 (no token)
    GET    /metrics                                       Prometheus text of every serving process (no token; 404 with metrics off)
    POST   /reload                                        reload the config in every process; 200, or 422 with its problems
    PUT    /grants/{api}/{client}/{scope}                 a client grant; body {"expires_at": RFC 3339 or null}
    PUT    /grants/{api}/{client}/users/{subject}/{scope}  a user grant; same body
    DELETE either                                         204, or 404 when there is no such grant
    PUT    /conditions/{api}/{subject}/{scope}            200: the condition is met
    DELETE /conditions/{api}/{subject}/{scope}            204, or 404 when it was not
    GET    /grants?api=&client=&subject=                  {"grants": [...], "conditions": [...]}

Every other path needs `Authorization: Bearer <admin token>`, compared in constant time. Path
segments are percent-encoded. Answers and errors are JSON, as everywhere else.

The admin listener is a process of its own beside the serving processes: it reloads its own
config (its tables say which grants may be written, its token file the token) as they do theirs,
and learns theirs from the run folder `gateway serve` keeps (`gateway.reload.RunDir`).
/readyz is 503 until every serving process has keys (where routes need tokens) and can read the
grant store, and while no serving process has reported. A reload that failed leaves it 200 with
`"status": "degraded"` and the problems: the last good config is still served, and taking every
replica out of its load balancer for one broken edit would turn a refused change into an outage.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from gateway import health, metrics
from gateway.errors import InvalidRequest, NotFound, Refusal, TemporarilyUnavailable, Unauthorized, render
from gateway.exchange import ClientDisconnected, read_body
from gateway.grants.live import open_store
from gateway.grants.store import GrantRecord, GrantStore, StoreUnavailable
from gateway.reload import FAILURE, Reloader, RunDir
from gateway.settings import Config
from gateway.times import parse_rfc3339, rfc3339
from gateway.types import Receive, Scope, Send
from gateway.validation import grant_scope_problem

_MAX_BODY = 64 * 1024
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# seconds POST /reload waits for every serving process to report its reload
_RELOAD_WAIT = 30.0
logger = logging.getLogger("gateway.admin")


class AdminApp:
    """The admin listener of one gateway config.

    :param config: the loaded config: its tables say which APIs and scopes exist.
    :param store: the grant store it names (None: grants.store is not configured).
    :param token: the admin bearer token (from `admin.token_file`).
    :param run_dir: the run folder of the serving processes; None: this process alone.
    :param metrics_directory: where the serving processes write their metrics; None: metrics are off.
    """

    def __init__(
        self, config: Config, store: GrantStore | None, token: str, run_dir: RunDir | None = None, metrics_directory: Path | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.run_dir = run_dir
        self.reloader = Reloader(config, self._use, run_dir=run_dir)
        self.metrics_directory = metrics_directory
        self._token = f"Bearer {token}".encode()
        self._apis = {api.name: api for api in config.tables.apis}

    async def _use(self, config: Config) -> None:
        """Serve a reloaded config: its tables, its admin token, its grant store."""
        if config.admin.listen != self.config.admin.listen:
            logger.warning("admin.listen changed: the admin listener moves at the next start of the gateway")
        if config.admin.token_file is not None:
            self._token = f"Bearer {config.admin.token_file.read_text().strip()}".encode()
        if config.grants != self.config.grants:
            if self.store is not None:
                await self.store.aclose()
            self.store = open_store(config.grants.store, config.grants.base) if config.grants.store else None
        self.config = config
        self._apis = {api.name: api for api in config.tables.apis}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD") and self.metrics_directory is not None:
            body, content_type = metrics.exposition(self.metrics_directory)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            status, document = await self._handle(scope, receive)
        except Refusal as refusal:
            answer_status, headers, body = render(refusal, "gateway-admin")
            await send({"type": "http.response.start", "status": answer_status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        body = b"" if document is None else json.dumps(document).encode() + b"\n"
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers if body else headers[2:]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.reloader.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.reloader.aclose()
                if self.store is not None:
                    await self.store.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        method = scope["method"]
        raw = (scope.get("raw_path") or scope["path"].encode()).partition(b"?")[0]
        path = raw.decode("latin-1")
        if path == "/healthz" and method in ("GET", "HEAD"):
            return 200, {"status": "serving", **health.answer(self._token.removeprefix(b"Bearer "), scope.get("query_string", b""))}
        if path == "/readyz" and method in ("GET", "HEAD"):
            return await self._ready()
        if path not in _OPEN_PATHS:
            self._authenticate(scope)
        if path == "/reload" and method == "POST":
            return await self._reload()
        segments = [unquote(segment) for segment in path.split("/")[1:]]
        if segments[0] in ("grants", "conditions") and self.store is None:
            raise InvalidRequest("this gateway has no grant store: configure grants.store in gateway.yaml")
        if segments[:1] == ["grants"] and len(segments) == 1 and method == "GET":
            return 200, await self._list(scope.get("query_string", b""))
        if segments[:1] == ["grants"] and len(segments) in (4, 6) and method in ("PUT", "DELETE"):
            if len(segments) == 6 and segments[3] != "users":
                raise NotFound(f"no admin path {path}")
            api, client = segments[1], segments[2]
            subject, grant_scope = (segments[4], segments[5]) if len(segments) == 6 else (None, segments[3])
            self._check_scope(api, grant_scope)
            if method == "PUT":
                expires_at = _expiry(await _body(receive))
                await self._stored(self._store.put_grant(api, client, subject, grant_scope, expires_at))
                return 200, _grant(GrantRecord(api, client, subject, grant_scope, expires_at))
            if not await self._stored(self._store.revoke_grant(api, client, subject, grant_scope)):
                raise NotFound(f"no such grant: {grant_scope} to {'user ' + subject + ' via ' if subject else ''}client {client} on {api}")
            return 204, None
        if segments[:1] == ["conditions"] and len(segments) == 4 and method in ("PUT", "DELETE"):
            api, subject, condition = segments[1:]
            self._check_scope(api, condition)
            met = method == "PUT"
            if met:
                await _body(receive)  # any body is read, and ignored
            changed = await self._stored(self._store.set_condition(api, subject, condition, met))
            if met:
                return 200, {"api": api, "subject": subject, "scope": condition}
            if not changed:
                raise NotFound(f"no such condition met: {condition} by {subject} on {api}")
            return 204, None
        raise NotFound(f"no admin path {method} {path}")

    def _authenticate(self, scope: Scope) -> None:
        presented = [value for name, value in scope["headers"] if name == b"authorization"]
        # compare_digest: how much of a wrong token matched never shows in the time taken
        if len(presented) != 1 or not hmac.compare_digest(presented[0], self._token):
            raise Unauthorized("the admin API needs 'Authorization: Bearer <admin token>' (admin.token_file)")

    def _check_scope(self, api: str, scope: str) -> None:
        found = self._apis.get(api)
        if found is None:
            raise InvalidRequest(f"no route table is named {api!r} (tables: {', '.join(self._apis)})")
        problem = grant_scope_problem(found.catalog, scope)
        if problem:
            raise InvalidRequest(problem)

    async def _stored(self, operation: Any) -> Any:
        """The store operation's result; 503 when the store cannot be used."""
        try:
            return await operation
        except StoreUnavailable as exc:
            raise TemporarilyUnavailable(f"the grant store cannot be used right now: {exc}", retry_after=1) from None

    async def _list(self, query: bytes) -> dict[str, Any]:
        filters = {name: values[0] for name, values in parse_qs(query.decode("latin-1"), keep_blank_values=False).items()}
        unknown = set(filters) - {"api", "client", "subject"}
        if unknown:
            raise InvalidRequest(f"unknown query parameters: {', '.join(sorted(unknown))} (api, client, subject)")
        if "api" in filters and filters["api"] not in self._apis:
            raise InvalidRequest(f"no route table is named {filters['api']!r}")
        grants, conditions = await self._stored(self._store.list(filters.get("api"), filters.get("client"), filters.get("subject")))
        return {"grants": [_grant(grant) for grant in grants], "conditions": [{"api": c.api, "subject": c.subject, "scope": c.scope} for c in conditions]}

    @property
    def _store(self) -> GrantStore:
        assert self.store is not None  # checked for every grants and conditions path
        return self.store

    async def _reload(self) -> tuple[int, Any]:
        """Reload here and in every serving process; answer once they all have."""
        request = self.run_dir.request_reload() if self.run_dir is not None else 0
        outcome = await self.reloader.reload(request)
        processes = await self._reported(request) if self.run_dir is not None else []
        problems = list(dict.fromkeys([*outcome.problems, *(problem for process in processes for problem in _failed(process))]))
        if problems:
            return 422, {
                "error": "invalid_config",
                "error_description": "the config does not load or cannot serve; every process keeps serving the last good one",
                "problems": problems,
            }
        return 200, {"result": "success", "config": str(self.config.source), "tables": sorted(self._apis), "processes": len(processes)}

    async def _reported(self, request: int) -> list[dict[str, Any]]:
        """The serving processes' statuses once each has answered reload `request`.

        :raises TemporarilyUnavailable: some did not within `_RELOAD_WAIT` seconds.
        """
        assert self.run_dir is not None
        deadline = time.monotonic() + _RELOAD_WAIT
        while True:
            processes = await asyncio.to_thread(self.run_dir.statuses)
            behind = [process["pid"] for process in processes if process["request"] < request]
            if processes and not behind:
                return processes
            if time.monotonic() > deadline:
                waiting = f"processes {', '.join(map(str, behind))} did not" if behind else "no serving process did"
                raise TemporarilyUnavailable(f"the reload was asked for, but {waiting} report it within {_RELOAD_WAIT:g} s", retry_after=1)
            await asyncio.sleep(0.05)

    async def _ready(self) -> tuple[int, Any]:
        document: dict[str, Any] = {"status": "ready", "config": str(self.config.source), "tables": sorted(self._apis)}
        unready: list[str] = []
        if self.store is None:
            document["grant_store"] = "none configured"
        else:
            try:
                await self.store.version()
                document["grant_store"] = "reachable"
            except StoreUnavailable as exc:
                document["grant_store"] = f"unreadable: {exc}"
                unready.append(f"the grant store cannot be read: {exc}")
        failed = [self.reloader.last.document()] if self.reloader.last is not None and self.reloader.last.result == FAILURE else []
        if self.run_dir is not None:
            processes = await asyncio.to_thread(self.run_dir.statuses)
            document["processes"] = processes
            if not processes:
                unready.append("no serving process has reported yet")
            for process in processes:
                if process["needs_keys"] and not process["keys"]:
                    unready.append(f"process {process['pid']} has no key to verify tokens with: {process['keys_error'] or 'none configured'}")
                if process["grant_store"].startswith("unreadable"):
                    unready.append(f"process {process['pid']}: grant store {process['grant_store']}")
                if _failed(process):
                    failed.append(process["reload"])
        if failed:
            document["reload"] = failed[0]
            document["status"] = "degraded"
        if unready:
            document.update(status="not ready", reasons=unready)
            return 503, document
        return 200, document


def _failed(process: dict[str, Any]) -> list[str]:
    """The problems of a serving process's last reload, if it failed."""
    last = process["reload"]
    return last["problems"] if last is not None and last["result"] == FAILURE else []


async def _body(receive: Receive) -> Any:
    """The request's JSON body (None when empty).

    :raises InvalidRequest: larger than 64 KiB, not JSON, or cut short.
    """
    try:
        raw = (await read_body(receive, _MAX_BODY)).strip()
    except ClientDisconnected:
        raise InvalidRequest("the client went away before its body was complete") from None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None


def _expiry(body: Any) -> float | None:
    if body is None:
        return None
    if not isinstance(body, dict) or set(body) - {"expires_at"}:
        raise InvalidRequest('the body is {"expires_at": "<RFC 3339 time>"} or {"expires_at": null}, or none')
    value = body.get("expires_at")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest("expires_at must be an RFC 3339 time such as 2026-12-31T23:59:59Z, or null")
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidRequest(f"expires_at {exc}") from None


def _grant(record: GrantRecord) -> dict[str, Any]:
    expires = None if record.expires_at is None else rfc3339(record.expires_at)
    return {"api": record.api, "client": record.client, "subject": record.subject, "scope": record.scope, "expires_at": expires}
