"""Grant store URLs: parsed once, when gateway.yaml loads, and never shown with a secret.

`parse_store` reads a `grants.store` URL into a `StoreAddress` (the backend and where it is), with
the message `gateway check` shows for a URL it cannot use; opening the store is the live state's
business (`grants.live.open_store`), at start.

A store URL may carry a password (`redis://:secret@host`, `redis://user:secret@host`,
`unix:///run/redis.sock?password=secret`), and so may an error text a client library builds from
it. Every message that names a store (readiness, logs, `gateway check`, `gateway grants`,
`gateway explain`) shows `redacted(url)`, and any foreign error text about it passes `scrubbed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

HIDDEN = "***"
# query parameters whose value is a secret (redis-py reads `password`): scrubbed from error texts
_SECRET_NAMES = ("pass", "secret", "token", "auth", "key", "credential")


def redacted(url: str) -> str:
    """`url` with its user information's password (or the whole user information when it has
    no ':') and every query value replaced by `***`, and no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.partition(':')[0]}:{HIDDEN} (not a readable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{HIDDEN}@{host}" if ":" in user else f"{HIDDEN}@{host}"
    query = "&".join(f"{quote(name, safe='')}={HIDDEN}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    # written out, not urlunsplit: that drops the '//' of an empty host (`unix:///path`)
    return f"{parts.scheme}:{'//' if url.startswith(parts.scheme + '://') else ''}{netloc}{parts.path}{'?' + query if query else ''}"


def _secrets(url: str) -> set[str]:
    """The pieces of `url` that are secret (the whole URL, its user information, the values of
    its password-like query parameters), as written and percent-decoded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    found = {url}
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if userinfo:
        found.update({userinfo, userinfo.partition(":")[2]} if ":" in userinfo else {userinfo})
    for raw in parts.query.split("&"):
        name, _, value = raw.partition("=")
        if any(word in unquote(name).lower() for word in _SECRET_NAMES):
            found.update({value, value.replace("+", " ")})
    return {piece for secret in found for piece in (secret, unquote(secret)) if piece}


def scrubbed(text: str, url: str) -> str:
    """`text` (an error message about the store `url`) with every secret of `url` replaced by
    `***`, the longest first so that no part of a longer one is left behind."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """A `grants.store` URL, parsed: which backend, and where."""

    backend: Literal["sqlite", "redis"]
    url: str = field(repr=False)  # as written; a Redis URL is what its client is built from (it may hold a password)
    path: Path | None = None  # sqlite: the database file, a relative one already taken from gateway.yaml's folder

    @classmethod
    def sqlite(cls, path: Path) -> StoreAddress:
        return cls("sqlite", f"sqlite:///{path}", path)

    def __str__(self) -> str:
        return redacted(self.url)


def parse_store(url: str, base: Path) -> StoreAddress:
    """The store a `grants.store` URL names: `sqlite:////abs/path`, `sqlite:///relative/to/base`
    (as SQLAlchemy writes them) or `redis://...` (as redis-py reads them).

    :raises ValueError: a URL of another scheme or shape (the message shows it `redacted`).
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"a sqlite store is sqlite:////absolute/path or sqlite:///relative/path, not {redacted(url)!r}")
        path = Path(unquote(parts.path[1:]))
        return StoreAddress("sqlite", url, path if path.is_absolute() else base / path)
    if parts.scheme in ("redis", "rediss"):
        from redis.asyncio.connection import parse_url  # only a Redis store's gateway imports its client

        try:
            parse_url(url)
        except ValueError as exc:  # redis-py's own words may quote the URL
            raise ValueError(f"grants.store {redacted(url)}: {scrubbed(str(exc), url)}") from None
        return StoreAddress("redis", url)
    raise ValueError(f"grants.store must be a sqlite:/// or redis:// URL, not {redacted(url)!r}")
