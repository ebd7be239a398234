"""Streaming a response to a client that may go away: the forwarder between a scripted server
(its receive and send) and a scripted upstream response."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.catalog import Catalog
from gateway.proxy import Forwarder
from gateway.settings import ProxySettings
from gateway.tables import Api, Upstream
from gateway.types import Headers, Message
from gateway.upstream import UpstreamRequest

pytestmark = pytest.mark.anyio
API = Api("events", Upstream.build("http://up.test", "http", "up.test", 80, b""), (), Catalog(), "events.yaml")


class ScriptedResponse:
    """An upstream response whose chunks the test hands over one by one (None: the end)."""

    status = 200
    headers: Headers = []

    def __init__(self, *chunks: bytes | None, finished_after: int | None = None, request_sent: bool = True) -> None:
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        for chunk in chunks:
            self.chunks.put_nowait(chunk)
        self.finished_after = finished_after  # chunks after which `finished` is True
        self.request_sent = request_sent
        self.given = 0
        self.closed = False

    @property
    def finished(self) -> bool:
        return self.finished_after is not None and self.given >= self.finished_after

    def body(self) -> ScriptedResponse:
        return self

    def __aiter__(self) -> ScriptedResponse:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.chunks.get()
        if chunk is None:
            raise StopAsyncIteration
        self.given += 1
        return chunk

    async def aclose(self) -> None:
        self.closed = True


class ScriptedUpstream:
    def __init__(self, response: ScriptedResponse) -> None:
        self.response = response

    async def send(self, request: UpstreamRequest) -> ScriptedResponse:
        received = 0
        if request.body is not None:
            # as the pool does with a small body: read up to the declared length, and no further
            async for chunk in request.body:
                received += len(chunk)
                if received == request.content_length:
                    break
        return self.response

    async def aclose(self) -> None:
        pass


class Server:
    """receive() as uvicorn's and granian's: the request, then nothing until the client goes away.
    granian ends a body with an empty message of its own, after the declared bytes."""

    def __init__(self, body: bytes = b"", *, empty_end: bool = False) -> None:
        self.body = body
        self.gone = asyncio.Event()
        self.requests: list[Message] = [{"type": "http.request", "body": body, "more_body": empty_end}]
        if empty_end:
            self.requests.append({"type": "http.request", "body": b"", "more_body": False})
        self.sent: list[Message] = []
        self.before = asyncio.all_tasks()  # the test's own, and the runner's
        self.tasks_while_sending: list[int] = []  # besides those, and not being cancelled

    async def receive(self) -> Message:
        if self.requests:
            return self.requests.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.tasks_while_sending.append(len([task for task in asyncio.all_tasks() - self.before if not task.cancelling()]))
        self.sent.append(message)

    def tasks_left(self) -> set[asyncio.Task[Any]]:
        return asyncio.all_tasks() - self.before

    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(message["body"], message["more_body"]) for message in self.sent if message["type"] == "http.response.body"]


def forward(server: Server, response: ScriptedResponse, method: str = "GET") -> asyncio.Task[None]:
    headers = [(b"host", b"gateway.test")]
    if server.body:
        headers.append((b"content-length", b"%d" % len(server.body)))
    scope: dict[str, Any] = {"type": "http", "method": method, "headers": headers, "client": ("127.0.0.1", 5000), "scheme": "http"}
    forwarder = Forwarder(ScriptedUpstream(response), ProxySettings())
    return asyncio.ensure_future(forwarder.forward(scope, server.receive, server.send, API, b"/events", []))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_response_in_one_piece_starts_no_task() -> None:
    server = Server()
    await forward(server, ScriptedResponse(b"all", finished_after=1))
    assert server.bodies() == [(b"all", False)]
    assert server.tasks_while_sending == [1, 1]  # the forwarding's alone: no watch


@pytest.mark.parametrize(("method", "body", "empty_end"), [("GET", b"", False), ("POST", b"{}", False), ("POST", b"{}", True)])
async def test_a_client_gone_from_a_silent_stream_ends_it_at_once_and_quietly(method: str, body: bytes, empty_end: bool) -> None:
    server = Server(body, empty_end=empty_end)
    response = ScriptedResponse(b"first")
    forwarding = forward(server, response, method)
    await settle()
    assert server.bodies() == [(b"first", True)] and not forwarding.done()
    server.gone.set()
    await asyncio.wait_for(forwarding, 1)  # returns, without raising
    assert response.closed and forwarding.cancelling() == 0
    await settle()
    assert server.tasks_left() == set()  # the watch is gone too


async def test_a_stream_that_ends_sends_its_end_and_stops_watching() -> None:
    server = Server()
    response = ScriptedResponse(b"a", b"b", b"c", finished_after=3)
    await asyncio.wait_for(forward(server, response), 1)
    assert server.bodies() == [(b"a", True), (b"b", True), (b"c", False)]
    # the watch is stopped before the last send: once the answer is complete, receive() says
    # http.disconnect under both servers, and the last send must not be cut off by it
    assert server.tasks_while_sending[-1] == 1
    await settle()
    assert response.closed and server.tasks_left() == set()


async def test_a_stream_ended_by_the_upstream_without_saying_so_ahead() -> None:
    server = Server()
    response = ScriptedResponse(b"a", b"b", None)  # as httpx: `finished` never True
    await asyncio.wait_for(forward(server, response), 1)
    assert server.bodies() == [(b"a", True), (b"b", True), (b"", False)]
    await settle()
    assert server.tasks_left() == set()


async def test_no_watch_while_the_request_body_is_still_being_sent() -> None:
    # the upstream answered early and its client still reads `receive` for the body: a second
    # reader would take its chunks
    server = Server()
    response = ScriptedResponse(b"a", b"b", b"c", finished_after=3, request_sent=False)
    await asyncio.wait_for(forward(server, response), 1)
    assert server.bodies() == [(b"a", True), (b"b", True), (b"c", False)]
    assert server.tasks_while_sending == [1, 1, 1, 1]  # the forwarding's alone


@pytest.mark.parametrize("client_gone", [False, True])
async def test_a_cancellation_from_elsewhere_still_cancels(client_gone: bool) -> None:
    # a server shutting down cancels the request's task: that must not be taken for the watch's
    server = Server()
    forwarding = forward(server, ScriptedResponse(b"first"))
    await settle()
    if client_gone:
        server.gone.set()
    forwarding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forwarding
    await settle()
    assert server.tasks_left() == set()
