"""A daemon thread that calls one function every interval until stopped, for API-process caches."""

import logging
import threading
from collections.abc import Callable


class Poller:
    """Calls `poll` every `interval` seconds; an outage is logged once, not every interval."""

    def __init__(
        self,
        *,
        name: str,
        poll: Callable[[], None],
        interval: float,
        logger: logging.Logger,
        failure_message: str,
    ) -> None:
        self._poll = poll
        self._interval = interval
        self._logger = logger
        self._failure_message = failure_message
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Poll in the background until `stop`."""
        self._thread.start()

    def stop(self) -> None:
        """End the polling thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        while True:
            try:
                self._poll()
                self._failing = False
            except Exception:
                if not self._failing:
                    self._logger.exception(self._failure_message)
                self._failing = True
            if self._stop.wait(self._interval):
                return
