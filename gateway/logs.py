"""The log's format (`--log-format text|json`), the same for the gateway's own lines and the
server's (uvicorn's, granian's), in every process `gateway serve` starts.

`json` writes one object per line: `time` (UTC, RFC 3339), `level`, `logger`, `message`, and the
line's fields (a record's `fields` mapping: the access log's, say). `text` writes
`LEVEL logger: message` with the fields after it as `name=value`.

A record is one line whatever its values hold: a logged value may come from a client (a path
decoded from `%0A`, a header), so the formatters, not the call sites, escape every control
character (C0, DEL, C1) and the Unicode line and paragraph separators, which some log readers
take for line ends. `json` writes them as JSON's escapes (the value reads back unchanged);
`text` as Python's (`\\n`, `\\x1b`, `\\u2028`). A traceback (text) follows on lines of its
own, each indented, so none of them can pass for a record.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")

# C0 controls, DEL, C1 controls (NEL among them), LINE SEPARATOR, PARAGRAPH SEPARATOR, and lone
# surrogates (a byte a server decoded with surrogateescape), which no stream could encode
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# what json.dumps leaves raw with ensure_ascii=False (it escapes C0 itself)
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    character = match.group()
    if character in _SHORT:
        return _SHORT[character]
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control character and Unicode line break written as an escape."""
    return _UNSAFE.sub(_escaped, text)


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
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        text = json.dumps(line, ensure_ascii=False, default=str)
        # only inside strings can these be: their escapes read back as the same value
        return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message name=value ...`; a value with a space or a quote is JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        text = escape(f"{record.levelname} {record.name}: {record.getMessage()}")
        fields = getattr(record, "fields", None)
        if fields:
            text += "".join(f" {escape(str(name))}={_text_value(value)}" for name, value in fields.items())
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:
            text += "".join(f"\n    {escape(line)}" for line in block.split("\n"))
        return text


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
