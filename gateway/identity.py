"""The identity headers the upstream gets: their names spelled once, their values from the
decision's `Grant`. Any client-sent copy is dropped by the forwarder (docs/requests.md, "Forwarding")."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from gateway.types import Headers

if TYPE_CHECKING:
    from gateway.decision import Grant

SUBJECT = b"x-auth-subject"
CLIENT = b"x-auth-client"
SCOPES = b"x-auth-scopes"
NAMES = frozenset({SUBJECT, CLIENT, SCOPES})


@functools.lru_cache(maxsize=1024)  # callers share a few scope sets, and sorting costs
def _scopes_value(scopes: frozenset[str]) -> bytes:
    return " ".join(sorted(scopes)).encode("utf-8")


def identity_headers(grant: Grant) -> Headers:
    # subject and client are encoded per request: a memo of them would keep an object the
    # garbage collector tracks per caller, and a stream of new callers made it run twice as often
    headers = [(SCOPES, _scopes_value(grant.scopes))]
    if grant.subject is not None:
        headers.append((SUBJECT, grant.subject.encode("utf-8")))
    if grant.client is not None:
        headers.append((CLIENT, grant.client.encode("utf-8")))
    return headers
