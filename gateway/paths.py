"""Path canonicalisation: one decoded form to match on, the raw bytes to forward.

A path is refused (400 invalid_request) whenever an upstream could read it differently from the
gateway: encoded slash or backslash, dot segments (raw, encoded or before a `;` parameter),
empty segments, NUL and other control bytes, malformed or double-encoded escapes, invalid UTF-8,
and raw bytes that RFC 3986 says must be percent-encoded. What remains splits into segments one
to one between the raw and the decoded form, so the bytes forwarded are exactly the bytes matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.errors import InvalidRequest

# RFC 3986 pchar: unreserved / pct-encoded / sub-delims / ":" / "@"
_PCHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@%")
_PLAIN_SEGMENT = re.compile(rb"[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*")
# a whole path of plain segments (none starting with '.'): nothing to decode or refuse
_PLAIN_PATH = re.compile(rb"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)+")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# after one decoding, an escape that a second decoding would turn into a separator, a dot or NUL
_DOUBLE_ENCODED = re.compile(r"%(2[fFeE]|5[cC]|00)")


@dataclass(slots=True)  # one per request: not frozen, which would cost four times as much to build
class CanonicalPath:
    """A request path accepted for matching: its decoded segments, and the raw bytes they came
    from, which split on `/` into as many raw segments, index for index."""

    segments: tuple[str, ...]
    raw: bytes

    def raw_tail(self, skip: int) -> bytes:
        """The raw bytes of the path after its first `skip` segments, starting with `/`."""
        if skip == 0:
            return self.raw
        parts = self.raw.split(b"/", skip + 1)
        return b"/" + parts[skip + 1] if len(parts) > skip + 1 else b"/"


def _refuse(raw: bytes, problem: str) -> InvalidRequest:
    shown = raw.decode("ascii", "backslashreplace")
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return InvalidRequest(f"path {shown!r} refused: {problem}")


def _decode_segment(raw_path: bytes, raw: bytes) -> str:
    if not raw:
        raise _refuse(raw_path, "empty path segment ('//' or a trailing '/')")
    if _PLAIN_SEGMENT.fullmatch(raw):
        segment = raw.decode("ascii")
    else:
        bad = next((byte for byte in raw if byte not in _PCHAR), None)
        if bad == 0x5C:
            raise _refuse(raw_path, "backslash in path")
        if bad == 0x00:
            raise _refuse(raw_path, "NUL byte in path")
        if bad is not None:
            raise _refuse(raw_path, f"byte {bytes([bad])!r} must be percent-encoded")
        if _BAD_ESCAPE.search(raw):
            raise _refuse(raw_path, "malformed percent-escape")
        decoded = unquote_to_bytes(raw)
        if b"/" in decoded:
            raise _refuse(raw_path, "encoded slash (%2F) in path")
        if b"\\" in decoded:
            raise _refuse(raw_path, "encoded backslash (%5C) in path")
        if b"\x00" in decoded:
            raise _refuse(raw_path, "encoded NUL (%00) in path")
        if any(b < 0x20 or b == 0x7F for b in decoded):
            raise _refuse(raw_path, "encoded control character in path")
        try:
            segment = decoded.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse(raw_path, "percent-escapes are not valid UTF-8") from None
        if _DOUBLE_ENCODED.search(segment):
            raise _refuse(raw_path, "double-encoded slash, backslash, dot or NUL")
    if segment.partition(";")[0] in (".", ".."):
        raise _refuse(raw_path, "dot segment ('.' or '..') in path")
    return segment


def canonicalise(raw_path: bytes) -> CanonicalPath:
    """Split and decode a raw request path (no query string), refusing every ambiguous form.

    :raises InvalidRequest: the path could mean something else to an upstream.
    """
    if _PLAIN_PATH.fullmatch(raw_path):
        return CanonicalPath(tuple(raw_path.decode("ascii")[1:].split("/")), raw_path)
    if not raw_path.startswith(b"/"):
        raise _refuse(raw_path, "path must start with '/'")
    if raw_path == b"/":
        return CanonicalPath((), raw_path)
    segments = tuple(_decode_segment(raw_path, raw) for raw in raw_path[1:].split(b"/"))
    return CanonicalPath(segments, raw_path)
