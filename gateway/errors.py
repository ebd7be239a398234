"""Every answer the gateway gives itself, one class per refusal.

    Refusal
    ├── InvalidRequest     400 invalid_request  (ambiguous path, bad Host, several credentials, token outside the header)
    │   ├── HeadTooLarge   431 invalid_request  (request head over 64 KiB, or more fields than limits.max_headers)
    │   ├── VersionNotSupported  505 invalid_request  (a request-line version other than HTTP/1.0 or 1.1)
    │   ├── FramingInvalidRequest  400 invalid_request  (framing that cannot be trusted: connection closed)
    │   ├── CredentialsInvalidRequest  400 invalid_request  (several credentials, a token outside the header)
    │   └── UnsupportedMediaType  415 invalid_request  (a GraphQL POST body that is neither JSON nor a GraphQL document)
    ├── UriTooLong         414 uri_too_long     (request target over limits.max_uri)
    ├── CodingNotImplemented  501 not_implemented  (a transfer coding other than one final chunked)
    ├── NotFound           404 not_found        (no route: deny by default)
    ├── Unauthorized       401 unauthorized     (no bearer credentials on a protected route)
    ├── InvalidToken       401 invalid_token    (signature, alg, kid, exp, nbf, iss, aud, malformed)
    ├── Forbidden          403 forbidden        (valid token, requirement not met)
    ├── InvalidScope       403 invalid_scope    (the token's scopes break a rule of the API's catalog)
    ├── InsufficientUserAuthentication  401 insufficient_user_authentication  (a step-up scope needs a fresher login)
    ├── TemporarilyUnavailable  503 temporarily_unavailable  (the grant store cannot be read; Retry-After)
    ├── BadGateway         502 bad_gateway      (upstream refused, reset or answered garbage)
    └── GatewayTimeout     504 gateway_timeout  (upstream too slow)

Each knows its status, its `error` code, its WWW-Authenticate parameters and whether the
connection closes after it; `render()` is the one place an answer is built from it (docs/requests.md
lists every answer).
"""

from __future__ import annotations

import json
import re

from gateway.types import Headers


class Refusal(Exception):
    """A request the gateway answers itself instead of forwarding."""

    status = 500
    error = "internal_error"
    # RFC 6750 `error` attribute for WWW-Authenticate, or None when the answer carries none
    bearer_error: str | None = None
    challenge = False
    # the request's framing or head cannot be trusted: answer, then close the connection
    close = False
    # a decision about the caller (401, 403, 404), not about the request's form or the gateway's
    # state: what a table in shadow mode forwards instead of answering
    about_caller = False

    def __init__(self, description: str, **extra: object) -> None:
        super().__init__(description)
        self.description = description
        self.extra = extra

    def challenge_params(self) -> list[tuple[str, str]]:
        params = []
        if self.bearer_error:
            params.append(("error", self.bearer_error))
            params.append(("error_description", self.description))
        return params


class InvalidRequest(Refusal):
    """The request is malformed or ambiguous: a path an upstream could read differently, or
    credentials sent more than once or outside the Authorization header."""

    status = 400
    error = "invalid_request"


class HeadTooLarge(InvalidRequest):
    """The request line and headers exceed what the gateway reads before refusing, or hold more
    fields than `limits.max_headers` (RFC 6585 5)."""

    status = 431
    close = True


class VersionNotSupported(InvalidRequest):
    """The request line names an HTTP version other than 1.0 or 1.1 (RFC 9110 15.6.6)."""

    status = 505
    close = True


class FramingInvalidRequest(InvalidRequest):
    """The request's framing is ambiguous (e.g. Transfer-Encoding in HTTP/1.0, a malformed
    chunked body): answered, then the connection closed, as RFC 9112 6.1 and 6.3 ask."""

    close = True


class UnsupportedMediaType(InvalidRequest):
    """A body of a media type the route does not read (a GraphQL route reads JSON and
    application/graphql): refused rather than forwarded unread (RFC 9110 15.5.16)."""

    status = 415


class UriTooLong(Refusal):
    """The request target is longer than `limits.max_uri` (RFC 9110 15.5.15)."""

    status = 414
    error = "uri_too_long"


class CodingNotImplemented(Refusal):
    """A transfer coding other than one final `chunked` (RFC 9112 6.1; nginx answers 501 too)."""

    status = 501
    error = "not_implemented"
    close = True


class CredentialsInvalidRequest(InvalidRequest):
    """Several credentials, or a token outside the Authorization header (RFC 6750 3.1)."""

    bearer_error = "invalid_request"
    challenge = True


class NotFound(Refusal):
    """No route matches the method and path, or the route hides its existence."""

    status = 404
    error = "not_found"
    about_caller = True


class Unauthorized(Refusal):
    """A protected route was called without bearer credentials."""

    status = 401
    error = "unauthorized"
    about_caller = True
    challenge = True


class InvalidToken(Refusal):
    """The bearer token is malformed, badly signed, expired, not yet valid, or for someone else."""

    status = 401
    error = "invalid_token"
    about_caller = True
    bearer_error = "invalid_token"
    challenge = True


class Forbidden(Refusal):
    """The token is valid but its scopes do not meet the route's requirement."""

    status = 403
    error = "forbidden"
    about_caller = True
    bearer_error = "insufficient_scope"
    challenge = True

    def __init__(self, description: str, *, scope: str, **extra: object) -> None:
        super().__init__(description, **extra)
        self.scope = scope

    def challenge_params(self) -> list[tuple[str, str]]:
        return [*super().challenge_params(), ("scope", self.scope)]


class InvalidScope(Refusal):
    """The token's scopes break a rule of the API's catalog: an exclusive group, a dependency, a
    grant type, a suffix not offered, an unknown scope where those are refused."""

    status = 403
    error = "invalid_scope"
    about_caller = True
    bearer_error = "invalid_scope"
    challenge = True


class InsufficientUserAuthentication(Refusal):
    """The requirement is met only with a step-up scope, which counts only after a fresher or
    stronger user authentication (RFC 9470 3)."""

    status = 401
    error = "insufficient_user_authentication"
    about_caller = True
    bearer_error = "insufficient_user_authentication"
    challenge = True

    def __init__(self, description: str, *, acr_values: str, max_age: float | None, **extra: object) -> None:
        super().__init__(description, **extra)
        self.acr_values = acr_values
        self.max_age = max_age

    def challenge_params(self) -> list[tuple[str, str]]:
        params = [*super().challenge_params(), ("acr_values", self.acr_values)]
        if self.max_age is not None:
            params.append(("max_age", f"{self.max_age:g}"))
        return params


class TemporarilyUnavailable(Refusal):
    """The request needs live grants and the grant store cannot be read: never decided on a guess."""

    status = 503
    error = "temporarily_unavailable"

    def __init__(self, description: str, *, retry_after: int, **extra: object) -> None:
        super().__init__(description, **extra)
        self.retry_after = retry_after


class BadGateway(Refusal):
    """The upstream could not be reached, reset the connection or answered something unusable."""

    status = 502
    error = "bad_gateway"


class GatewayTimeout(Refusal):
    """The upstream did not connect or answer within the configured timeout."""

    status = 504
    error = "gateway_timeout"


# RFC 6750 attribute values are quoted-strings of %x20-21 / %x23-5B / %x5D-7E only
_NOT_QUOTABLE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def _quoted(value: str) -> str:
    return _NOT_QUOTABLE.sub("?", value.replace('"', "'"))


def www_authenticate(refusal: Refusal, realm: str, resource_metadata: str | None = None) -> bytes:
    params = [("realm", realm), *refusal.challenge_params()]
    if resource_metadata is not None and refusal.status == 401:
        # RFC 9728 5.1: where a client that was told to authenticate finds how to
        params.append(("resource_metadata", resource_metadata))
    return ("Bearer " + ", ".join(f'{name}="{_quoted(value)}"' for name, value in params)).encode("ascii")


# a refusal's `extensions.code` in a GraphQL answer, as Apollo's servers name them; any other 4xx
# is BAD_REQUEST, a 5xx its `error` in capitals
_GRAPHQL_CODES = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND"}


def _graphql_errors(refusal: Refusal) -> list[dict[str, object]]:
    """A refusal as a GraphQL response's `errors`: one error, its description."""
    code = _GRAPHQL_CODES.get(refusal.status) or ("BAD_REQUEST" if refusal.status < 500 else refusal.error.upper())
    extensions: dict[str, object] = {"code": code}
    if "required" in refusal.extra:
        extensions["required"] = refusal.extra["required"]
    return [{"message": refusal.description, "extensions": extensions}]


def render(
    refusal: Refusal, realm: str = "gateway", resource_metadata: str | None = None, *, graphql: bool = False,
) -> tuple[int, Headers, bytes]:
    """The status, headers and JSON body that answer `refusal`.

    :param resource_metadata: the URL of the table's RFC 9728 document, named by a 401's challenge.
    :param graphql: a GraphQL route's answer: the body is a GraphQL response too, with `errors`
        (the refusal's own, or one error).
    """
    members = {"error": refusal.error, "error_description": refusal.description, **refusal.extra}
    # a bare 404 is the no-route answer, which a hidden route and another user's resource give
    # too: it stays that answer, or its shape would tell that a GraphQL route is there
    if graphql and "errors" not in members and not (isinstance(refusal, NotFound) and not refusal.extra):
        members["errors"] = _graphql_errors(refusal)
    body = json.dumps(members).encode("utf-8")
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
    ]
    if refusal.challenge:
        headers.append((b"www-authenticate", www_authenticate(refusal, realm, resource_metadata)))
    if refusal.close:
        headers.append((b"connection", b"close"))
    if isinstance(refusal, TemporarilyUnavailable):
        headers.append((b"retry-after", b"%d" % refusal.retry_after))
    return refusal.status, headers, body
