"""The access log as a test sees it: the logger to give the front (``serve_proxy(...,
access=log.logger)``) and the JSON lines it has written, through pytest's ``caplog``. The root
``tests/conftest.py`` gives it as the ``access_log`` fixture."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.waiting import eventually

NAME = "proxy.access"

Line = dict[str, Any]


class AccessLog:
    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("INFO", logger=NAME)
        self.caplog = caplog
        self.logger = logging.getLogger(NAME)

    def lines(self) -> list[Line]:
        """Every access line written so far, parsed."""
        return [json.loads(r.getMessage()) for r in self.caplog.records if r.name == NAME]

    async def until(self, condition: Callable[[list[Line]], bool], what: str) -> list[Line]:
        """The lines, once ``condition(lines)`` holds (the log is written in batches)."""
        await eventually(lambda: condition(self.lines()), what=what)
        return self.lines()

    async def count(self, count: int) -> list[Line]:
        """The lines, once there are exactly ``count``."""
        return await self.until(lambda lines: len(lines) == count, f"{count} access lines")
