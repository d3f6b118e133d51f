"""structlog set-up: JSON lines off a terminal, readable lines on one.

Context (message id, payment id, transaction id, interface) is bound per delivery with
structlog's contextvars, so every line carries it without a logger being passed around.
As a last line of defence, values under sensitive-looking keys are masked before rendering.
"""

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

SENSITIVE_KEYS = ("secret", "password", "token", "authorization", "api_key", "apikey", "card")


def mask_sensitive(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in event:
        if any(word in key.lower() for word in SENSITIVE_KEYS):
            event[key] = "***"
    return event


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_sensitive,
    ]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # Libraries (aiokafka, stamina without structlog) log through the standard library: same format, same stream.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric_level, logging.WARNING))
