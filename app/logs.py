"""Process-wide logging set-up."""

import logging

from app.config import Settings
from app.request_context import RequestIdLogFilter


def configure_logging(settings: Settings) -> None:
    """Log to stderr with process ids, so pool output can be told apart, and request ids."""
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s %(request_id)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdLogFilter())
