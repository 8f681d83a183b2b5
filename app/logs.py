"""Process-wide logging set-up."""

import logging
import os

from app.request_context import RequestIdLogFilter


def configure_logging(level: str | None = None) -> None:
    """Log to stderr with process ids, so pool output can be told apart, and request ids."""
    logging.basicConfig(
        level=level or os.environ.get("FITSERVE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s %(request_id)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdLogFilter())
