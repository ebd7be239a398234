"""The log's format (`--log-format text|json`), the same for the gateway's own lines and the
server's (uvicorn's, granian's), in every process `gateway serve` starts.

`json` writes one object per line: `time` (UTC, RFC 3339), `level`, `logger`, `message`, and the
line's fields (a record's `fields` mapping: the access log's, say). `text` writes
`LEVEL logger: message` with the fields after it as `name=value`.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message name=value ...`; a value with a space or a quote is JSON-quoted."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return text
        return text + "".join(f" {name}={_text_value(value)}" for name, value in fields.items())


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    shown = str(value)
    if not shown or any(character in shown for character in ' "=\\') or not shown.isprintable():
        return json.dumps(shown)
    return shown


def logging_config(level: str, log_format: str, access_log: bool = False) -> dict[str, Any]:
    """A `logging.config.dictConfig` for a process of `gateway serve`: every logger, the server's
    included, through one handler on stderr in `log_format`.

    :param level: the least level written (`--log-level`).
    :param access_log: the `gateway.access` lines are written whatever `level` says.
    """
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"gateway": {"class": "logging.StreamHandler", "formatter": "gateway", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["gateway"], "level": upper},
        "loggers": {
            # the servers' own loggers hand their lines to the root's handler
            **{name: {"handlers": [], "propagate": True, "level": upper} for name in ("uvicorn", "uvicorn.error", "_granian")},
            # the servers' access logs stay off: the gateway's access line replaces them
            **{name: {"handlers": [], "propagate": False} for name in ("uvicorn.access", "granian.access")},
            "gateway.access": {"level": "INFO" if access_log else "WARNING"},
            "httpx": {"level": "WARNING"},
        },
    }


def configure(level: str, log_format: str, access_log: bool = False) -> None:
    logging.config.dictConfig(logging_config(level, log_format, access_log))
