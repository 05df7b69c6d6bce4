"""Structured JSON logging for operator events, and redaction of anything key-shaped.

Operator events (start-up, upstream key rejected, flush failures) go to stderr as one JSON object
per line via the stdlib ``logging`` module. Per-request access lines are written by the
:class:`~keygate.recorder.Recorder`, in batches, off the request path.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Final

import orjson

# Anything that looks like an API key, bearer token or JWT is masked before it is written.
_KEYISH: Final = re.compile(
    r"(sk-|kga?_|Bearer\s+)[A-Za-z0-9_\-\.]{6,}|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-\.]+", re.IGNORECASE
)


def redact(text: str) -> str:
    """Mask key-shaped substrings, keeping their prefix so the kind of secret stays visible."""
    return _KEYISH.sub(lambda m: (m.group(1) or "") + "***", text)


_STD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                entry[k] = redact(v) if isinstance(v, str) else v
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "INFO") -> None:
    """Send keygate's operator log to stderr as JSON lines. Idempotent."""
    logger = logging.getLogger("keygate")
    logger.setLevel(level.upper())
    logger.propagate = False
    if not any(getattr(h, "_keygate", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONFormatter())
        handler._keygate = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
