"""structlog JSON lines for operations.

Rule for every call site: log job ids, counts, AE titles, statuses and exception
class names, never a value read from a dataset. Original identifiers belong in
the audit store only.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from pathlib import Path

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
    # Without a handler, Python printed their warnings and errors as plain text
    # (tracebacks too) on stderr, between our JSON lines; pydicom's can quote a
    # value ("Invalid value for VR DA: '...'"). Both libraries and Python
    # warnings now log one JSON line each: where and what kind, never the text.
    for name in ("pynetdicom", "pydicom"):
        lib = logging.getLogger(name)
        lib.handlers[:] = [_LibraryHandler()]
        lib.propagate = False
    warnings.showwarning = _show_warning
    # An exception that ends a library thread (pynetdicom's state machine raises
    # InvalidEventError on some out-of-order PDUs) printed a traceback; the node
    # goes on either way, so it is logged as one JSON line.
    threading.excepthook = _thread_exception


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


class _LibraryHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, object] = {"logger": record.name, "where": record.funcName}
        if record.exc_info and record.exc_info[0] is not None:
            fields["error"] = record.exc_info[0].__name__
        get_logger("deid_node.library").log(record.levelno, "library_log", **fields)


def _show_warning(  # type: ignore[no-untyped-def]
    message, category, filename, lineno, file=None, line=None
) -> None:
    get_logger("deid_node.library").warning(
        "library_warning", category=category.__name__, module=Path(filename).stem, line=lineno
    )


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    get_logger("deid_node.library").error(
        "thread_died",
        thread=args.thread.name if args.thread is not None else None,
        error=args.exc_type.__name__,
    )
