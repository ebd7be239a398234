"""Field-level scopes for REST answers (docs/route-tables.md, "Response fields"): a route's
`response_fields` maps top-level members of a JSON answer to requirements; a member whose
requirement the caller does not meet is removed. Only such routes buffer their answer.

Fail closed: once a caller may not see some member, the client gets only what the gateway parsed
and filtered itself. An answer that cannot be read as a whole JSON object (another media type,
no Content-Type, a top-level array, a coding the gateway cannot undo, a 206 slice) is a 502,
never passed on as it came. Range and If-Range never reach the upstream of such a route.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import BadGateway
from gateway.scopes import Allowed, Requirement
from gateway.tables import Forwarding
from gateway.types import Headers, Scope

# answers that carry no body whatever their headers say: nothing in them to filter
_BODILESS = frozenset({204, 304})
# describe the unfiltered body, which the client does not get
_UNFILTERED_ONLY = frozenset({b"content-encoding", b"content-length", b"content-md5", b"digest", b"repr-digest", b"content-digest"})


@dataclass(frozen=True, slots=True)
class ResponseFields:
    """The `Exchange` of a route with `response_fields`."""

    requirements: Mapping[str, Requirement]  # top-level member -> what it needs
    body_limit: None = None  # the request body streams as usual
    option = "response_fields"
    graphql = False

    async def prepare(self, scope: Scope, body: bytes | None, allowed: Allowed | None) -> Forwarding:
        refused = self.refused(allowed.scopes if allowed is not None else frozenset())
        if not refused:
            # everything may be seen: streamed, not buffered (still whole: the route asks no slices)
            return Forwarding(whole=True)
        head = scope["method"] == "HEAD"
        return Forwarding(whole=True, rewrite=lambda status, headers, answer, limit: _without(refused, head, status, headers, answer, limit))

    async def describe(self, scope: Scope, body: bytes | None, allowed: Allowed | None) -> list[str]:
        """Each member's requirement, and whether this caller's answer keeps it."""
        removed = self.refused(allowed.scopes if allowed is not None else frozenset())
        return [f"field:     {member}: requires {requirement.describe()}: {'removed from a JSON answer' if member in removed else 'kept'}"
                for member, requirement in self.requirements.items()]

    def refused(self, effective: frozenset[str]) -> frozenset[str]:
        """The members a caller with these effective scopes may not see."""
        return frozenset(member for member, requirement in self.requirements.items() if not requirement.met_by(effective))


def is_json(headers: Headers) -> bool:
    content_type = next((value for name, value in headers if name == b"content-type"), b"").split(b";")[0].strip().lower()
    return content_type == b"application/json" or content_type.endswith(b"+json")


def decoded(headers: Headers, answer: bytes, limit: int) -> bytes:
    """The answer without its content coding (gzip and deflate, as most upstreams send), bounded.

    :raises BadGateway: a coding the gateway cannot undo (or more than one), a broken one, or
        more than `limit` bytes once decoded: a JSON answer is never passed on unfiltered.
    """
    codings = [coding.strip().lower() for name, value in headers if name == b"content-encoding" for coding in value.split(b",")]
    codings = [coding for coding in codings if coding not in (b"", b"identity")]
    if not codings:
        return answer
    if len(codings) > 1 or codings[0] not in (b"gzip", b"x-gzip", b"deflate"):
        shown = b", ".join(codings).decode("latin-1")[:40]
        raise BadGateway(f"the upstream's JSON answer is encoded as {shown!r}, which the gateway cannot filter")
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib framing, told by its header
    try:
        decoded = decoder.decompress(answer, limit + 1)
    except zlib.error:
        raise BadGateway("the upstream's JSON answer is not validly compressed") from None
    if len(decoded) > limit:
        raise BadGateway(f"the upstream's JSON answer is larger than {limit} bytes once decompressed")
    if not decoder.eof or decoder.unused_data:
        # cut short, or followed by more (a second gzip member a client would decode too)
        raise BadGateway("the upstream's JSON answer is not validly compressed")
    return decoded


def _without(refused: frozenset[str], head: bool, status: int, headers: Headers, answer: bytes, limit: int) -> tuple[int, Headers, bytes]:
    """What a caller who may not see the `refused` members gets of this answer: a JSON object
    without them, re-encoded; an answer without a body (HEAD, 204, 304) without the headers that
    describe the unfiltered body.

    :raises BadGateway: any answer with a body that is not one JSON object the gateway could
        read, so that no member is ever passed on unfiltered.
    """
    if status == 206 or any(name == b"content-range" for name, _ in headers):
        raise BadGateway("the upstream answered with a part of its answer (206, Content-Range), which cannot be filtered for this caller")
    kept_headers = [(name, value) for name, value in headers if name not in _UNFILTERED_ONLY]
    if head or status in _BODILESS or not answer:
        # no member to remove; its length is unknown until filtered, so it is not told
        return status, kept_headers, b""
    types = [value.split(b";")[0].strip().lower() for name, value in headers if name == b"content-type"]
    if len(types) != 1 or not (types[0] == b"application/json" or types[0].endswith(b"+json")):
        shown = b", ".join(types).decode("latin-1")[:60] if types else "no Content-Type"
        raise BadGateway(f"the upstream's answer is not labelled JSON ({shown}), so the members this caller may not see cannot be removed from it")
    try:
        document = json.loads(decoded(headers, answer, limit).decode("utf-8"), parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise BadGateway("the upstream's answer says it is JSON but does not parse, so its fields cannot be filtered") from None
    if not isinstance(document, dict):
        kind = "an array" if isinstance(document, list) else "not an object"
        raise BadGateway(f"the upstream's JSON answer is {kind}; response_fields filters the members of a top-level object, so it is not passed on")
    kept = {member: value for member, value in document.items() if member not in refused}
    try:
        # always the document as parsed, never the upstream's bytes: the client reads what was checked
        body = json.dumps(kept, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError:  # a number too large for a float, read as infinity
        raise BadGateway("the upstream's JSON answer holds a number the gateway cannot write back, so its fields cannot be filtered") from None
    return status, kept_headers, body


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")
