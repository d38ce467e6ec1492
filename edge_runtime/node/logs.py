"""Logging of ``edge-node run``: one JSON object per line on stderr, or text lines, under one logger name.

Every module of the node logs to :data:`NODE_LOGGER`, so the ``logger`` field of its log events
is the same whichever module wrote them. ``node.log_format: auto`` (the default) writes text when
stderr is a terminal (a person reads it) and JSON lines otherwise (a log collector reads them);
both carry the same fields.
"""

from __future__ import annotations

import json
import logging
import sys

from edge_runtime.core.names import LOGGER_NODE

#: The logger of the node's events (``edge_runtime.node``, the name the daemon has always logged under).
NODE_LOGGER = LOGGER_NODE


_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The ``extra=`` fields of a log record (everything that is not a standard attribute)."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update(extra_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL message key=value ...`` for a person at a terminal (the ``event`` field leads)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        fields.pop("event", None)
        if fields:
            # str values quoted (repr): a device id may hold a newline, and must not forge a log line
            line += "  " + " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        return line


def resolve_format(fmt: str, stream=None) -> str:
    """``auto``: ``text`` on a terminal, ``json`` otherwise; ``json`` and ``text`` as given."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    return "text" if getattr(stream, "isatty", lambda: False)() else "json"


def setup_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Send the ``edge_runtime`` loggers to stderr, as JSON lines or text (``auto``: text on a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger("edge_runtime")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
