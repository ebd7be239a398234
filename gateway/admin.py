"""The admin listener's ASGI app (docs/admin-api.md): grants and
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
segments are percent-encoded, so a `/` in a client id is `%2F`; a path with an empty segment, a
malformed escape or an escape that is not UTF-8 is refused (400) before it is routed, so that
`/grants/api//scope` can never store a grant to an empty client. Answers and errors are JSON, as
everywhere else; a known path with another method is 404, as an unknown path is.

The control plane runs on starlette (routing with path parameters, requests, JSON answers): a
framework costs nothing that matters here, unlike on the data plane, which stays plain ASGI. It
routes on the raw path (`raw_path`), never on the decoded one: a decoded `%2F` would split a
segment in two, and a decoded `%FF` would be U+FFFD.

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
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import health, metrics
from gateway.asgi import ClientDisconnected, read_body
from gateway.catalog import grant_scope_problem
from gateway.errors import (
    InvalidRequest,
    NotFound,
    Refusal,
    TemporarilyUnavailable,
    Unauthorized,
    render,
)
from gateway.grants.live import open_store
from gateway.grants.store import GrantRecord, GrantStore, StoreUnavailable
from gateway.reload import FAILURE, Reloader, RunDir
from gateway.settings import Config
from gateway.times import parse_rfc3339, rfc3339
from gateway.types import Receive, Scope, Send

_MAX_BODY = 64 * 1024
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_FILTERS = ("api", "client", "subject")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
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
        grant = ["PUT", "DELETE"]
        self._app = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),  # GET routes answer HEAD too
                Route("/readyz", self._readyz, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/reload", self._reload, methods=["POST"]),
                Route("/grants", self._list, methods=["GET"]),
                Route("/grants/{api}/{client}/{scope}", self._grant, methods=grant),
                Route("/grants/{api}/{client}/users/{subject}/{scope}", self._grant, methods=grant),
                Route("/conditions/{api}/{subject}/{scope}", self._condition, methods=grant),
            ],
            exception_handlers={Refusal: _refused, HTTPException: _no_such_path},
            lifespan=self._lifespan,
        )

    async def _use(self, config: Config) -> None:
        """Serve a reloaded config: its tables, its admin token, its grant store."""
        if config.admin.listen != self.config.admin.listen:
            logger.warning("admin.listen changed: the admin listener moves at the next start of the gateway")
        if config.admin.token_file is not None:
            self._token = f"Bearer {config.admin.token_file.read_text().strip()}".encode()
        if config.grants != self.config.grants:
            if self.store is not None:
                await self.store.aclose()
            self.store = open_store(config.grants.store) if config.grants.store else None
        self.config = config
        self._apis = {api.name: api for api in config.tables.apis}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or quote(scope["path"]).encode()
            path = raw.partition(b"?")[0].decode("latin-1")
            try:
                if path not in _OPEN_PATHS:
                    self._authenticate(scope)
                _check_path(path)
            except Refusal as refusal:
                await _refusal(refusal)(scope, receive, send)
                return
            scope = {**scope, "path": path, "root_path": ""}  # routed on the raw path: segments decoded one by one
        await self._app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        await self.reloader.start()
        try:
            yield
        finally:
            await self.reloader.aclose()
            if self.store is not None:
                await self.store.aclose()

    async def _healthz(self, request: Request) -> Response:
        # with ?challenge=, a proof that this listener holds the config's admin token (gateway health)
        return _json(200, {"status": "serving", **health.answer(self._token.removeprefix(b"Bearer "), request.scope.get("query_string", b""))})

    async def _readyz(self, _: Request) -> Response:
        return _json(*await self._ready())

    async def _metrics(self, request: Request) -> Response:
        if self.metrics_directory is None:
            raise NotFound(f"no admin path {request.method} {request.url.path} (admin.metrics is off)")
        body, content_type = metrics.exposition(self.metrics_directory)
        return Response(body, headers={"content-type": content_type.decode("latin-1")})

    async def _grant(self, request: Request) -> Response:
        api, client, grant_scope = (_segment(request, name) for name in ("api", "client", "scope"))
        subject = _segment(request, "subject") if "subject" in request.path_params else None
        store = self._store()
        self._check_scope(api, grant_scope)
        if request.method == "PUT":
            expires_at = _expiry(await _body(request.receive))
            await _stored(store.put_grant(api, client, subject, grant_scope, expires_at))
            return _json(200, _grant(GrantRecord(api, client, subject, grant_scope, expires_at)))
        if not await _stored(store.revoke_grant(api, client, subject, grant_scope)):
            raise NotFound(f"no such grant: {grant_scope} to {'user ' + subject + ' via ' if subject else ''}client {client} on {api}")
        return _json(204, None)

    async def _condition(self, request: Request) -> Response:
        api, subject, condition = (_segment(request, name) for name in ("api", "subject", "scope"))
        store = self._store()
        self._check_scope(api, condition)
        met = request.method == "PUT"
        if met:
            await _body(request.receive)  # any body is read, and ignored
        changed = await _stored(store.set_condition(api, subject, condition, met))
        if met:
            return _json(200, {"api": api, "subject": subject, "scope": condition})
        if not changed:
            raise NotFound(f"no such condition met: {condition} by {subject} on {api}")
        return _json(204, None)

    async def _list(self, request: Request) -> Response:
        store = self._store()
        filters = _filters(request.scope.get("query_string", b""))
        if "api" in filters and filters["api"] not in self._apis:
            raise InvalidRequest(f"no route table is named {filters['api']!r}")
        grants, conditions = await _stored(store.list(filters.get("api"), filters.get("client"), filters.get("subject")))
        return _json(200, {"grants": [_grant(grant) for grant in grants],
                           "conditions": [{"api": c.api, "subject": c.subject, "scope": c.scope} for c in conditions]})

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

    def _store(self) -> GrantStore:
        if self.store is None:
            raise InvalidRequest("this gateway has no grant store: configure grants.store in gateway.yaml")
        return self.store

    async def _reload(self, _: Request) -> Response:
        return _json(*await self._reloaded())

    async def _reloaded(self) -> tuple[int, Any]:
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
            document["grant_store_details"] = self.store.details()  # which file (and inode) is open: a replaced file shows
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


class _JSONResponse(JSONResponse):
    """JSON as the rest of the gateway writes it (`json.dumps`'s defaults and a final newline),
    so that the answers stay byte for byte what they were before starlette served them."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode() + b"\n"


def _json(status: int, document: Any) -> Response:
    if document is None:
        return Response(status_code=status, headers={"cache-control": "no-store"})
    return _JSONResponse(document, status, headers={"cache-control": "no-store"})


def _refusal(refusal: Refusal) -> Response:
    """A refusal's answer, as the data plane gives it (`errors.render`)."""
    status, headers, body = render(refusal, "gateway-admin")
    response = Response(body, status)
    response.raw_headers = headers
    return response


async def _refused(_: Request, refusal: Exception) -> Response:
    assert isinstance(refusal, Refusal)  # the handler of Refusal only
    return _refusal(refusal)


async def _no_such_path(request: Request, _: Exception) -> Response:
    """starlette's 404, and its 405 for a known path with another method: both our 404, which
    does not tell which methods a path has."""
    return _refusal(NotFound(f"no admin path {request.method} {request.url.path}"))


def _check_path(path: str) -> None:
    """:raises InvalidRequest: an empty segment (`//`, a trailing `/`), a malformed escape, or
    a segment that is not UTF-8 once decoded."""
    if path == "/":
        return
    for segment in path.split("/")[1:]:
        if not segment:
            raise InvalidRequest(f"empty path segment in {path!r} ('//' or a trailing '/'): every segment of an admin path is required")
        _decoded(segment, "path segment")


def _decoded(text: str, what: str) -> str:
    """`text` (a raw segment or query value, as latin-1) percent-decoded as UTF-8.

    :raises InvalidRequest: a malformed escape, or bytes that are not UTF-8 (never U+FFFD)."""
    if _BAD_ESCAPE.search(text):
        raise InvalidRequest(f"malformed percent-escape in {what} {text!r}")
    try:
        return unquote_to_bytes(text.encode("latin-1")).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} {text!r} is not UTF-8 once percent-decoded") from None


def _segment(request: Request, name: str) -> str:
    return _decoded(request.path_params[name], "path segment")


def _filters(query: bytes) -> dict[str, str]:
    """GET /grants's filters, each given at most once and never empty.

    :raises InvalidRequest: an unknown, repeated or empty parameter, or one that is not UTF-8."""
    filters: dict[str, str] = {}
    unknown = []
    for pair in query.decode("latin-1").split("&") if query else []:
        raw_name, _, raw_value = pair.partition("=")
        name = _decoded(raw_name.replace("+", " "), "query parameter name")
        value = _decoded(raw_value.replace("+", " "), f"query parameter {name}")
        if name not in _FILTERS:
            unknown.append(name)
        elif name in filters:
            raise InvalidRequest(f"query parameter {name} is given twice")
        elif not value:
            raise InvalidRequest(f"query parameter {name} is empty: leave it out to list every {name}")
        else:
            filters[name] = value
    if unknown:
        raise InvalidRequest(f"unknown query parameters: {', '.join(sorted(unknown))} (api, client, subject)")
    return filters


async def _stored(operation: Any) -> Any:
    """The store operation's result; 503 when the store cannot be used, 400 when it refuses the
    values (store.py's contract)."""
    try:
        return await operation
    except StoreUnavailable as exc:
        raise TemporarilyUnavailable(f"the grant store cannot be used right now: {exc}", retry_after=1) from None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


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
