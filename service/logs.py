"""Logging: one JSON object per line for machines, or one readable line for a person.

``CNNSERVE_LOG_FORMAT``: ``json``, ``text``, or ``auto`` (the default): text when stderr is a
terminal (a person running `make serve`), JSON otherwise (a container, a pipe, a file).
Both carry the same fields: the time, level, logger and message, then every field the
record has (an access line's method, path, status, duration, model and request id), and
the trace and span ids while a traced request runs (``service.tracing``).

Python warnings (Pillow's about a malformed EXIF block, numpy's about an overflow) are log
records too, of the logger ``py.warnings`` with their ``category``, ``warning_file`` and
``warning_line``: raw ``file:line: Category: text`` lines on stderr would break the JSON log
apart.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import Any, TextIO

from service.tracing import trace_ids

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "resolve_format"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn adds an ANSI-coloured copy of each message
}
_warnings_log = logging.getLogger("py.warnings")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a record says beside its message: its extra fields, and the trace it is in."""
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    ids = trace_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{moment}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker, with CNNSERVE_WORKERS > 1
        }
        entry |= _fields(record)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line a person reads: time, level, logger, message, then the fields as key=value
    (an access line: ``request POST /v1/models/m/classify 200 3.1ms model=m request_id=...``)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        head = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.name == "cnnserve.access":  # the request first, as a person reads it
            method, path = fields.pop("method", ""), fields.pop("path", "")
            status, took = fields.pop("status", ""), fields.pop("duration_ms", "")
            head += f" {method} {path} {status} {took}ms"
        tail = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        text = f"{head} {tail}" if tail else head
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def resolve_format(fmt: str) -> str:
    """``auto`` as this process runs: text on a terminal, JSON elsewhere."""
    if fmt != "auto":
        return fmt
    return "text" if sys.stderr.isatty() else "json"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: one log record per warning, on one line."""
    text = " ".join(str(message).split())
    _warnings_log.warning(
        "%s: %s",
        category.__name__,
        text,
        extra={"category": category.__name__, "warning_file": filename, "warning_line": lineno},
    )


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request
    # What logging.captureWarnings(True) does, with the category as a field of its own and
    # without the source line it appends after a newline.
    warnings.showwarning = _show_warning
