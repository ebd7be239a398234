"""What is noted of each request when asked: the access log's line (`--access-log`) with its
request id, and the request's metrics. The app calls `begin` when a request arrives and
`finish` once it is answered; with neither on, it calls nothing.

The access line (docs/operating.md, "Logs") has `request_id`, `method`, `path` (without the query,
which may hold secrets), `api`, `route`, `decision` (`forward`, `refuse`, `metadata` for an RFC
9728 document, or `shadow_refuse` for a request a table in shadow mode would refuse and forwarded),
`reason` (the refusal's `error`, the would-be refusal's for `shadow_refuse`, or `forwarded`), `status`, `duration_ms`, `upstream_ms`, `subject` and `client`;
never a credential. The request id is the client's `X-Request-Id` when it is one value of 1 to 200
visible ASCII characters (any other would go into the log and to the upstream as the client wrote
it), otherwise one made here; it is passed upstream and sent back on the gateway's own answers.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import TYPE_CHECKING

from gateway.metrics import Recorder
from gateway.types import Scope

if TYPE_CHECKING:
    from gateway.pipeline import Outcome

access_logger = logging.getLogger("gateway.access")

REQUEST_ID = b"x-request-id"
# the `reason` of a request answered with an RFC 9728 document: counted as decision "metadata"
METADATA = "protected_resource_metadata"
# the decision of a request a table in shadow mode would refuse, and forwarded
SHADOW_REFUSE = "shadow_refuse"
MAX_REQUEST_ID = 200
# the methods counted under their own name; any other (no route has it) is counted as "other",
# so a client cannot add label values at will
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _sane(value: bytes) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and all(0x21 <= byte <= 0x7E for byte in value)


class Record:
    """One request being answered: when it came, its id, and the status it was answered with (set
    by whoever sends the answer's head: the forwarder, or the app for its own answers)."""

    __slots__ = ("observer", "started", "request_id", "id_header", "status", "upstream_seconds")

    def __init__(self, observer: Observer, request_id: str | None, id_header: tuple[bytes, bytes] | None) -> None:
        self.observer = observer
        self.started = time.perf_counter()
        self.request_id = request_id
        # the X-Request-Id the upstream is sent, when the client's is not passed on as it is
        self.id_header = id_header
        self.status = 0
        self.upstream_seconds: float | None = None  # set by the forwarder


class Observer:
    """The access log and the metrics of one gateway, each on or off.

    :param metrics: this process's recorder; None: metrics are off.
    :param access_log: write a line per request to the `gateway.access` logger.
    """

    __slots__ = ("metrics", "access_log", "_prefix", "_counter")

    def __init__(self, metrics: Recorder | None, access_log: bool) -> None:
        self.metrics = metrics
        self.access_log = access_log
        # made in each serving process: ids are unique across processes without a syscall each
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def begin(self, scope: Scope) -> Record:
        """The record of a request that just arrived. With the access log on, the request gets
        its id: the client's, or a new one, which replaces any the client sent in `scope`."""
        if not self.access_log:
            return Record(self, None, None)
        sent = [value for name, value in scope["headers"] if name.lower() == REQUEST_ID]
        if len(sent) == 1 and _sane(sent[0]):
            return Record(self, sent[0].decode("ascii"), None)
        made = f"{self._prefix}-{next(self._counter):x}"
        if sent:  # several, too long, or not visible ASCII: the upstream gets the gateway's instead
            scope["headers"] = [(name, value) for name, value in scope["headers"] if name.lower() != REQUEST_ID]
        return Record(self, made, (REQUEST_ID, made.encode("ascii")))

    def finish(self, record: Record, method: str, path: bytes, outcome: Outcome, forwarded: bool, reason: str) -> None:
        """Count and log the request `record` noted, now answered.

        :param outcome: how far the request got (its route, its token), and whether a table in
            shadow mode forwarded it instead of refusing it.
        :param forwarded: the request was allowed (or shadow-refused) and handed to the forwarder.
        :param reason: the refusal's `error`, or `forwarded`.
        """
        seconds = time.perf_counter() - record.started
        status = record.status or 500  # nothing sent: the server answers 500 for an app that failed
        match = outcome.match
        verified = outcome.token
        route = match.route if match is not None else None
        api = route.api.name if route is not None else ""
        template = route.template if route is not None else ""
        shadow = outcome.shadow
        if shadow is None:
            decision = "forward" if forwarded else "metadata" if reason == METADATA else "refuse"
        else:
            # what the table would have answered, though the upstream answered (`status`)
            decision, reason, api = SHADOW_REFUSE, shadow.refusal.error, shadow.api.name
        if self.metrics is not None:
            if verified is not None:
                cache: str | None = "hit" if verified.recalled else "miss"
            else:
                cache = "miss" if reason == "invalid_token" else None
            labels = (api, method if route is not None or method in _METHODS else "other", template, decision, status)
            self.metrics.request(labels, seconds, record.upstream_seconds, cache)
        if self.access_log:
            shown = path.decode("ascii", "backslashreplace")
            upstream_ms = None if record.upstream_seconds is None else round(record.upstream_seconds * 1000, 3)
            access_logger.info("%s %s %d", method, shown, status, extra={"fields": {
                "request_id": record.request_id, "method": method, "path": shown, "api": api or None, "route": template or None,
                "decision": decision, "reason": reason, "status": status, "duration_ms": round(seconds * 1000, 3),
                "upstream_ms": upstream_ms, "subject": verified.subject if verified is not None else None,
                "client": verified.client if verified is not None else None,
            }})
