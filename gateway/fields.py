"""Field-level scopes for REST answers (docs/route-tables.md, "Response fields"): a route's
`response_fields` maps top-level members of a JSON answer to requirements; a member whose
requirement the caller does not meet is removed. Only such routes buffer their answer."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import BadGateway
from gateway.exchange import Forwarding
from gateway.scopes import Requirement
from gateway.types import Headers, Scope

if TYPE_CHECKING:
    from gateway.decision import Grant


@dataclass(frozen=True, slots=True)
class ResponseFields:
    """The `Exchange` of a route with `response_fields`."""

    requirements: Mapping[str, Requirement]  # top-level member -> what it needs
    body_limit: None = None  # the request body streams as usual

    async def prepare(self, scope: Scope, body: bytes | None, grant: Grant | None) -> Forwarding:
        refused = self.refused(grant.scopes if grant is not None else frozenset())
        if not refused:
            return Forwarding()  # everything may be seen: streamed, not buffered
        return Forwarding(rewrite=lambda status, headers, answer, limit: _without(refused, status, headers, answer, limit))


    def refused(self, effective: frozenset[str]) -> frozenset[str]:
        """The members a caller with these effective scopes may not see."""
        return frozenset(member for member, requirement in self.requirements.items() if not requirement.met_by(effective))


def is_json(headers: Headers) -> bool:
    content_type = next((value for name, value in headers if name == b"content-type"), b"").split(b";")[0].strip().lower()
    return content_type == b"application/json" or content_type.endswith(b"+json")


def decoded(headers: Headers, answer: bytes, limit: int) -> bytes:
    """The answer without its content coding (gzip and deflate, as most upstreams send), bounded.

    :raises BadGateway: a coding the gateway cannot undo, a broken one, or more than `limit` bytes
        once decoded: a JSON answer is never passed on unfiltered.
    """
    coding = next((value.strip().lower() for name, value in headers if name == b"content-encoding"), b"identity")
    if coding in (b"", b"identity"):
        return answer
    if coding not in (b"gzip", b"x-gzip", b"deflate"):
        raise BadGateway(f"the upstream's JSON answer is {coding.decode('latin-1')[:20]}-encoded, which the gateway cannot filter")
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib framing, told by its header
    try:
        decoded = decoder.decompress(answer, limit + 1)
    except zlib.error:
        raise BadGateway("the upstream's JSON answer is not validly compressed") from None
    if len(decoded) > limit:
        raise BadGateway(f"the upstream's JSON answer is larger than {limit} bytes once decompressed")
    return decoded


def _without(refused: frozenset[str], status: int, headers: Headers, answer: bytes, limit: int) -> tuple[int, Headers, bytes]:
    """The answer without the refused members, when it is a JSON object; any other answer unchanged.

    :raises BadGateway: the answer says it is JSON and does not parse: it is never passed on unfiltered.
    """
    if not is_json(headers) or not answer:
        return status, headers, answer
    try:
        document = json.loads(decoded(headers, answer, limit))
    except (ValueError, RecursionError):
        raise BadGateway("the upstream's answer says it is JSON but does not parse, so its fields cannot be filtered") from None
    if not isinstance(document, dict) or not refused & document.keys():
        return status, headers, answer
    kept = {member: value for member, value in document.items() if member not in refused}
    # sent as it is now, uncompressed: its length is set by the forwarder
    headers = [(name, value) for name, value in headers if name != b"content-encoding"]
    return status, headers, json.dumps(kept, ensure_ascii=False).encode("utf-8")
