"""Process-wide logging set-up."""

import logging
import os


def configure_logging(level: str | None = None) -> None:
    """Log to stderr with process ids, so pool output can be told apart."""
    logging.basicConfig(
        level=level or os.environ.get("FITSERVE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
