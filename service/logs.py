"""Structured logging: one JSON object per line (or plain text), configured by the server.

Python warnings (Pillow's about a malformed EXIF block, numpy's about an overflow) are log
records too, of the logger ``py.warnings`` with their ``category``, ``warning_file`` and
``warning_line``: raw ``file:line: Category: text`` lines on stderr would break the JSON log
apart.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from typing import TextIO

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn adds an ANSI-coloured copy of each message
}
_warnings_log = logging.getLogger("py.warnings")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker, with CNNSERVE_WORKERS > 1
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
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
