"""The production upstream client: per-upstream pools of keep-alive connections on asyncio
protocols, responses parsed with httptools (llhttp, the parser uvicorn uses).

The mirror image of uvicorn's httptools server protocol: a response parser fed by
`data_received`, flow control both ways (a slow client pauses reading from the upstream; a slow
upstream pauses the request body), and a pool in place of a listener. It moves HTTP messages
and nothing else; errors leave it only as `UpstreamTimeout` or `UpstreamUnavailable`.

Framing is always the gateway's own: Content-Length when the length is known, chunked when it
is not, never both. A connection goes back to the pool only when the response was read to its
end, the request was sent whole, and neither side asked to close.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any

import httptools

from gateway.types import Headers, Origin
from gateway.upstream import UpstreamRequest, UpstreamTimeout, UpstreamUnavailable

_MAX_HEAD_BYTES = 64 * 1024  # status line and headers, 1xx answers included
_FRAMING = (b"content-length", b"transfer-encoding")
_HIGH_WATER = 256 * 1024  # response bytes buffered before the upstream is paused
_LOW_WATER = 64 * 1024
_BODYLESS_METHODS_NEEDING_LENGTH = frozenset({"POST", "PUT", "PATCH"})
# RFC 9110 9.2.2: a request the upstream may have acted on is sent again only if doing so twice
# has the effect of doing it once
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _head_too_large() -> UpstreamUnavailable:
    return UpstreamUnavailable(f"response head larger than {_MAX_HEAD_BYTES} bytes")


class _Connection(asyncio.Protocol):
    """A connection to an upstream and the exchange under way on it, if any: the target of
    httptools' parser callbacks. The parser lasts as long as the connection (llhttp starts over
    by itself after a complete response) except after a HEAD (see `end`)."""

    __slots__ = (
        "loop", "transport", "parser", "closed", "idle_since", "_write_paused", "paused_reading", "_drain",
        # the exchange under way
        "active", "head", "status", "headers", "head_bytes", "chunks", "buffered", "waiter", "complete",
        "error", "framed", "no_body", "interim", "received_bytes", "keep_alive",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.closed = False
        self.idle_since = 0.0
        self._write_paused = False
        self.paused_reading = False  # by the pool, until the response's reader catches up
        self._drain: asyncio.Future[None] | None = None
        self.active = False
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: Headers = []
        self.head_bytes = 0
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.error: Exception | None = None
        self.framed = False
        self.no_body = False
        self.interim = False
        self.received_bytes = False
        self.keep_alive = False

    def begin(self, no_body: bool) -> asyncio.Future[None]:
        """Start an exchange; the future resolves once the final response head has arrived.
        `no_body`: the request is a HEAD, which the parser cannot be told."""
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.active = True
        self.head = head = self.loop.create_future()
        # `status`, `keep_alive`, `buffered`, `error` and `interim` are left as the previous
        # exchange ended them, which a reused connection's did cleanly (see `reusable`)
        self.headers = []
        self.head_bytes = 0
        self.complete = False
        self.framed = False
        self.no_body = no_body
        self.received_bytes = False
        return head

    def end(self) -> None:
        """The exchange is over."""
        self.active = False
        if self.no_body:
            # a HEAD answer with a declared length leaves llhttp expecting a body that never comes
            self.parser = None

    @property
    def reusable(self) -> bool:
        return self.complete and self.error is None and self.keep_alive

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            # bytes after the answer: whatever the upstream meant, the connection is not clean
            raise UpstreamUnavailable("upstream sent more than one response")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _FRAMING:
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()  # type: ignore[union-attr]  # a callback of the parser: it exists
        if status == 101:
            raise UpstreamUnavailable("upstream switched protocols, which the gateway does not forward")
        if status < 200:
            # 1xx: skipped; the final answer follows on the same connection
            self.interim = True
            self.headers = []
            return
        if self.head_bytes > _MAX_HEAD_BYTES and sum(len(name) + len(value) for name, value in self.headers) > _MAX_HEAD_BYTES:
            raise _head_too_large()  # the read that ended the head went past the bound: was it the head?
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]  # as above
        if self.no_body or status in (204, 304):
            self.complete = True
        head = self.head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER:
            self.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.framed = False
            return
        self.complete = True
        self._wake()

    # transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream connection's: a Transport

    def data_received(self, data: bytes) -> None:
        if not self.active:
            self.abort()  # bytes nobody asked for: the connection's state is unknown
            return
        self.received_bytes = True
        head = self.head
        # llhttp bounds nothing: the bytes read while the head is pending are counted, per read
        # rather than per header, which cost more than the rest of the parsing
        pending = not head.done()  # type: ignore[union-attr]  # active: an exchange's head is awaited
        if pending:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]  # active: the parser is only dropped at the end
        except httptools.HttpParserCallbackError as exc:
            self.fail(exc.__context__ if isinstance(exc.__context__, Exception) else UpstreamUnavailable(str(exc)))
        except httptools.HttpParserError as exc:
            self.fail(UpstreamUnavailable(f"malformed response: {exc}"))
        else:
            if pending and self.head_bytes > _MAX_HEAD_BYTES and not head.done():  # type: ignore[union-attr]  # as above
                self.fail(_head_too_large())

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # the parser's callbacks point back here: with the cycle broken, reference counting
        # frees both, and the garbage collector has nothing to do per connection
        self.parser = None
        if self.active:
            self._lost_mid_exchange(exc)
        self._release_drain()

    def _lost_mid_exchange(self, exc: Exception | None) -> None:
        if self.complete:
            return
        answered = self.head is not None and self.head.done()
        if exc is None and answered and not self.framed:
            self.complete = True  # read-until-close body, ended cleanly
            self._wake()
            return
        self.fail(UpstreamUnavailable("upstream closed the connection " + ("mid-body" if answered else "before answering")))

    def fail(self, error: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = error
        head = self.head
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved here: a sender failure may be what gets raised instead
        self.abort()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain()

    def _release_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def drained(self) -> asyncio.Future[None] | None:
        """A future that resolves when the upstream accepts more bytes, or None if it does now."""
        if self._write_paused and not self.closed:
            self._drain = self.loop.create_future()
            return self._drain
        return None

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamUnavailable("upstream closed the connection while the request was sent")
        self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.paused_reading = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused_reading and self.transport is not None and not self.closed:
            self.paused_reading = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _OriginPool:
    """Connections to one upstream: idle ones reused newest first, at most `max_connections` open.

    Idle connections expire on one timer per pool, set for the oldest of them: a timer per
    release would cost more than the rest of an exchange's bookkeeping.
    """

    def __init__(self, client: PooledUpstream, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.idle: deque[_Connection] = deque()  # oldest release on the left
        self.open = 0
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self.expiry: asyncio.TimerHandle | None = None

    def reuse(self) -> _Connection | None:
        """The most recently released idle connection still open, if any (no await: the usual case)."""
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
            self.open -= 1
        return None

    async def acquire(self) -> tuple[_Connection, bool]:
        """A connection when none is idle: a freed one or slot in turn, or a new connection."""
        if self.open >= self.client.max_connections:
            # wait in line: a released connection (or a freed slot) goes to the longest waiter,
            # never to a request that arrived later
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                handed = await asyncio.wait_for(waiter, self.client.connect_timeout)
            except asyncio.TimeoutError:
                raise UpstreamTimeout(f"no free connection to {self.origin.host}:{self.origin.port} within {self.client.connect_timeout:g}s") from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())
                raise
            if handed is not None and not handed.closed:
                return handed, True
            # handed a slot (or a connection that closed meanwhile): already counted in `open`
        else:
            self.open += 1
        try:
            return await self._connect(), False
        except BaseException:
            self._pass_on(None)
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        tls = self.client.ssl_context if origin.scheme == "https" else None
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop), origin.host, origin.port,
                    ssl=tls, server_hostname=origin.host if tls else None,
                ),
                self.client.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"connecting to {origin.host}:{origin.port} took longer than {self.client.connect_timeout}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return connection

    def release(self, connection: _Connection, reusable: bool) -> None:
        connection.end()
        if reusable and not connection.closed:
            self._pass_on(connection)
        else:
            connection.abort()
            self._pass_on(None)

    def _pass_on(self, connection: _Connection | None) -> None:
        """Give a reusable connection, or the slot of one that closed, to the first waiter."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is None:
            self.open -= 1
            return
        connection.idle_since = time.monotonic()
        self.idle.append(connection)
        if self.expiry is None:
            self.expiry = connection.loop.call_later(self.client.idle_timeout, self._expire_idle)

    def _expire_idle(self) -> None:
        self.expiry = None
        now = time.monotonic()
        while self.idle and now - self.idle[0].idle_since >= self.client.idle_timeout:
            self.idle.popleft().abort()
            self._pass_on(None)
        if self.idle:
            oldest = self.idle[0]
            self.expiry = oldest.loop.call_later(oldest.idle_since + self.client.idle_timeout - now, self._expire_idle)

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        while self.idle:
            self.idle.pop().abort()


def _discard(sender: asyncio.Task[None] | None) -> None:
    """Stop a request-body task whose exchange failed; its own error, if any, is superseded."""
    if sender is None:
        return
    if sender.done():
        if not sender.cancelled():
            sender.exception()
    else:
        sender.cancel()


class _Deadlines:
    """The read timeouts of every pending wait, checked on one repeating timer.

    A `call_later` per wait (one or more per exchange) cost more CPU than the rest of the
    exchange's bookkeeping; here a wait is a dict entry, and a timeout fires at most one tick late.
    """

    __slots__ = ("read_timeout", "tick", "waits", "handle")

    def __init__(self, read_timeout: float, tick: float) -> None:
        self.read_timeout = read_timeout
        self.tick = tick
        # the future, its deadline, and what it waits for (None: the end of the whole exchange)
        self.waits: dict[asyncio.Future[Any], tuple[float, str | None]] = {}
        self.handle: asyncio.TimerHandle | None = None

    def add(self, future: asyncio.Future[Any], deadline: float, what: str | None) -> None:
        self.waits[future] = (deadline, what)
        if self.handle is None:
            self.handle = future.get_loop().call_later(self.tick, self._sweep, future.get_loop())

    def discard(self, future: asyncio.Future[Any]) -> None:
        self.waits.pop(future, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        expired = [(future, what) for future, (deadline, what) in self.waits.items() if deadline <= now]
        for future, what in expired:
            del self.waits[future]
            if not future.done():
                message = "the exchange exceeded total_timeout" if what is None else f"{what} for {self.read_timeout:g}s"
                future.set_exception(UpstreamTimeout(message))
        self.handle = loop.call_later(self.tick, self._sweep, loop) if self.waits else None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def _request_head(request: UpstreamRequest) -> bytes:
    lines = [request.method.encode("ascii") + b" " + request.target + b" HTTP/1.1"]
    for name, value in request.headers:
        lines.append(name + b": " + value)
    if request.body is None:
        if request.method in _BODYLESS_METHODS_NEEDING_LENGTH:
            lines.append(b"content-length: 0")
    elif request.content_length is not None:
        lines.append(b"content-length: %d" % request.content_length)
    else:
        lines.append(b"transfer-encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _PooledResponse:
    __slots__ = ("status", "headers", "_connection", "_pool", "_sender", "_deadline", "_done")

    def __init__(self, connection: _Connection, pool: _OriginPool, sender: asyncio.Task[None] | None, deadline: float | None) -> None:
        self._connection = connection
        self._pool = pool
        self._sender = sender
        self._deadline = deadline
        self._done = False
        self.status = connection.status
        self.headers = connection.headers

    @property
    def finished(self) -> bool:
        return self._connection.complete and not self._connection.chunks

    @property
    def request_sent(self) -> bool:
        # without a sender the body went with the head, up to its declared length
        return self._sender is None or self._sender.done()

    def body(self) -> _PooledResponse:
        # an iterator object, not an async generator: a generator left unfinished (the
        # forwarder stops at the last chunk) costs the loop a finalizer task per request
        return self

    def __aiter__(self) -> _PooledResponse:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration  # the connection may carry another exchange by now
        connection = self._connection
        while True:
            if connection.chunks:
                chunk = connection.chunks.popleft()
                connection.buffered -= len(chunk)
                if connection.paused_reading and connection.buffered < _LOW_WATER:
                    connection.resume_reading()
                return chunk
            if connection.error is not None:
                raise connection.error
            if connection.complete:
                raise StopAsyncIteration
            connection.waiter = connection.loop.create_future()
            await self._pool.client.wait(connection.waiter, self._deadline, "the upstream stopped sending its body")
            connection.waiter = None

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        connection = self._connection
        sender = self._sender
        sent_whole = True
        if sender is not None:
            sent_whole = sender.done() and not sender.cancelled() and sender.exception() is None
            _discard(sender)
        self._pool.release(connection, sent_whole and connection.reusable and not connection.chunks)


class PooledUpstream:
    """An `UpstreamClient` on pooled asyncio-protocol connections.

    :param connect_timeout: seconds to open a connection (or wait for a free one): 504.
    :param read_timeout: seconds without a byte from the upstream: 504 before the head, an
        aborted response after it.
    :param total_timeout: seconds for the whole exchange, 0 for no limit.
    :param max_connections: open connections per upstream at most.
    :param idle_timeout: seconds an unused keep-alive connection is kept.
    :param ca_file: CA bundle for https:// upstreams (default: the system's); verification is always on.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float = 0,
        max_connections: int = 1024,
        idle_timeout: float = 30,
        ca_file: str | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._ca_file = ca_file
        self._ssl_context: ssl.SSLContext | None = None
        self._pools: dict[Origin, _OriginPool] = {}
        timeouts = [read_timeout, total_timeout] if total_timeout else [read_timeout]
        self._deadlines = _Deadlines(read_timeout, tick=min(1.0, max(0.01, min(timeouts) / 10)))

    async def start(self) -> None:
        # a named CA file is read now, so a bad one fails the start; the system's CA store is
        # loaded on first use: it costs each process about 1 MiB and 30 ms, needed only for https
        if self._ca_file:
            try:
                self._ssl_context = ssl.create_default_context(cafile=self._ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"the CA file {self._ca_file} cannot be loaded: {exc}") from exc

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=self._ca_file)
        return self._ssl_context

    async def wait(self, future: asyncio.Future[Any], deadline: float | None, what: str) -> None:
        """Await `future`, failing it with `UpstreamTimeout` after the read timeout (or at the
        exchange's deadline, whichever comes first)."""
        self._watch(future, deadline, what)
        try:
            await future
        finally:
            self._deadlines.discard(future)

    def _watch(self, future: asyncio.Future[Any], deadline: float | None, what: str) -> None:
        expires = time.monotonic() + self.read_timeout
        if deadline is not None and deadline < expires:
            self._deadlines.add(future, deadline, None)
        else:
            self._deadlines.add(future, expires, what)

    async def send(self, request: UpstreamRequest) -> _PooledResponse:
        pool = self._pools.get(request.origin)
        if pool is None:
            pool = self._pools[request.origin] = _OriginPool(self, request.origin)
        deadline = time.monotonic() + self.total_timeout if self.total_timeout else None
        head = _request_head(request)
        sent = 0
        if request.body is not None:
            # the first chunk goes in the same write as the head; when it is the whole body (a
            # small one, with its length declared) no task is needed to send the rest
            first = await anext(request.body, b"")
            sent = len(first)
            if first:
                head += b"%x\r\n%s\r\n" % (sent, first) if request.content_length is None else first
            del first  # the head holds a copy: an upload's chunk is not kept twice for its whole length
        whole = request.body is None or sent == request.content_length
        for attempt in (1, 2):
            connection = pool.reuse()
            reused = connection is not None
            if connection is None:
                connection, reused = await pool.acquire()
            head_arrived = connection.begin(no_body=request.method == "HEAD")
            sender: asyncio.Task[None] | None = None
            try:
                connection.write(head)
                if request.body is not None:
                    head = b""  # never sent twice (see below): its first chunk need not outlive this write
                if not whole:
                    sender = asyncio.ensure_future(self._send_body(connection, request, deadline, sent))
                if sender is None:
                    # `wait`, inlined: one coroutine less to resume when the answer comes
                    self._watch(head_arrived, deadline, "the upstream did not answer")
                    try:
                        await head_arrived
                    finally:
                        self._deadlines.discard(head_arrived)
                else:
                    await self._head_while_sending(head_arrived, sender, deadline)
            except UpstreamUnavailable:
                _discard(sender)
                pool.release(connection, False)
                if reused and attempt == 1 and request.body is None and request.method in _IDEMPOTENT_METHODS and not connection.received_bytes:
                    continue  # a pooled connection the upstream had closed: once more on a fresh one
                raise
            except BaseException:
                _discard(sender)
                pool.release(connection, False)
                raise
            return _PooledResponse(connection, pool, sender, deadline)
        raise AssertionError("unreachable")

    async def _head_while_sending(self, head: asyncio.Future[None], sender: asyncio.Task[None], deadline: float | None) -> None:
        # while the body goes up, the upstream may rightly say nothing (no read timeout), or
        # answer early; a body that fails (the client went away) ends the wait
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
        done, _ = await asyncio.wait({head, sender}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise UpstreamTimeout("the exchange exceeded total_timeout")
        answered = head.done() and head.exception() is None
        if not answered and sender.done() and sender.exception() is not None:
            raise sender.exception()  # type: ignore[misc]  # not None: checked above
        await self.wait(head, deadline, "the upstream did not answer")

    async def _send_body(self, connection: _Connection, request: UpstreamRequest, deadline: float | None, sent: int) -> None:
        """The rest of the body, after the `sent` bytes that went with the head."""
        assert request.body is not None
        chunked = request.content_length is None
        async for chunk in request.body:
            if not chunk:
                continue
            sent += len(chunk)
            connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            del chunk  # not held while the next one is read: a chunk may be 300 KiB
            drained = connection.drained()
            if drained is not None:
                await self.wait(drained, deadline, "the upstream stopped reading the request body")
        if chunked:
            connection.write(b"0\r\n\r\n")
        elif sent != request.content_length:
            connection.abort()
            raise UpstreamUnavailable(f"request body was {sent} bytes, not the {request.content_length} declared")

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._deadlines.close()
