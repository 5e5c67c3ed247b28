"""Content-coding tests' shared helpers (test_content_coding.py, test_store_once.py): a
request through a harness with the ``raw`` client of tests/conftest.py (``fetch``) and the body
decoded back to the origin's bytes (``plain``).
"""

from __future__ import annotations

import json

import aiohttp

from proxy.core.coding import decode
from tests.conftest import Harness

PATH = "/v1/audio/transcribe/trans_0123456789abcdef0123456789abcdef"
JSON = json.dumps({"text": "the team agreed on the release plan " * 80}).encode()


async def fetch(
    session: aiohttp.ClientSession,
    harness: Harness,
    accept: str | None,
    method: str = "GET",
    path: str = PATH,
    **headers: str,
) -> tuple[aiohttp.ClientResponse, bytes]:
    """``method path`` through ``harness`` with ``Accept-Encoding: accept`` (none if None)."""
    headers.setdefault("Authorization", "Bearer tok-a")
    if accept is not None:
        headers["Accept-Encoding"] = accept
    async with session.request(method, harness.client.make_url(path), headers=headers) as resp:
        return resp, await resp.read()


def plain(response: aiohttp.ClientResponse, body: bytes) -> bytes:
    """``body`` decoded from the response's Content-Encoding."""
    coding = response.headers.get("Content-Encoding", "identity")
    return body if coding == "identity" else decode(coding, body, 10_000_000)
