"""Running the gateway under an ASGI server: uvicorn (uvloop + httptools) by default, granian as
an option, one process or one per worker. Every way shares the same settings."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import Gateway
from gateway.config import load_config
from gateway.errors import HeadTooLarge, render

SERVERS = ("uvicorn", "granian")
_CONFIG_VARIABLE = "GATEWAY_CONFIG"
# the most a request line and headers may take, under either server (about Envoy's 60 KiB)
MAX_HEAD_BYTES = 64 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on the request head.

    llhttp sets none, and uvicorn gathers the URL and every header in memory until the head
    ends: one client sending a 200 MiB header grew the gateway by 337 MiB. A head still open after
    `MAX_HEAD_BYTES` is answered 431 and the connection closed, as granian does. The count is
    checked between reads, so a head may run one read (up to 256 KiB) past the bound.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            status, headers, body = render(HeadTooLarge(f"the request line and headers are larger than {MAX_HEAD_BYTES // 1024} KiB"))
            head = b"HTTP/1.1 %d Request Header Fields Too Large\r\n" % status + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self.transport.write(head + b"connection: close\r\n\r\n" + body)
            self.transport.close()


def uvicorn_options() -> dict[str, object]:
    return {
        "lifespan": "on",
        # X-Forwarded-* are handled by the gateway itself, trusting only proxy.trusted_proxies
        "proxy_headers": False,
        # upstream Server and Date headers pass through unchanged, not doubled
        "server_header": False,
        "date_header": False,
        "http": BoundedHttpToolsProtocol,
    }


def create_app() -> Gateway:
    """The app factory each serving process calls (the config was checked before they started)."""
    app = Gateway(load_config(os.environ[_CONFIG_VARIABLE]))
    # what is loaded by now lives as long as the process: frozen out of the collector's sight, it
    # is not walked by every full collection (under granian one ran about every second and took
    # 10-20 ms: most of the p99)
    gc.collect()
    gc.freeze()
    return app


def run(
    config_path: Path, *, host: str, port: int, server: str = "uvicorn", workers: int = 1, log_level: str = "info", access_log: bool = False,
) -> None:
    """Serve until stopped. The access log (a line per request, written by the server) is off
    unless asked for, as in Envoy: with it on, one uvicorn worker proxied a third fewer requests."""
    os.environ[_CONFIG_VARIABLE] = str(config_path.resolve())
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings

        Granian(
            "gateway.server:create_app", factory=True, interface=Interfaces.ASGI, address=host, port=port,
            workers=workers, log_level=log_level, log_access=access_log,
            # what granian reads ahead of the app per connection (default 408 KiB): 32 uploads
            # of 100 MiB grew RSS by 52 MiB with the default and by 9 MiB with this; it is also
            # granian's bound on a request head (431 above it)
            http1_settings=HTTP1Settings(max_buffer_size=MAX_HEAD_BYTES),
        ).serve()
        return
    import uvicorn

    if workers == 1:
        uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=access_log, **uvicorn_options())
    else:
        uvicorn.run(
            "gateway.server:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level,
            access_log=access_log, **uvicorn_options(),
        )
