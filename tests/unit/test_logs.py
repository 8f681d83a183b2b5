"""Structured logs: JSON lines carry the request, run, attempt and worker only where set."""

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from app.logs import log_context, log_handler
from app.request_context import request_id


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines into a string buffer, as FITSERVE_LOG_FORMAT=json does."""
    stream = io.StringIO()
    logger = logging.getLogger("fitserve.test-logs")
    handler = log_handler("json", stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_context_inside_it_and_not_outside(json_lines):
    logger, stream = json_lines
    logger.info("before")
    token = request_id.set("req-7")
    try:
        with log_context(run_id=12, attempt=2, worker_id="host-1-cpu-0"):
            logger.warning("attempt %s", 2)
        logger.info("after the attempt, still in the request")
    finally:
        request_id.reset(token)
    logger.info("after")

    before, inside, in_request, after = _records(stream)
    assert inside["message"] == "attempt 2"
    assert inside["level"] == "WARNING"
    assert inside["name"] == "fitserve.test-logs"
    assert "time" in inside and "process" in inside
    assert {key: inside[key] for key in ("request_id", "run_id", "attempt", "worker_id")} == {
        "request_id": "req-7",
        "run_id": 12,
        "attempt": 2,
        "worker_id": "host-1-cpu-0",
    }
    assert in_request["request_id"] == "req-7"
    for outside in (before, in_request, after):
        assert not {"run_id", "attempt", "worker_id"} & outside.keys()
    assert "request_id" not in before and "request_id" not in after


def test_an_inner_context_adds_fields_and_leaves_the_outer_ones(json_lines):
    logger, stream = json_lines
    with log_context(worker_id="w"):
        with log_context(run_id=3, attempt=1):
            logger.info("inner")
        logger.info("outer")
    inner, outer = _records(stream)
    assert (inner["worker_id"], inner["run_id"], inner["attempt"]) == ("w", 3, 1)
    assert outer["worker_id"] == "w" and "run_id" not in outer


def test_exceptions_stay_on_one_line(json_lines):
    logger, stream = json_lines
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("failed")
    (record,) = _records(stream)
    assert "ValueError: bad" in record["exc_info"]


def test_text_lines_keep_their_format():
    stream = io.StringIO()
    logger = logging.getLogger("fitserve.test-logs-text")
    handler = log_handler("text", stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("plain")
    finally:
        logger.removeHandler(handler)
    assert re.fullmatch(
        r"\S+ \S+ WARNING \[\d+\] fitserve.test-logs-text -: plain\n", stream.getvalue()
    )
