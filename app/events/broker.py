"""Wakes this API process's event streams when run events may have committed."""

import asyncio
import logging
import threading
from contextlib import suppress

from sqlalchemy import func, select

from app.config import Settings
from app.database import Database
from app.notifications import relay_notifications
from app.polling import Poller
from app.runs.models import RunEvent

logger = logging.getLogger("fitserve.events")
NOTIFY_CHANNEL = "fitserve_events"


class EventBroker:
    """One listener per process, however many streams are open.

    On PostgreSQL one LISTEN connection hears the NOTIFY every event sends at commit; on
    SQLite one thread reads the newest event id every `events_poll_seconds`. Either way the
    broker only says "look again": each stream then reads its own events after its last id,
    so nothing a stream sends depends on a notification arriving.
    """

    def __init__(self, *, database: Database, settings: Settings) -> None:
        self._database = database
        self._settings = settings
        self._generation = 0
        self._newest_id = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: Poller | None = None
        self._listener: threading.Thread | None = None

    @property
    def generation(self) -> int:
        """Bumped at every announcement; a stream reads it before it reads the database."""
        return self._generation

    def start(self) -> None:
        """Listen (PostgreSQL) or poll (SQLite) in a daemon thread until `stop`."""
        if self._settings.is_sqlite:
            self._poller = Poller(
                name="fitserve-event-poller",
                poll=self._poll_newest,
                interval=self._settings.events_poll_seconds,
                logger=logger,
                failure_message="reading the newest run event failed; streams wait for it",
            )
            self._poller.start()
            return
        self._listener = threading.Thread(
            target=relay_notifications,
            kwargs={
                "database_url": self._settings.database_url,
                "channel": NOTIFY_CHANNEL,
                "on_notify": lambda _project: self.announce(),
                "stop": self._stop,
                "retry_seconds": self._settings.events_poll_seconds,
                "logger": logger,
                # Events committed while the connection was down were announced to no one.
                "on_connect": self.announce,
            },
            name="fitserve-event-listener",
            daemon=True,
        )
        self._listener.start()

    def stop(self) -> None:
        """End the listening or polling thread."""
        self._stop.set()
        if self._poller is not None:
            self._poller.stop()
        if self._listener is not None and self._listener.is_alive():
            self._listener.join(5)

    def announce(self) -> None:
        """Wake every waiting stream; safe from any thread."""
        with self._lock:
            self._generation += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            # A stream whose loop has closed is gone; there is nothing left to wake.
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def wait(self, generation: int, timeout: float) -> bool:
        """Wait until an announcement after `generation`; False when `timeout` passed first."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            if self._generation != generation:
                return True
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def _poll_newest(self) -> None:
        with self._database.read_sessions() as session:
            newest = session.scalar(select(func.max(RunEvent.id))) or 0
        if newest != self._newest_id:
            self._newest_id = newest
            self.announce()
