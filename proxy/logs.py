"""Logging: one JSON object a line on stderr, the way log collectors in Kubernetes want it.

Callers pass structured fields with ``extra={"fields": {...}}``. Nothing secret is ever handed to a logger: the
API key and session tokens stay out of every message by construction, not by filtering.

Every request writes one line (``request_done``: the pipeline's requests, and those the HTTP protocol refuses
before the app sees them), so that line skips the logging module's record machinery when it can
(``request_line``): under ``bpoc-proxy serve`` it is encoded once and appended to a buffered stream that is
flushed every quarter second, on warnings, and at shutdown, much as nginx's ``access_log ... buffer=`` does.
Levels, and any handlers a test or an embedding program adds, are still honoured.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from typing import Any

import orjson

access = logging.getLogger("proxy.access")
audit = logging.getLogger("proxy.audit")

FLUSH_INTERVAL = 0.25
_PER_REQUEST = frozenset({"proxy.access", "proxy.audit"})
# The worker's pid, in every per-request line (several workers write to one stream): read once per process.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)

# The logging HOWTO's "Optimization" switches: we never print the caller, thread or process of a record.
logging._srcfile = None
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


class _Timestamps:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second, not per line."""

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"


_timestamp = _Timestamps()
# What orjson refuses (an integer beyond 64 bits, a lone surrogate) still gets logged, by the stdlib's encoder.
_fallback = json.JSONEncoder(ensure_ascii=False, default=str).encode


def json_line(created: float, level: str, logger: str, msg: str, fields: dict[str, Any] | None) -> str:
    """The one layout of every log line: ts, level, logger, msg, then the structured fields."""
    entry: dict[str, Any] = {"ts": _timestamp(created), "level": level, "logger": logger, "msg": msg}
    if fields:
        entry.update(fields)
    try:
        return orjson.dumps(entry, default=str).decode("utf-8")
    except orjson.JSONEncodeError:
        return _fallback(entry)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        fields = dict(fields) if isinstance(fields, dict) else {}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)


class BufferedStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr through a 64 KiB buffer: one write() per batch of lines instead of one per line."""

    def __init__(self) -> None:
        raw = io.FileIO(2, "w", closefd=False)
        super().__init__(io.TextIOWrapper(io.BufferedWriter(raw, 65536), encoding="utf-8", errors="replace"))
        self._flushed = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record), per_request=record.name in _PER_REQUEST)
        except Exception:
            self.handleError(record)

    def write_line(self, line: str, *, per_request: bool) -> None:
        """Append one formatted line; only the per-request lines wait in the buffer, the rest go out at once."""
        self.stream.write(line + "\n")
        now = time.monotonic()
        if not per_request or now - self._flushed >= FLUSH_INTERVAL:
            self.flush()
            self._flushed = now


def request_line(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """Log the per-request line at INFO: straight into the buffered stderr handler when that is the only place it
    goes (``bpoc-proxy serve``), through a LogRecord otherwise. The worker's ``pid`` is added to ``fields``."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields["pid"] = _pid
    handler = _only_handler(logger)
    if not isinstance(handler, BufferedStderrHandler) or handler.formatter.__class__ is not JsonFormatter:
        logger.info("%s", msg, extra={"fields": fields})
        return
    line = json_line(time.time(), "info", logger.name, msg, fields)
    with handler.lock:  # type: ignore[union-attr]  # created by Handler.__init__
        try:
            handler.write_line(line, per_request=True)
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": msg, "name": logger.name}))


def request_done(
    method: str,
    path: str,
    status: int,
    request_id: str,
    started: float,
    user_id: str | None = None,
    record: dict[str, Any] | None = None,
) -> None:
    """The one line per request (``started`` is its ``time.perf_counter()``): the access line, which on attributed
    routes is also the audit record (``record``: what the proxy wrote, for whom)."""
    fields: dict[str, Any] = {
        "requestId": request_id,
        "status": status,
        "durationMs": round((time.perf_counter() - started) * 1000, 2),
        "userId": user_id,
    }
    if record is not None:
        fields.update(record)
    request_line(access if record is None else audit, f"{method} {path} {status}", fields)


def _only_handler(logger: logging.Logger) -> logging.Handler | None:
    """The handler a record of ``logger`` would reach, if exactly one would (and no filter could stop it)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    if len(found) != 1 or found[0].filters or found[0].level > logging.INFO:
        return None
    return found[0]


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
