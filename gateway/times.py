"""Times as users read and write them: RFC 3339, shown in UTC (`2026-12-31T23:59:59Z`)."""

from __future__ import annotations

from datetime import datetime, timezone

EXAMPLE = "2026-12-31T23:59:59Z"


def rfc3339(timestamp: float) -> str:
    """`timestamp` (seconds since the epoch) in RFC 3339, UTC, to the second."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """The seconds since the epoch that an RFC 3339 time with its zone names.

    :raises ValueError: not such a time, or one without a zone; the message says which, after
        the text (`'...' is not an RFC 3339 time, e.g. ...`).
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time, e.g. {EXAMPLE}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: end it with Z or +HH:MM")
    return moment.timestamp()
