"""Whether the admin listener at `admin.listen` is this gateway's, and serves: what `gateway
health` (the image's HEALTHCHECK, which has only the config) and `gateway serve` ask of it.

A port that answers proves nothing: another process may hold it. So `/healthz?challenge=NONCE`
answers, beside its status, `proof`: an HMAC-SHA256 of the nonce keyed with the admin token.
Only a listener holding the config's admin token can make it; the token itself never crosses
the wire, and each question's nonce is new, so an answer seen once proves nothing later.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs

import httpx

_MAX_CHALLENGE = 128  # characters; ours have 22


def proof(token: bytes, challenge: str) -> str:
    """What the admin listener holding `token` answers to `challenge`."""
    # a prefix of our own: the answer can be nothing else the token signs
    return hmac.new(token, b"gateway health: " + challenge.encode(), hashlib.sha256).hexdigest()


def answer(token: bytes, query: bytes) -> dict[str, str]:
    """The proof `/healthz` adds to its answer for the request's query (none without a challenge)."""
    challenges = parse_qs(query.decode("latin-1")).get("challenge")
    if not challenges or len(challenges[0]) > _MAX_CHALLENGE:
        return {}
    return {"proof": proof(token, challenges[0])}


def url(address: tuple[str, int], path: str = "/healthz") -> str:
    # a listener on every address answers on loopback
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address[0], address[0])
    return f"http://{f'[{host}]' if ':' in host else host}:{address[1]}{path}"


def ask(address: tuple[str, int], token: str, timeout: float) -> tuple[bool, str]:
    """Whether the listener at `address` holds `token` and serves, and a line saying so."""
    where = url(address)
    challenge = secrets.token_urlsafe(16)
    try:
        reply = httpx.get(where, params={"challenge": challenge}, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"{where}: {str(exc) or type(exc).__name__}"
    try:
        document = reply.json()
    except ValueError:
        document = None
    if reply.status_code != 200 or not isinstance(document, dict):
        return False, f"{where}: {reply.status_code} {reply.text.strip()[:200]}"
    expected = proof(token.encode(), challenge).encode()
    if not hmac.compare_digest(str(document.get("proof", "")).encode(), expected):
        return False, (f"{where}: {reply.status_code}, but not from this gateway: the answer does not prove it holds "
                       "the config's admin token (another process on that port?)")
    return True, f'{where}: 200 {{"status": "{document.get("status")}"}}'
