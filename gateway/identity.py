"""The identity headers the upstream gets: their names spelled once, their values from the
decision's `Allowed`. Any client-sent copy is dropped by the forwarder (docs/requests.md, "Forwarding")."""

from __future__ import annotations

import functools

from gateway.scopes import Allowed
from gateway.types import Headers

SUBJECT = b"x-auth-subject"
CLIENT = b"x-auth-client"
SCOPES = b"x-auth-scopes"
NAMES = frozenset({SUBJECT, CLIENT, SCOPES})


@functools.lru_cache(maxsize=1024)  # callers share a few scope sets, and sorting costs
def _scopes_value(scopes: frozenset[str]) -> bytes:
    return " ".join(sorted(scopes)).encode("utf-8")


def identity_headers(allowed: Allowed) -> Headers:
    # subject and client are encoded per request: a memo of them would keep an object the
    # garbage collector tracks per caller, and a stream of new callers made it run twice as often
    headers = [(SCOPES, _scopes_value(allowed.scopes))]
    if allowed.subject is not None:
        headers.append((SUBJECT, allowed.subject.encode("utf-8")))
    if allowed.client is not None:
        headers.append((CLIENT, allowed.client.encode("utf-8")))
    return headers


def caller_headers(subject: str | None, client: str | None) -> Headers:
    """Who a verified token names, without scopes: for a request forwarded by a table in shadow
    mode that its refusal left with no effective scopes worked out."""
    headers = []
    if subject is not None:
        headers.append((SUBJECT, subject.encode("utf-8")))
    if client is not None:
        headers.append((CLIENT, client.encode("utf-8")))
    return headers
