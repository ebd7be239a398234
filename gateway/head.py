"""The request head, checked before anything else (RFC 9112): the HTTP version, Host, the
transfer coding, and the limits on the target and the number of fields.

Both servers parse the head, but neither enforces all of this, nor alike: granian invents an
empty Host for a request without one and passes `Transfer-Encoding: chunked, chunked` on,
uvicorn passes `HTTP/2.0` and two Host headers. Checked here, on what either hands the app, the
answers are the same under both.
"""

from __future__ import annotations

import re

from gateway.errors import CodingNotImplemented, FramingInvalidRequest, HeadTooLarge, InvalidRequest, UriTooLong, VersionNotSupported
from gateway.settings import LimitSettings
from gateway.types import Scope

# granian names HTTP/1.0 "1"; an HTTP/2 request (granian's h2c) is refused like any other version
VERSIONS = frozenset({"1.1", "1.0", "1"})
# RFC 9112 3.2 and RFC 3986 3.2.2: an IP literal or a reg-name, then an optional port
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::([0-9]{1,5}))?")
# the fields this pass looks at: one set lookup for the others
_WATCHED = frozenset({b"authorization", b"host", b"transfer-encoding"})


# Host values seen valid: a gateway sees a few, and a regex costs more than a set lookup
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_MAX = 256


def _valid_host(value: bytes) -> bool:
    if value in _VALID_HOSTS:
        return True
    match = _HOST.fullmatch(value)
    valid = match is not None and (match.group(1) is None or int(match.group(1)) <= 65535)
    if valid and len(_VALID_HOSTS) < _VALID_HOSTS_MAX:
        _VALID_HOSTS.add(value)
    return valid


def check(scope: Scope, path: bytes, query: bytes, limits: LimitSettings) -> list[bytes]:
    """The Authorization values of a request whose head is sound.

    :raises VersionNotSupported: a version other than HTTP/1.0 or 1.1 (505).
    :raises HeadTooLarge: more header fields than `limits.max_headers` (431).
    :raises UriTooLong: a request target longer than `limits.max_uri` (414).
    :raises InvalidRequest: two Host headers, an invalid Host, or HTTP/1.1 without one (400).
    :raises CodingNotImplemented: a transfer coding other than one final chunked (501).
    """
    version = scope["http_version"]
    if version not in VERSIONS:
        raise VersionNotSupported(f"HTTP/{version} is not supported: send HTTP/1.1 or HTTP/1.0")
    headers = scope["headers"]
    if len(headers) > limits.max_headers:
        raise HeadTooLarge(f"the request has {len(headers)} header fields; at most {limits.max_headers} are accepted")
    if len(path) + len(query) >= limits.max_uri:  # the '?' counts too, when there is a query
        length = len(path) + (len(query) + 1 if query else 0)
        if length > limits.max_uri:
            raise UriTooLong(f"the request target is {length} bytes long; at most {limits.max_uri} are accepted")
    # one pass, as cheap as the list of Authorization values alone it replaces
    authorization: list[bytes] = []
    host: bytes | None = None
    coded = False
    for name, value in headers:
        if name not in _WATCHED:
            continue
        if name == b"authorization":
            authorization.append(value)
        elif name == b"host":
            if host is not None:
                raise InvalidRequest("the request has two Host headers")
            host = value
        else:
            _check_coding(value, coded, version)
            coded = True
    if not host:
        # granian hands the app an empty Host for a request without one: both mean no authority
        if version == "1.1":
            raise InvalidRequest("an HTTP/1.1 request must carry a Host header naming the server (RFC 9112 3.2)")
    elif not _valid_host(host):
        shown = host.decode("latin-1")[:100]
        raise InvalidRequest(f"Host {shown!r} is not a valid host[:port]")
    return authorization


def _check_coding(value: bytes, coded: bool, version: str) -> None:
    if version != "1.1":
        raise FramingInvalidRequest("Transfer-Encoding is not defined in HTTP/1.0: the body's framing cannot be trusted (RFC 9112 6.1)")
    if coded:
        raise CodingNotImplemented("several Transfer-Encoding headers: only one, 'chunked', is accepted")
    if value.strip(b" \t").lower() != b"chunked":
        shown = value.decode("latin-1")[:100]
        raise CodingNotImplemented(f"Transfer-Encoding {shown!r} is not implemented: only 'chunked' alone is accepted")
