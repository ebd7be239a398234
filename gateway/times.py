"""Times as users read and write them: RFC 3339, shown in UTC (`2026-12-31T23:59:59Z`).

Every time kept (a grant's expiry or revocation) lies in years 1 to 9999 UTC, the range a
`datetime` can show: a time outside it could be stored but never shown, so it is refused where it
comes in (`parse_rfc3339`, `checked`) and read as unreadable where a store already holds one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

EXAMPLE = "2026-12-31T23:59:59Z"
EARLIEST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime.max.replace(tzinfo=UTC).timestamp()


def rfc3339(timestamp: float) -> str:
    """`timestamp` (seconds since the epoch) in RFC 3339, UTC, to the second."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def valid(value: object) -> bool:
    """Whether `value` is a timestamp that can be kept and shown: a finite number (not a bool)
    between `EARLIEST` and `LATEST`."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and EARLIEST <= value <= LATEST


def checked(timestamp: float, what: str) -> float:
    """`timestamp`, when `valid`.

    :raises ValueError: not finite, or outside years 1-9999 UTC; the message starts with `what`.
    """
    if not valid(timestamp):
        raise ValueError(f"{what} must fall in years 1 to 9999 UTC, not {timestamp!r} seconds since 1970")
    return timestamp


def parse_rfc3339(text: str) -> float:
    """The seconds since the epoch that an RFC 3339 time with its zone names.

    :raises ValueError: not such a time, one without a zone, or one outside years 1-9999 once in
        UTC; the message says which, after the text (`'...' is not an RFC 3339 time, e.g. ...`).
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time, e.g. {EXAMPLE}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: end it with Z or +HH:MM")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} falls outside years 1 to 9999 once in UTC") from None
    return moment.timestamp()
