"""A real ``python -m proxy`` process for a test: started with a clean environment, its stderr
read line by line as it arrives and waitable by pattern."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a test waits at most for a process to log a line, start or stop.
DEADLINE = 15.0


def proxy_env(**extra: str) -> dict[str, str]:
    """This environment without any ``PROXY_*`` setting, with the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


class ProcessLog:
    """A subprocess's stderr lines as they arrive, waitable by pattern."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            async with self._changed:
                self.lines.append(line.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self.lines.append("<eof>")
            self._changed.notify_all()

    async def wait_for(self, pattern: str) -> re.Match[str]:
        compiled = re.compile(pattern)

        def found() -> re.Match[str] | None:
            for line in self.lines:
                if match := compiled.search(line):
                    return match
            return None

        async with asyncio.timeout(DEADLINE), self._changed:
            while (match := found()) is None:
                if self.lines and self.lines[-1] == "<eof>":
                    raise AssertionError(f"{pattern!r} never logged:\n" + "\n".join(self.lines))
                await self._changed.wait()
        return match

    async def close(self) -> None:
        await self._task


async def spawn_proxy(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, ProcessLog]:
    """``python -m proxy ARGS`` from the checkout, its stderr in a ``ProcessLog``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=proxy_env() if env is None else env,
    )
    assert process.stderr is not None
    return process, ProcessLog(process.stderr)
