"""A request-body sink for the upload test: reads every request body to the end (Content-Length or
chunked) before answering `{"ok":true,"received":N}`. nginx's `return 200` answers as soon as
the headers arrive and discards the body, so a proxy in front of it may never have to move the
whole upload; behind this sink it must. The upstream nginx sends requests carrying
`X-Bench-Upload` here. Standard library only.

Run: python bench/sink.py PORT
"""

from __future__ import annotations

import asyncio
import sys

PIECE = 1 << 20


async def _drain(reader: asyncio.StreamReader, size: int) -> None:
    while size > 0:
        data = await reader.read(min(size, PIECE))
        if not data:
            raise ConnectionError("body cut short")
        size -= len(data)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> int:
    if "content-length" in headers:
        size = int(headers["content-length"])
        await _drain(reader, size)
        return size
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return 0
    received = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return received
        await _drain(reader, size + 2)  # the chunk and its CRLF
        received += size


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
            received = await _read_body(reader, headers)
            body = b'{"ok":true,"received":%d}' % received
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
