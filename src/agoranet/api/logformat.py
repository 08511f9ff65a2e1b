"""Log lines as text or as JSON (``--log-format json|text``), and structured events.

An event is one log line with named fields: one per request a node or a gateway served,
one per claim or settle transaction (see :func:`log_event`). Its fields are values the
caller chose (ids, counts, base units, outcomes): never prompts, keys, signatures or
voucher bodies. The events logger (``agoranet.events``) logs at INFO whatever the
verbosity, so a request's line is there without ``-v``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

from agoranet.errors import ConfigError

__all__ = ["EVENTS_LOGGER", "LOG_FORMATS", "JsonFormatter", "TextFormatter",
           "configure_logging", "log_event"]

EVENTS_LOGGER: Final = "agoranet.events"
LOG_FORMATS: Final = ("text", "json")
_FIELDS: Final = "agoranet_fields"  # the attribute of a record that carries an event's fields

_events = logging.getLogger(EVENTS_LOGGER)


def log_event(event: str, **fields: Any) -> None:
    """One structured line: ``event`` (e.g. ``request``, ``claim``) and its fields."""
    _events.info(event, extra={_FIELDS: {"event": event, **fields}})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, _FIELDS, None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and an event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update(_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message`` and an event's fields as ``name=value``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        fields.pop("event", None)  # it is the message
        if fields:
            text += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        return text


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def configure_logging(log_format: str) -> None:
    """Every line in ``log_format`` (``text`` or ``json``) on the root logger's handlers
    (a stderr handler if it has none), and events at INFO."""
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter)
    _events.setLevel(logging.INFO)
