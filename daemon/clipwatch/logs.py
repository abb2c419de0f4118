"""structlog set-up: JSON lines when the log stream is not a terminal (journald, Docker), text when it is.

The daemon (`clipwatch run`) logs to stdout, where journald and Docker collect it; the one-shot commands
log to stderr, so that their results on stdout stay clean. Secrets are redacted by a processor.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(//[^/:@\s]*):[^@/\s]*@")


def redact_secrets(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: values of secret-looking keys, and passwords inside URLs, become ***."""
    for key, value in event.items():
        if SECRET_KEY.search(key) and value:
            event[key] = "***"
        elif isinstance(value, str) and "@" in value:
            event[key] = URL_PASSWORD.sub(r"\1:***@", value)
    return event


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog to `stream` (stderr by default). `fmt` is auto | json | console."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries we call (transformers, watchdog, urllib3) log through the standard library.
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=sys.stderr, force=True)
    # The model hub client logs every retry of a failed download; our own error says what went wrong.
    for noisy in ("huggingface_hub", "transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
