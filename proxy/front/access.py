"""The access log, gathered as values on the hit path and written in batches off it.

One JSON line per request with the same fields as before (method, path without the query,
status, cache result, duration, body bytes); headers and queries are never logged. Recording is
appending a tuple; every ~100 ms (or 512 records, about 64 KiB) the batch is formatted and
written with one call per handler. Hand-written because ``logging`` costs ~10 µs per record,
as much as a whole cache hit; when the ``proxy.access`` logger goes to anything but plain stream
handlers with the proxy's format (a test's capture, a custom handler), each line goes through
``logging`` as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FLUSH_SECONDS = 0.1
FLUSH_RECORDS = 512

#: A line's prefix (``AccessLog.prefix``), the duration, body bytes and when it was answered.
Record = tuple[str, float, int, float]
#: One line after the prefix: milliseconds of the time stamp, the duration in ms (to the µs)
#: and the body bytes.
LINE = '%s,%03d%s%s%.3f,"bytes":%d}\n'


class AccessLog:
    """Batches access records for ``logger`` (``proxy.access``)."""

    def __init__(self, logger: logging.Logger, loop: asyncio.AbstractEventLoop) -> None:
        self.logger = logger
        self.loop = loop
        self._records: list[Record] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._prefixes: dict[tuple[str, str, int, str], str] = {}
        self._second = -1
        self._stamp = ""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def record(
        self, method: str, path: str, status: int, cache: str, seconds: float, size: int
    ) -> None:
        prefix = self._prefixes.get((method, path, status, cache))
        if prefix is None:
            prefix = self.prefix(method, path, status, cache)
        self.record_line(prefix, seconds, size)

    def record_line(self, prefix: str, seconds: float, size: int) -> None:
        """A request whose line starts with ``prefix`` (``prefix``: a caller answering the
        same request again keeps it)."""
        records = self._records
        records.append((prefix, seconds, size, time.time()))
        if len(records) == FLUSH_RECORDS:
            # Soon, not now: a burst of answers (the waiters one change wakes) is written
            # first and logged after, in batches of its own size.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = self.loop.call_later(FLUSH_SECONDS, self.flush)

    def _line(self, record: Record) -> str:
        """The JSON object of one record."""
        prefix, seconds, size, _ = record
        return f'{prefix}{seconds * 1000:.3f},"bytes":{size}}}'

    def prefix(self, method: str, path: str, status: int, cache: str) -> str:
        """The part of a line before the duration: it repeats, so it is formatted once per
        (method, path, status, cache) and kept."""
        key = (method, path, status, cache)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= 4096:
                self._prefixes.clear()
            prefix = self._prefixes[key] = (
                f'{{"method":{json.dumps(method)},"path":{json.dumps(path)},"status":{status},'
                f'"cache":{json.dumps(cache)},"duration_ms":'
            )
        return prefix

    def _text(self, records: list[Record]) -> str:
        """The batch's lines in the proxy's log format, formatted in one loop: this runs once
        per request, so it spares the calls per line."""
        fields = f" INFO {self.logger.name} "
        second, stamp = self._second, self._stamp
        lines: list[str] = []
        append = lines.append
        for prefix, seconds, size, at in records:
            whole = int(at)
            if whole != second:
                second, stamp = whole, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole))
            # %-formatting: a third of what an f-string with round() cost per line
            append(LINE % (stamp, (at - whole) * 1000, fields, prefix, seconds * 1000, size))
        self._second, self._stamp = second, stamp
        return "".join(lines)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records, self._records = self._records, []
        if not records or not self.enabled:
            return
        handlers = _stream_handlers(self.logger)
        if handlers is None:
            for record in records:
                self.logger.info(self._line(record))
            return
        text = self._text(records)
        for handler in handlers:
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.flush()
            except Exception:
                handler.handleError(logging.makeLogRecord({"msg": "access log write failed"}))
            finally:
                handler.release()


def _stream_handlers(logger: logging.Logger) -> list[logging.StreamHandler] | None:  # type: ignore[type-arg]
    """The handlers a record would reach, if all are stream handlers with the proxy's format."""
    found: list[logging.StreamHandler] = []  # type: ignore[type-arg]
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            formatter = handler.formatter
            if (
                type(handler) not in (logging.StreamHandler, logging.FileHandler)
                or formatter is None
                or formatter._fmt != FORMAT
                or handler.level > logging.INFO
                or handler.filters
            ):
                return None
            found.append(handler)  # type: ignore[arg-type]
        if not current.propagate:
            break
        current = current.parent
    return found
