"""Credential extraction: exactly one bearer token, from the Authorization header only
(RFC 6750 2.1). Tokens in the query string are refused, never read, under every name an upstream's
framework would read as `access_token`; several credentials are refused rather than guessed between."""

from __future__ import annotations

import re

from gateway.errors import CredentialsInvalidRequest, InvalidToken, Unauthorized

# RFC 6750 b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 16 * 1024

_TOKEN_PARAMETER = b"access_token"  # RFC 6750 2.3
# '&' and, as older frameworks (PHP's arg_separator, Rack 2, Python before 3.9.2) still do, ';'
_SEPARATORS = re.compile(rb"[&;]")
# %XX in either case, and %uXXXX, which ASP.NET and IIS decode too
_ESCAPE = re.compile(rb"%(?:[uU]([0-9A-Fa-f]{4})|([0-9A-Fa-f]{2}))")
# PHP reads ' ', '.' and an unclosed '[' in a parameter name as '_'
_PHP_NAME = bytes.maketrans(b" .[", b"___")
_PHP_HEAD = bytes.maketrans(b" .", b"__")
# the name a bracketed parameter is filed under: `access_token[]`, `access_token[x]` (PHP, Rack,
# qs), after the leading brackets Rack 2 and qs skip (`[access_token]`)
_BRACKET_HEAD = re.compile(rb"[ \[\]]*([^\[\]]*)")


def _unescape(match: re.Match[bytes]) -> bytes:
    wide, byte = match.groups()
    if byte is not None:
        return bytes((int(byte, 16),))
    return chr(int(wide, 16)).encode("utf-8", "surrogatepass")


def _may_name_a_token(query_string: bytes) -> bool:
    """Whether a query string could carry a parameter some framework reads as access_token: only
    one holding the name's "token" or a percent-escape could, so most queries need no parsing."""
    # find() and an int, not `b"..." in`: that tries the bytes as an int first, and fails slowly
    return query_string.find(b"token") >= 0 or 0x25 in query_string  # 0x25 is '%'


def read_names(name: bytes) -> tuple[bytes, ...]:
    """The names a raw query parameter name may reach a framework as: decoded as servers decode it
    ('+' as space, %XX and %uXXXX escapes), cut at a NUL as PHP's C strings are, then read with
    PHP's, Rack's and qs's name rules. Case is kept, as most frameworks keep it."""
    decoded = _ESCAPE.sub(_unescape, name.replace(b"+", b" ")).partition(b"\0")[0]
    stripped = decoded.lstrip(b" ")  # PHP skips leading spaces
    head = _BRACKET_HEAD.match(stripped)
    return (decoded, stripped.translate(_PHP_NAME)) if head is None else (decoded, stripped.translate(_PHP_NAME), head[1].translate(_PHP_HEAD))


def _reads_as_token_parameter(name: bytes) -> bool:
    """Whether a raw query parameter name reaches a framework as `access_token`."""
    return _TOKEN_PARAMETER in read_names(name)


def token_parameter(query_string: bytes) -> str | None:
    """The raw name of the first query parameter an upstream could read as `access_token`, or None.

    Every parameter counts, with or without a value, wherever it stands in the query.
    """
    if not _may_name_a_token(query_string):
        return None
    for parameter in _SEPARATORS.split(query_string):
        name = parameter.partition(b"=")[0]
        if name and _reads_as_token_parameter(name):
            return name.decode("latin-1")
    return None


def presented(authorization: list[bytes], query_string: bytes) -> bytes | None:
    """The request's one Authorization value, as sent, when nothing else could carry a credential.

    A token verified under this value (`TokenVerifier.verify(key=...)`) was read from these exact
    bytes by `bearer_token`, so a request presenting them again needs no second reading. None when
    `bearer_token` must look: no header or several, or a query string that may hold a token.
    """
    if len(authorization) != 1:
        return None
    if query_string and _may_name_a_token(query_string):
        return None  # bearer_token must see whether a parameter reads as access_token
    return authorization[0]


def bearer_token(authorization: list[bytes], query_string: bytes) -> str:
    """The one bearer token of a request.

    :param authorization: every Authorization header value the request carried.
    :raises Unauthorized: no bearer credentials.
    :raises CredentialsInvalidRequest: several credentials, or a token outside the header.
    :raises InvalidToken: the credential is not a well-formed bearer token.
    """
    parameter = token_parameter(query_string)
    if parameter is not None:
        raise CredentialsInvalidRequest(
            f"the query parameter {parameter[:40]!r} reads as access_token: access tokens are accepted"
            " only in the Authorization header, never in the query string"
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
