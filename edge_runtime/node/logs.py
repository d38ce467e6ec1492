"""Logging of ``edge-node run``: one JSON object per line on stderr (or plain text), under one logger name.

Every module of the node logs to :data:`NODE_LOGGER`, so the ``logger`` field of its log events
is the same whichever module wrote them.
"""

from __future__ import annotations

import json
import logging
import sys

from edge_runtime.core.names import LOGGER_NODE

#: The logger of the node's events (``edge_runtime.node``, the name the daemon has always logged under).
NODE_LOGGER = LOGGER_NODE


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    _skip = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Send the ``edge_runtime`` loggers to stderr, as JSON lines (``fmt="json"``) or as text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edge_runtime")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
