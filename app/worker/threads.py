"""Background threads that never die silently."""

import contextvars
import logging
import threading
from collections.abc import Callable

logger = logging.getLogger("fitserve.worker")


def supervised(
    body: Callable[[], None], *, name: str, stop: threading.Event, restart_delay: float
) -> threading.Thread:
    """Start a daemon thread running `body` until it returns or `stop` is set.

    An exception in `body` is logged with its traceback and `body` starts again after
    `restart_delay`: a heartbeat or wake-up relay that broke once keeps working.
    """

    def loop() -> None:
        while not stop.is_set():
            try:
                body()
            except Exception:
                logger.exception("thread %s failed; restarting it in %.2f s", name, restart_delay)
                stop.wait(restart_delay)
            else:
                return

    # In the caller's context, so its log lines carry the run, attempt and worker ids.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(loop,), name=name, daemon=True)
    thread.start()
    return thread
