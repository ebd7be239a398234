"""Credential extraction: exactly one bearer token, from the Authorization header only
(RFC 6750 2.1). Tokens in the query string are refused, never read; several credentials are
refused rather than guessed between."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from gateway.errors import CredentialsInvalidRequest, InvalidToken, Unauthorized

# RFC 6750 b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 16 * 1024


def presented(authorization: list[bytes], query_string: bytes) -> bytes | None:
    """The request's one Authorization value, as sent, when nothing else could carry a credential.

    A token verified under this value (`TokenVerifier.verify(key=...)`) was read from these exact
    bytes by `bearer_token`, so a request presenting them again needs no second reading. None when
    `bearer_token` must look: no header or several, or a query string that may hold a token.
    """
    if len(authorization) == 1 and b"access_token" not in query_string:
        return authorization[0]
    return None


def bearer_token(authorization: list[bytes], query_string: bytes) -> str:
    """The one bearer token of a request.

    :param authorization: every Authorization header value the request carried.
    :raises Unauthorized: no bearer credentials.
    :raises CredentialsInvalidRequest: several credentials, or a token outside the header.
    :raises InvalidToken: the credential is not a well-formed bearer token.
    """
    if b"access_token" in query_string and any(
        name == "access_token" for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    ):
        raise CredentialsInvalidRequest(
            "access tokens are accepted only in the Authorization header, never in the query string"
        )
    if not authorization:
        raise Unauthorized("this route requires a bearer token: send 'Authorization: Bearer <token>'")
    if len(authorization) > 1:
        raise CredentialsInvalidRequest("several Authorization headers: send exactly one bearer token")
    value = authorization[0].decode("latin-1").strip(" \t")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        shown = scheme[:20] or "(empty)"
        raise Unauthorized(f"Authorization scheme {shown!r} is not accepted: send 'Authorization: Bearer <token>'")
    credentials = credentials.strip(" \t")
    if len(credentials) > MAX_TOKEN_LENGTH:
        raise InvalidToken(f"the bearer token is longer than {MAX_TOKEN_LENGTH} characters")
    if _B64TOKEN.fullmatch(credentials):
        return credentials
    if not credentials:
        raise CredentialsInvalidRequest("the Authorization header says Bearer but carries no token")
    if " " in credentials or "\t" in credentials or "," in credentials:
        raise CredentialsInvalidRequest("the Authorization header carries several credentials: send exactly one bearer token")
    raise InvalidToken("the bearer token holds characters a token cannot hold")
