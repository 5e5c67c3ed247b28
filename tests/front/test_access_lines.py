"""The access log's own batch writer (``proxy.front.access``): each line is what ``logging``
with the proxy's format writes for the same record, the time stamp to the millisecond."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator

import pytest

from proxy.front.access import FORMAT, AccessLog

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO proxy\.access (\{.*\})$")


@pytest.fixture
def logged() -> Iterator[tuple[AccessLog, io.StringIO]]:
    logger = logging.getLogger("proxy.access")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    saved = logger.handlers, logger.propagate, logger.level
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    loop = asyncio.new_event_loop()
    try:
        yield AccessLog(logger, loop), stream
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
        loop.close()


def test_batched_lines_are_the_logging_format_with_every_field(
    logged: tuple[AccessLog, io.StringIO],
) -> None:
    access, stream = logged
    before = time.time()
    access.record("GET", "/v1/audio/transcribe/a", 200, "hit", 0.0001234, 3869)
    prefix = access.prefix("HEAD", '/odd "path"\\', 304, "revalidated")
    access.record_line(prefix, 1.5, 0)
    access.record("POST", "/v1/audio/transcribe", 502, "bypass", 0.1, 17)
    access.flush()
    after = time.time()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    found = [STAMP.match(line) for line in lines]
    assert all(found), lines
    for match in found:
        assert match is not None
        stamp = time.mktime(time.strptime(match[1][:19], "%Y-%m-%d %H:%M:%S"))
        assert int(before) <= stamp <= after
    records = [json.loads(match[2]) for match in found if match is not None]
    assert records == [
        {"method": "GET", "path": "/v1/audio/transcribe/a", "status": 200, "cache": "hit",
         "duration_ms": 0.123, "bytes": 3869},
        {"method": "HEAD", "path": '/odd "path"\\', "status": 304, "cache": "revalidated",
         "duration_ms": 1500.0, "bytes": 0},
        {"method": "POST", "path": "/v1/audio/transcribe", "status": 502, "cache": "bypass",
         "duration_ms": 100.0, "bytes": 17},
    ]  # fmt: skip


def test_a_handler_of_another_kind_gets_the_same_objects_through_logging(
    logged: tuple[AccessLog, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    access, _ = logged
    logging.getLogger("proxy.access").addHandler(caplog.handler)  # not a plain stream handler
    access.record("GET", "/a", 200, "hit", 0.002, 5)
    access.flush()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert json.loads(line) == {"method": "GET", "path": "/a", "status": 200, "cache": "hit",
                                "duration_ms": 2.0, "bytes": 5}  # fmt: skip
