"""The worker pool's restart policy."""

from app.worker.pool import MAX_RESTART_DELAY_SECONDS, restart_delay


def test_a_killed_worker_is_replaced_at_once_and_a_crash_loop_backs_off():
    delays = [restart_delay(deaths) for deaths in range(1, 9)]
    assert delays[0] == 0.0
    assert delays[1:5] == [1.0, 2.0, 4.0, 8.0]
    assert delays == sorted(delays)
    assert max(delays) == MAX_RESTART_DELAY_SECONDS
