"""Logging: one JSON object a line on stderr, the way log collectors in Kubernetes want it.

Callers pass structured fields with ``extra={"fields": {...}}``. Nothing secret is ever handed to a logger: the
API key and session tokens stay out of every message by construction, not by filtering.

Every request writes a line (two on attributed routes), so the path is kept cheap: no caller lookup, a cached
timestamp prefix, and a buffered stream flushed every quarter second, on warnings, and at shutdown, much as
nginx's ``access_log ... buffer=`` does.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

access = logging.getLogger("proxy.access")
audit = logging.getLogger("proxy.audit")

FLUSH_INTERVAL = 0.25
_PER_REQUEST = frozenset({"proxy.access", "proxy.audit"})

# The logging HOWTO's "Optimization" switches: we never print the caller, thread or process of a record.
logging._srcfile = None
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._encode = json.JSONEncoder(ensure_ascii=False, default=str).encode  # built once, not per line
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._encode(entry)

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"


class BufferedStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr through a 64 KiB buffer: one write() per batch of lines instead of one per line."""

    def __init__(self) -> None:
        raw = io.FileIO(2, "w", closefd=False)
        super().__init__(io.TextIOWrapper(io.BufferedWriter(raw, 65536), encoding="utf-8", errors="replace"))
        self._flushed = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            now = time.monotonic()
            # Only the per-request lines wait in the buffer; anything else goes out at once.
            if record.name not in _PER_REQUEST or now - self._flushed >= FLUSH_INTERVAL:
                self.flush()
                self._flushed = now
        except Exception:
            self.handleError(record)


def flush_all() -> None:
    """Flush the buffered handlers; the app calls this periodically, so a quiet proxy's last lines show up."""
    for name in ("proxy", "uvicorn"):
        for handler in logging.getLogger(name).handlers:
            handler.flush()


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig for our loggers and uvicorn's, all as JSON lines on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"()": BufferedStderrHandler, "formatter": "json"}},
        "loggers": {
            "proxy": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
