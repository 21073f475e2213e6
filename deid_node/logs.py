"""structlog JSON lines for operations.

Rule for every call site: log job ids, counts, AE titles, statuses and exception
class names, never a value read from a dataset. Original identifiers belong in
the audit store only.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info", stream=None) -> None:  # type: ignore[no-untyped-def]
    """Route structlog (and pynetdicom's stdlib logging, at warning) to JSON lines."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    # pynetdicom logs dataset contents at debug level (identifiers!): keep it at
    # warning, and never let it reach our JSON stream unfiltered.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").propagate = False


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
