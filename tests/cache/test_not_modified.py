"""304s as real origins send them (issue 19), through real sockets to the shared test origin.

The origin here behaves as one behind nginx's ``gzip on``: the gzip 200 carries the weakened
``W/"x"``, the 304 to the proxy's conditional request the strong ``"x"``. Every wait is on the
origin's record of what it sent, never on time.
"""

from __future__ import annotations

import json

from proxy.core.headers import format_http_date
from tests.conftest import START, Harness

PATH = "/v1/audio/transcribe/job-304"
BODY = json.dumps({"success": True, "data": {"text": "word " * 400}}).encode()
JSON = {"Content-Type": "application/json"}


async def test_a_304_with_the_strong_form_of_a_weakened_etag_refreshes_the_entry(
    harness: Harness,
) -> None:
    """nginx's gzip: three full downloads per ID in 16 s of polling before, one now."""
    harness.origin.nginx_gzip = True
    resource = harness.origin.put(PATH, BODY, extra=JSON)
    first = await harness.get(PATH)
    assert first.status == 200 and await first.read() == BODY
    weak = "W/" + resource.tag
    assert first.headers["ETag"] == weak  # the origin's own gzip representation, as it sent it
    for _ in range(3):  # 16.5 s of polling at max-age=5
        harness.clock.advance(5.5)
        response = await harness.get(PATH)
        assert "fwd=stale; fwd-status=304" in response.headers["Cache-Status"]
        assert await response.read() == BODY and response.headers["ETag"] == weak
    assert harness.origin.requests[-1].headers["If-None-Match"] == weak
    assert harness.origin.sent == [200, 304, 304, 304]
    revalidated = {"route": "transcription", "result": "revalidated"}
    assert harness.metric("cacheproxy_requests_total", **revalidated) == 3


async def test_a_304_naming_another_opaque_tag_refetches_the_body(harness: Harness) -> None:
    harness.origin.nginx_gzip = True
    harness.origin.put(PATH, BODY, extra=JSON, not_modified_extra={"ETag": '"another"'})
    await harness.get(PATH)
    harness.clock.advance(6)
    response = await harness.get(PATH)
    assert response.status == 200 and await response.read() == BODY
    assert harness.origin.sent == [200, 304, 200]
    assert "If-None-Match" not in harness.origin.requests[-1].headers


async def test_a_304_with_another_last_modified_refetches_the_body(harness: Harness) -> None:
    later = format_http_date(START - 60)
    harness.origin.put(
        PATH,
        BODY,
        extra=JSON,
        last_modified=START - 3600,
        not_modified_extra={"Last-Modified": later},
    )
    await harness.get(PATH)
    harness.clock.advance(6)
    response = await harness.get(PATH)
    assert response.status == 200 and await response.read() == BODY
    assert harness.origin.sent == [200, 304, 200]


async def test_an_identity_client_with_the_gzip_etag_gets_the_identity_representation(
    harness: Harness,
) -> None:
    """RFC 9110 §8.8.3: validators are per representation; the identity one is not the gzip one."""
    harness.origin.nginx_gzip = True
    resource = harness.origin.put(PATH, BODY, extra=JSON)
    gzip_tag = (await harness.get(PATH, **{"Accept-Encoding": "gzip"})).headers["ETag"]
    assert gzip_tag == "W/" + resource.tag
    for _ in range(2):  # the full path first, then the prepared fast path
        identity = await harness.get(
            PATH, **{"Accept-Encoding": "identity", "If-None-Match": gzip_tag}
        )
        assert identity.status == 200 and await identity.read() == BODY
        assert identity.headers["ETag"] == f'W/"{resource.tag[1:-1]}-identity"'
        assert "Content-Encoding" not in identity.headers
        held = await harness.get(PATH, **{"Accept-Encoding": "gzip", "If-None-Match": gzip_tag})
        assert held.status == 304 and held.headers["ETag"] == gzip_tag
    assert harness.origin.sent == [200]
