"""Structured logging: one JSON object per line, tagged with the current request id.

Why JSON lines: log shippers (Fluent Bit, Vector, Loki) parse them without per-service regexes, and
a request can be followed across the three services by its ``request_id``. The request id lives in
a context variable: every gRPC call runs in its own asyncio task (so ids never leak between
requests), and ``asyncio.to_thread`` copies the context into worker threads.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

REQUEST_ID_KEY = "x-request-id"
"""gRPC metadata key that carries the request id between services (lower case, as gRPC wants)."""

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")

# Attributes every LogRecord has; anything else passed through ``extra=`` is emitted as a field.
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def new_request_id() -> str:
    """A fresh request id for calls that arrive without one."""
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON object with timestamp, level, logger, message and extras."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            payload["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Routes every logger to stderr as JSON lines; call once per process at start-up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
