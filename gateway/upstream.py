"""The upstream client seam: moves one HTTP request to an upstream and streams its answer back.

It knows nothing of scopes, tokens or routes. Two implementations: `gateway.pool.PooledUpstream`,
the default, and `HttpxUpstream` here, which respx can mock (`proxy.client: httpx`). From `send`
and from a response's body they raise only `UpstreamTimeout` or `UpstreamUnavailable`, which the
proxy turns into 504 and 502 in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Protocol

import httpx

from gateway.types import Headers, Origin


class UpstreamError(Exception):
    """The upstream exchange failed."""


class UpstreamTimeout(UpstreamError):
    """No connection, or no byte of the answer, within the configured time."""


class UpstreamUnavailable(UpstreamError):
    """Connection refused or reset, or an answer that is not valid HTTP."""


@dataclass(slots=True)
class UpstreamRequest:
    origin: Origin
    method: str
    target: bytes  # path and query, sent byte for byte
    headers: Headers  # final, without framing headers: the client frames the body itself
    body: AsyncIterator[bytes] | None  # None: the request has no body
    content_length: int | None = None  # None with a body: length unknown, sent chunked


class UpstreamResponse(Protocol):
    status: int
    headers: Headers  # names lowercased

    # read-only (properties of the pooled client's response)
    @property
    def finished(self) -> bool:
        """True once the body is known to be over, so the last chunk can be sent as the last."""
        ...

    @property
    def request_sent(self) -> bool:
        """True once no more of the request body will be read from the client (all of it sent,
        or the sending given up): from then on nothing but the proxy reads its `receive`."""
        ...

    def body(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    async def start(self) -> None:
        """Get ready to send (e.g. load a CA bundle).

        :raises Exception: the client cannot work with its settings.
        """
        ...

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the response head has arrived.

        :raises UpstreamTimeout: connect or read timeout.
        :raises UpstreamUnavailable: refused, reset or malformed answer.
        """
        ...

    async def aclose(self) -> None: ...


@contextlib.contextmanager
def _translate_httpx_errors() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"{type(exc).__name__}: {exc}") from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from exc


class _HttpxResponse:
    __slots__ = ("status", "headers", "_response")
    finished = False  # httpx does not say whether more is coming
    request_sent = True  # httpcore sends the whole request before it reads the answer

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Headers = [(name.lower(), value) for name, value in response.headers.raw]

    async def body(self) -> AsyncIterator[bytes]:
        with _translate_httpx_errors():
            # raw: the upstream's content-encoding passes through untouched
            async for chunk in self._response.aiter_raw():
                yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """An `UpstreamClient` on one pooled `httpx.AsyncClient`."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            follow_redirects=False,
            trust_env=False,  # never route upstream traffic through a proxy named in the environment
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keep no upstream cookies
            transport=transport,
        )

    async def start(self) -> None:
        pass  # nothing to load: the httpx client is ready as made

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        origin = request.origin
        url = httpx.URL(scheme=origin.scheme, host=origin.host, port=origin.port, raw_path=request.target)
        headers = request.headers
        if request.body is not None and request.content_length is not None:
            headers = [*headers, (b"content-length", b"%d" % request.content_length)]
        # built directly, not with client.build_request: no default headers, no cookies added
        outgoing = httpx.Request(request.method, url, headers=headers, content=request.body)
        with _translate_httpx_errors():
            response = await self._client.send(outgoing, stream=True)
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()
