"""Small ASGI helpers the steps and edges share (reading a request body whole)."""

from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.types import Receive


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused past `limit` bytes.

    :raises InvalidRequest: the body is longer than `limit`.
    :raises ClientDisconnected: the client went away first.
    """
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected before its request body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(f"the request body is larger than {limit} bytes, the most this route reads")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
