"""How an idle worker or executor hears of a queued run: its pool's semaphore, or NOTIFY."""

import logging
import threading
from typing import Any

from app.notifications import relay_notifications
from app.worker import queue
from app.worker.threads import supervised

logger = logging.getLogger("fitserve.worker")


class Wakeup:
    """Counts queued-run announcements from the API in the same pool (a process semaphore)."""

    def __init__(self, semaphore: Any) -> None:
        self._semaphore = semaphore

    def notify(self) -> None:
        """Wake one idle worker."""
        self._semaphore.release()

    def wait(self, timeout: float) -> bool:
        """Block until notified or the timeout passes."""
        return bool(self._semaphore.acquire(timeout=timeout))


def start_wake_relays(
    *,
    database_url: str,
    wakeup: Wakeup | None,
    wake: threading.Event,
    ready: threading.Event,
    stop: threading.Event,
    retry_seconds: float,
) -> list[threading.Thread]:
    """Threads that set `wake` on a pool's announcements and on PostgreSQL's NOTIFY.

    An announcement is taken only while `ready` is set, so a busy worker never swallows one
    that an idle sibling could act on. Until LISTEN is back the caller still polls.
    """

    def relay_pool_wakeups() -> None:
        assert wakeup is not None
        while not stop.is_set():
            ready.wait()
            if wakeup.wait(timeout=0.5):
                if stop.is_set():
                    # Taken while stopping: the announcement is a sibling's to act on.
                    wakeup.notify()
                    return
                wake.set()

    def relay_postgres_notifications() -> None:
        relay_notifications(
            database_url=database_url,
            channel=queue.NOTIFY_CHANNEL,
            on_notify=lambda _payload: wake.set(),
            stop=stop,
            retry_seconds=retry_seconds,
            logger=logger,
        )

    relays = [relay_pool_wakeups] if wakeup is not None else []
    if database_url.startswith("postgresql"):
        relays.append(relay_postgres_notifications)
    return [
        supervised(relay, name=relay.__name__, stop=stop, restart_delay=retry_seconds)
        for relay in relays
    ]
