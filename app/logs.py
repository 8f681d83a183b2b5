"""Process-wide logging set-up: text lines, or one JSON object a line with context fields."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from app.config import Settings
from app.request_context import RequestIdLogFilter, request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(request_id)s: %(message)s"
JSON_FIELDS = ["levelname", "process", "name", "message"]

# The fields of the innermost log_context, as (name, value) pairs: a tuple, so that an
# inner block can never change what an outer one set.
_context_fields: ContextVar[tuple[tuple[str, str | int], ...]] = ContextVar(
    "log_context_fields", default=()
)


@contextmanager
def log_context(
    *, run_id: int | None = None, attempt: int | None = None, worker_id: str | None = None
) -> Iterator[None]:
    """Inside the block, this thread's (or task's) JSON log records carry the given fields."""
    given = {"run_id": run_id, "attempt": attempt, "worker_id": worker_id}
    added = tuple((name, value) for name, value in given.items() if value is not None)
    token = _context_fields.set((*_context_fields.get(), *added))
    try:
        yield
    finally:
        _context_fields.reset(token)


class ContextLogFilter(logging.Filter):
    """Adds the request id and the log_context fields to a record, each only where it is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate, never drop."""
        # An explicit default wins over the variable's own "-": None means no request.
        current_request = request_id.get(None)
        if current_request is not None:
            record.request_id = current_request
        for name, value in _context_fields.get():
            setattr(record, name, value)
        return True


def log_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing to `stream` (stderr by default) in the `text` or `json` format."""
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        # Attributes the filter adds are not the record's own, so the formatter includes them.
        handler.setFormatter(
            JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level"}, timestamp="time")
        )
        handler.addFilter(ContextLogFilter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        handler.addFilter(RequestIdLogFilter())
    return handler


def configure_logging(settings: Settings) -> None:
    """Log to stderr in the configured format; process ids tell pool output apart."""
    logging.basicConfig(level=settings.log_level, handlers=[log_handler(settings.log_format)])
    # Alembic announces each of its plugins and its dialect at INFO on every `db upgrade`;
    # only its warnings are news to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
