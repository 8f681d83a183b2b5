"""PostgreSQL LISTEN on a dedicated connection, relayed to a callback, reconnecting on loss."""

import logging
import threading
from collections.abc import Callable

from sqlalchemy import make_url


def relay_notifications(
    *,
    database_url: str,
    channel: str,
    on_notify: Callable[[str], None],
    stop: threading.Event,
    retry_seconds: float,
    logger: logging.Logger,
    on_connect: Callable[[], None] | None = None,
) -> None:
    """Call `on_notify(payload)` for each NOTIFY on `channel` until `stop` is set.

    `on_connect` runs after each LISTEN: whatever was announced while the connection was
    down is lost, so a caller catches up there.
    """
    import psycopg

    url = make_url(database_url).set(drivername="postgresql")
    conninfo = url.render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as connection:
                connection.execute(f"LISTEN {channel}")
                if on_connect is not None:
                    on_connect()
                while not stop.is_set():
                    for notification in connection.notifies(timeout=0.5, stop_after=1):
                        on_notify(notification.payload)
        except psycopg.Error:
            logger.warning("LISTEN %s lost; retrying", channel, exc_info=True)
            stop.wait(retry_seconds)
