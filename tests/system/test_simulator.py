"""The simulated transcription API, exercised through real sockets with a hand-stepped clock."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.tools.origin_front import OriginFront
from proxy.tools.simulator import (
    SIMULATOR_KEY,
    Simulator,
    SimulatorConfig,
    build_parser,
    config_from_args,
    create_simulator_app,
    generate_document,
    route_kind,
    startup_lines,
)
from tests.conftest import START, FakeClock

API = "/v1/audio/transcribe"
OWNER = {"Authorization": "Bearer owner-token"}
STRANGER = {"Authorization": "Bearer someone-else"}

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_sim(
    clock: FakeClock, sleep: RecordingSleep, aiohttp_client: MakeClient
) -> Callable[..., Awaitable[tuple[Simulator, Client]]]:
    async def make(**overrides: Any) -> tuple[Simulator, Client]:
        config = SimulatorConfig(**{"queued_seconds": 2.0, "processing_seconds": 6.0, **overrides})
        simulator = Simulator(config, clock=clock, sleep=sleep)
        client = await aiohttp_client(create_simulator_app(simulator=simulator))
        return simulator, client

    return make


@pytest.fixture
async def client(
    make_sim: Callable[..., Awaitable[tuple[Simulator, Client]]],
) -> tuple[Simulator, Client]:
    return await make_sim()


async def error_code(resp: Any, status: int) -> str:
    """The code of the error envelope ``resp`` carries, once its status is ``status``."""
    assert resp.status == status
    body = await resp.json()
    assert body["success"] is False and body["error"]["message"]
    return str(body["error"]["code"])


#: ``await make_job(**config)``: a simulator of that config, its test client and the URL of a
#: transcription the owner just created.
MakeJob = Callable[..., Awaitable[tuple[Client, str]]]


@pytest.fixture
def make_job(make_sim: Callable[..., Awaitable[tuple[Simulator, Client]]]) -> MakeJob:
    async def make(**overrides: Any) -> tuple[Client, str]:
        _, c = await make_sim(**overrides)
        return c, f"{API}/{await create(c)}"

    return make


#: ``c, url, resp = await read_job(after, **config)``: a transcription of a simulator of that
#: config, as its owner reads it ``after`` seconds (of the test's clock) after creating it.
ReadJob = Callable[..., Awaitable[tuple[Client, str, Any]]]


@pytest.fixture
def read_job(make_job: MakeJob, clock: FakeClock) -> ReadJob:
    async def read(after: float, **config: Any) -> tuple[Client, str, Any]:
        c, url = await make_job(**config)
        clock.advance(after)
        return c, url, await c.get(url, headers=OWNER)

    return read


@pytest.fixture
async def job(client: tuple[Simulator, Client]) -> tuple[Client, str]:
    """The test client and the URL of a transcription the owner just created."""
    _, c = client
    return c, f"{API}/{await create(c)}"


async def create(client: Client, headers: dict[str, str] = OWNER) -> str:
    resp = await client.post(API, json={"audio_url": "https://example.com/a.mp3"}, headers=headers)
    assert resp.status == 201
    body = await resp.json()
    transcription_id: str = body["data"]["transcription_id"]
    return transcription_id


async def test_create_answers_201_with_queued_data_owned_by_the_caller(
    client: tuple[Simulator, Client],
) -> None:
    _, c = client
    resp = await c.post(
        API,
        json={"audio_url": "https://example.com/a.mp3", "model_key": "fast"},
        headers=OWNER,
    )
    assert resp.status == 201
    body = await resp.json()
    assert body["success"] is True
    data = body["data"]
    assert re.fullmatch(r"trans_[0-9a-f]{32}", data["transcription_id"])
    assert data["status"] == "queued"
    assert data["model_key"] == "fast"
    assert data["audio_metadata"]["url"] == "https://example.com/a.mp3"
    assert resp.headers["Location"] == f"{API}/{data['transcription_id']}"


@pytest.mark.parametrize(
    ("payload", "status"),
    [({}, 422), ({"audio_url": 3}, 422), ([1, 2], 422), ({"audio_url": "x", "model_key": 1}, 422)],
)
async def test_create_rejects_an_invalid_body(
    client: tuple[Simulator, Client], payload: Any, status: int
) -> None:
    _, c = client
    resp = await c.post(API, json=payload, headers=OWNER)
    assert resp.status == status
    assert (await resp.json())["success"] is False


async def test_pending_transcription_is_cacheable_for_five_seconds_with_validators(
    job: tuple[Client, str], clock: FakeClock
) -> None:
    c, url = job
    resp = await c.get(url, headers=OWNER)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=5"
    assert re.fullmatch(r'"[0-9a-f]{32}"', resp.headers["ETag"])
    assert resp.headers["Last-Modified"] == formatdate(START, usegmt=True)
    assert resp.headers["Date"] == formatdate(START, usegmt=True)
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"success", "data", "billing", "metadata", "actions"}
    assert body["actions"] == {}
    assert "text" not in body["data"]
    assert body["billing"]["currency"] == "synapses"
    assert body["metadata"]["upstream_refreshed"] is False


async def test_etag_ignores_per_request_metadata(job: tuple[Client, str]) -> None:
    c, url = job
    first = await c.get(url, headers=OWNER)
    second = await c.get(url, headers=OWNER)
    first_body, second_body = await first.json(), await second.json()
    assert first_body["metadata"]["request_id"] != second_body["metadata"]["request_id"]
    assert first.headers["ETag"] == second.headers["ETag"]


@pytest.mark.parametrize(
    "if_none_match",
    ["{etag}", "W/{etag}", '"other", {etag}', "*"],
    ids=["exact", "weak", "list", "any"],
)
async def test_if_none_match_on_current_etag_answers_304_without_body(
    job: tuple[Client, str], if_none_match: str
) -> None:
    c, url = job
    etag = (await c.get(url, headers=OWNER)).headers["ETag"]
    resp = await c.get(url, headers={**OWNER, "If-None-Match": if_none_match.format(etag=etag)})
    assert resp.status == 304
    assert await resp.read() == b""
    assert resp.headers["ETag"] == etag
    assert resp.headers["Cache-Control"] == "public, max-age=5"
    assert "Last-Modified" in resp.headers


async def test_if_none_match_on_another_etag_answers_200(
    job: tuple[Client, str],
) -> None:
    c, url = job
    resp = await c.get(url, headers={**OWNER, "If-None-Match": '"stale"'})
    assert resp.status == 200


async def test_if_modified_since_answers_304_unless_if_none_match_disagrees(
    job: tuple[Client, str],
) -> None:
    c, url = job
    now = formatdate(START, usegmt=True)
    earlier = formatdate(START - 60, usegmt=True)
    assert (await c.get(url, headers={**OWNER, "If-Modified-Since": now})).status == 304
    assert (await c.get(url, headers={**OWNER, "If-Modified-Since": earlier})).status == 200
    both = {**OWNER, "If-Modified-Since": now, "If-None-Match": '"stale"'}
    assert (await c.get(url, headers=both)).status == 200


async def test_status_moves_through_its_lifecycle_as_the_clock_advances(
    job: tuple[Client, str], clock: FakeClock
) -> None:
    c, url = job
    seen: list[tuple[str, str, str]] = []
    for step in (0.0, 1.9, 0.2, 5.7, 0.2, 1000.0):
        clock.advance(step)
        resp = await c.get(url, headers=OWNER)
        body = await resp.json()
        seen.append((body["data"]["status"], resp.headers["ETag"], resp.headers["Last-Modified"]))
    statuses = [s for s, _, _ in seen]
    assert statuses == ["queued", "queued", "processing", "processing", "completed", "completed"]
    etags = [e for _, e, _ in seen]
    assert etags[0] == etags[1] != etags[2] == etags[3] != etags[4] == etags[5]
    assert seen[2][2] == formatdate(START + 2.0, usegmt=True)
    assert seen[4][2] == formatdate(START + 8.0, usegmt=True)


async def test_old_etag_is_not_modified_only_until_the_status_changes(
    job: tuple[Client, str], clock: FakeClock
) -> None:
    c, url = job
    etag = (await c.get(url, headers=OWNER)).headers["ETag"]
    clock.advance(2.5)
    resp = await c.get(url, headers={**OWNER, "If-None-Match": etag})
    assert resp.status == 200
    assert (await resp.json())["data"]["status"] == "processing"


async def test_completed_transcription_has_long_max_age_text_and_actions(
    read_job: ReadJob,
) -> None:
    _, url, resp = await read_job(8.0, transcript_words=500)
    assert resp.headers["Cache-Control"] == "public, max-age=86400"
    body = await resp.json()
    data = body["data"]
    assert data["status"] == "completed"
    assert len(data["text"].split()) == 500
    assert len(await resp.read()) > 2000
    assert data["processing_time_seconds"] == 6.0
    assert data["completed_at"] == data["updated_at"]
    assert body["billing"]["synapses_refunded"] == 0
    assert set(body["actions"]) == {
        "get_paragraphs",
        "get_sentences",
        "get_subtitles_srt",
        "get_subtitles_vtt",
        "get_subtitles_txt",
        "search",
    }
    assert body["actions"]["get_paragraphs"] == f"{url}/paragraphs"


async def test_failed_transcription_is_final_refunded_and_has_no_text(read_job: ReadJob) -> None:
    c, url, resp = await read_job(9.0, failure_ratio=1.0)
    body = await resp.json()
    assert body["data"]["status"] == "failed"
    assert "text" not in body["data"]
    assert body["actions"] == {}
    assert body["billing"]["synapses_refunded"] == body["billing"]["synapses_consumed"]
    assert resp.headers["Cache-Control"] == "public, max-age=86400"
    sub = await c.get(f"{url}/sentences", headers=OWNER)
    assert await error_code(sub, 409) == "TRANSCRIPTION_FAILED"


async def test_upstream_refreshed_when_the_last_status_check_is_over_ten_seconds_old(
    read_job: ReadJob,
) -> None:
    c, url, first = await read_job(11.0, processing_seconds=60.0)
    assert (await first.json())["metadata"]["upstream_refreshed"]
    assert not (await (await c.get(url, headers=OWNER)).json())["metadata"]["upstream_refreshed"]


@pytest.mark.parametrize(
    "path", ["", "/paragraphs", "/subtitles/srt", "/search?q=the"], ids=lambda p: p or "item"
)
async def test_another_tokens_transcription_is_not_found(
    job: tuple[Client, str], clock: FakeClock, path: str
) -> None:
    c, url = job
    clock.advance(10.0)
    resp = await c.get(f"{url}{path}", headers=STRANGER)
    assert await error_code(resp, 404) == "TRANSCRIPTION_NOT_FOUND"


async def test_unknown_id_is_not_found(client: tuple[Simulator, Client]) -> None:
    _, c = client
    resp = await c.get(f"{API}/trans_{'0' * 32}", headers=OWNER)
    assert await error_code(resp, 404) == "TRANSCRIPTION_NOT_FOUND"


@pytest.mark.parametrize(
    "authorization", [None, "Basic b3duZXI=", "Bearer", "Bearer  ", "Bearer a b"]
)
async def test_missing_or_malformed_token_is_unauthorized(
    job: tuple[Client, str], authorization: str | None
) -> None:
    c, job_url = job
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, url in (("GET", job_url), ("POST", API), ("DELETE", job_url)):
        resp = await c.request(method, url, headers=headers, json={"audio_url": "x"})
        assert resp.status == 401, (method, url)
        body = await resp.json()
        assert body == {
            "success": False,
            "error": {"code": "UNAUTHORIZED", "message": body["error"]["message"]},
        }


async def test_head_answers_headers_without_body(job: tuple[Client, str]) -> None:
    c, url = job
    resp = await c.head(url, headers=OWNER)
    assert resp.status == 200
    assert "ETag" in resp.headers
    assert await resp.read() == b""


async def test_sub_resources_conflict_until_completed(
    job: tuple[Client, str], clock: FakeClock
) -> None:
    c, url = job
    clock.advance(3.0)
    resp = await c.get(f"{url}/paragraphs", headers=OWNER)
    assert await error_code(resp, 409) == "TRANSCRIPTION_NOT_COMPLETED"
    assert "Cache-Control" not in resp.headers


async def test_sub_resources_are_stable_and_cacheable_once_completed(
    job: tuple[Client, str], clock: FakeClock
) -> None:
    c, url = job
    clock.advance(8.0)
    base = url
    full_text = (await (await c.get(base, headers=OWNER)).json())["data"]["text"]

    paragraphs = await c.get(f"{base}/paragraphs", headers=OWNER)
    assert paragraphs.status == 200
    assert paragraphs.headers["Cache-Control"] == "public, max-age=86400"
    paragraph_texts = [p["text"] for p in (await paragraphs.json())["data"]["paragraphs"]]
    assert "\n\n".join(paragraph_texts) == full_text

    sentences = (await (await c.get(f"{base}/sentences", headers=OWNER)).json())["data"]
    assert " ".join(s["text"] for s in sentences["sentences"]).split() == full_text.split()

    srt = await c.get(f"{base}/subtitles/srt", headers=OWNER)
    assert srt.content_type == "application/x-subrip"
    assert (await srt.text()).startswith("1\n00:00:00,000 --> ")
    vtt = await c.get(f"{base}/subtitles/vtt", headers=OWNER)
    assert vtt.content_type == "text/vtt"
    assert (await vtt.text()).startswith("WEBVTT\n\n1\n00:00:00.000 --> ")
    txt = await c.get(f"{base}/subtitles/txt", headers=OWNER)
    assert txt.content_type == "text/plain"
    assert (await txt.text()).strip() == full_text

    word = full_text.split()[3].strip(".?!").lower()
    search = await c.get(f"{base}/search", params={"q": word}, headers=OWNER)
    found = (await search.json())["data"]
    assert found["total"] == len(found["matches"]) >= 1
    assert all(word in m["text"].lower() for m in found["matches"])
    other = await c.get(f"{base}/search", params={"q": "zebra"}, headers=OWNER)
    assert (await other.json())["data"]["total"] == 0
    assert search.headers["ETag"] != other.headers["ETag"]
    assert (await c.get(f"{base}/search", headers=OWNER)).status == 400

    again = await c.get(f"{base}/paragraphs", headers=OWNER)
    assert await again.read() == await paragraphs.read()
    assert again.headers["ETag"] == paragraphs.headers["ETag"]
    revalidated = await c.get(
        f"{base}/paragraphs", headers={**OWNER, "If-None-Match": paragraphs.headers["ETag"]}
    )
    assert revalidated.status == 304


async def test_stats_count_requests_statuses_not_modified_and_body_bytes(
    client: tuple[Simulator, Client],
) -> None:
    _, c = client
    tid = await create(c)
    url = f"{API}/{tid}"
    full = await c.get(url, headers=OWNER)
    full_bytes = len(await full.read())
    await c.get(url, headers={**OWNER, "If-None-Match": full.headers["ETag"]})
    head = await c.head(url, headers=OWNER)
    await head.read()
    missing = await c.get(f"{API}/trans_{'0' * 32}", headers=OWNER)
    missing_bytes = len(await missing.read())
    nowhere = await c.get("/nowhere")
    nowhere_bytes = len(await nowhere.read())

    stats = await (await c.get("/_sim/stats", params={"per_id": "1"})).json()
    assert stats["requests"] == 6
    assert stats["responses"] == {"200": 2, "201": 1, "304": 1, "404": 2}
    assert stats["not_modified"] == 1
    create_bytes = stats["bytes_sent"] - full_bytes - missing_bytes - nowhere_bytes
    assert 200 < create_bytes < 600
    assert stats["routes"] == {"create": 1, "transcription": 4, "other": 1}
    assert stats["transcription_gets"] == {tid: 3}

    reset = await c.post("/_sim/reset-stats")
    assert reset.status == 200
    stats = await (await c.get("/_sim/stats")).json()
    assert stats["requests"] == 0
    assert stats["bytes_sent"] == 0
    assert stats["responses"] == {}


async def test_stats_bytes_match_what_the_client_received(
    job: tuple[Client, str], clock: FakeClock
) -> None:
    c, url = job
    await c.post("/_sim/reset-stats")
    received = 0
    for step in (0.0, 3.0, 6.0):
        clock.advance(step)
        for path in ("", "/paragraphs", "/subtitles/vtt"):
            resp = await c.get(f"{url}{path}", headers=OWNER)
            received += len(await resp.read())
    stats = await (await c.get("/_sim/stats")).json()
    assert stats["bytes_sent"] == received
    assert stats["requests"] == 9


async def test_status_fault_fails_the_next_n_requests_then_clears(
    job: tuple[Client, str],
) -> None:
    c, url = job
    resp = await c.post("/_sim/faults", json={"status": 503, "count": 2})
    assert resp.status == 201
    assert (await resp.json())["faults"] == [{"status": 503, "delay": 0.0, "count": 2}]
    statuses = [(await c.get(url, headers=OWNER)).status for _ in range(3)]
    assert statuses == [503, 503, 200]
    stats = await (await c.get("/_sim/stats")).json()
    assert stats["faults_applied"] == 2
    assert stats["responses"]["503"] == 2


async def test_delay_fault_sleeps_before_answering(
    job: tuple[Client, str], sleep: RecordingSleep
) -> None:
    c, url = job
    await c.post("/_sim/faults", json={"delay": 2.5})
    assert (await c.get(url, headers=OWNER)).status == 200
    assert (await c.get(url, headers=OWNER)).status == 200
    assert sleep.calls == [2.5]


async def test_faults_apply_in_order_and_can_be_cleared(job: tuple[Client, str]) -> None:
    c, url = job
    await c.post("/_sim/faults", json={"status": 500})
    await c.post("/_sim/faults", json={"status": 429, "count": 5})
    assert (await c.get(url, headers=OWNER)).status == 500
    assert (await c.get(url, headers=OWNER)).status == 429
    assert (await (await c.get("/_sim/faults")).json())["faults"][0]["count"] == 4
    assert (await c.delete("/_sim/faults")).status == 204
    assert (await c.get(url, headers=OWNER)).status == 200


@pytest.mark.parametrize(
    "payload", [{}, {"status": 200}, {"delay": -1}, {"status": 503, "count": 0}, {"delay": "x"}]
)
async def test_invalid_fault_is_rejected(client: tuple[Simulator, Client], payload: Any) -> None:
    _, c = client
    resp = await c.post("/_sim/faults", json=payload)
    assert resp.status == 422
    assert (await (await c.get("/_sim/faults")).json())["faults"] == []


async def test_delete_removes_the_transcription_for_its_owner_only(
    job: tuple[Client, str],
) -> None:
    c, url = job
    assert (await c.delete(url, headers=STRANGER)).status == 404
    assert (await c.get(url, headers=OWNER)).status == 200
    resp = await c.delete(url, headers=OWNER)
    assert resp.status == 204
    assert (await c.get(url, headers=OWNER)).status == 404
    assert (await c.delete(url, headers=OWNER)).status == 404
    stats = await (await c.get("/_sim/stats")).json()
    assert stats["routes"]["delete"] == 3


async def test_seed_endpoint_spreads_transcriptions_over_tokens(
    client: tuple[Simulator, Client],
) -> None:
    sim, c = client
    resp = await c.post("/_sim/seed", json={"tokens": ["a", "b"], "count": 5})
    assert resp.status == 201
    created = (await resp.json())["transcriptions"]
    assert [t["token"] for t in created] == ["a", "b", "a", "b", "a"]
    for item in created:
        resp = await c.get(
            f"{API}/{item['transcription_id']}",
            headers={"Authorization": f"Bearer {item['token']}"},
        )
        assert resp.status == 200
    assert len(sim) == 5
    assert (await c.post("/_sim/seed", json={"tokens": [], "count": 1})).status == 422
    stats = await (await c.get("/_sim/stats")).json()
    assert stats["requests"] == 5


async def test_configured_seeding_and_start_offsets_stagger_completion(clock: FakeClock) -> None:
    config = SimulatorConfig(
        queued_seconds=1.0,
        processing_seconds=1.0,
        seed_tokens=("a", "b"),
        seed_count=2,
        start_offsets=(0.0, 5.0, -10.0),
    )
    sim = Simulator(config, clock=clock)
    owners = sim.owners()
    assert [token for token, _ in owners] == ["a", "b", "a", "b"]
    records = [sim.lookup(token, tid) for token, tid in owners]
    assert all(r is not None for r in records)
    statuses = [r.status_at(clock.now + 2.5) for r in records if r is not None]
    assert statuses == ["completed", "queued", "completed", "completed"]
    backdated = records[2]
    assert backdated is not None
    assert backdated.created_at == START - 10.0


def test_seed_transcriptions_returns_ids_owned_by_the_token(clock: FakeClock) -> None:
    sim = Simulator(clock=clock)
    ids = sim.seed_transcriptions("t", 3)
    assert len(set(ids)) == 3
    assert all(sim.lookup("t", i) is not None and sim.lookup("u", i) is None for i in ids)


def test_same_seed_gives_same_ids_outcomes_and_text() -> None:
    config = SimulatorConfig(failure_ratio=0.5, seed=7)
    first, second = Simulator(config, clock=FakeClock()), Simulator(config, clock=FakeClock())
    a = [first.create("t", "u") for _ in range(20)]
    b = [second.create("t", "u") for _ in range(20)]
    assert [t.transcription_id for t in a] == [t.transcription_id for t in b]
    assert [t.fails for t in a] == [t.fails for t in b]
    assert 0 < sum(t.fails for t in a) < 20
    assert first.document(a[0]).text == second.document(b[0]).text
    other = Simulator(SimulatorConfig(seed=8), clock=FakeClock()).create("t", "u")
    assert other.transcription_id != a[0].transcription_id


def test_generated_document_has_the_requested_word_count_and_covers_the_duration() -> None:
    document = generate_document("x", 123, 60.0)
    assert len(document.text.split()) == 123
    assert document.sentences[0].start == 0.0
    assert document.sentences[-1].end == 60.0


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("POST", API, "create"),
        ("GET", f"{API}/trans_1", "transcription"),
        ("HEAD", f"{API}/trans_1", "transcription"),
        ("DELETE", f"{API}/trans_1", "delete"),
        ("GET", f"{API}/trans_1/subtitles/srt", "transcription_resource"),
        ("GET", "/elsewhere", "other"),
    ],
)
def test_route_kind(method: str, path: str, kind: str) -> None:
    assert route_kind(method, path) == kind


def test_app_holds_the_given_simulator_under_a_typed_key(clock: FakeClock) -> None:
    sim = Simulator(clock=clock)
    assert create_simulator_app(simulator=sim)[SIMULATOR_KEY] is sim
    with pytest.raises(ValueError, match="either"):
        create_simulator_app(SimulatorConfig(), simulator=sim)


@pytest.mark.parametrize(
    "kwargs",
    [{"queued_seconds": -1}, {"failure_ratio": 1.5}, {"transcript_words": 0}, {"seed_count": -1}],
)
def test_config_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**kwargs)


def test_cli_flags_override_environment_which_overrides_defaults() -> None:
    environ = {"SIM_PORT": "9999", "SIM_QUEUED_SECONDS": "0.5", "SIM_SEED_TOKENS": "a,b"}
    args = build_parser(environ).parse_args(
        ["--queued-seconds", "0.25", "--start-offsets", "0,1.5", "--seed-count", "3"]
    )
    assert args.port == 9999
    config = config_from_args(args)
    assert config.queued_seconds == 0.25
    assert config.processing_seconds == SimulatorConfig().processing_seconds
    assert config.start_offsets == (0.0, 1.5)
    assert config.seed_tokens == ("a", "b")
    assert config.seed_count == 3


async def start_simulate(*flags: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """``python -m proxy simulate --port 0`` and its start-up lines, up to the stats one."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "simulate", "--port", "0", *flags,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("stats: "):
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, f"simulate exited after {lines}"
        lines.append(line.decode().rstrip("\n"))
    return process, lines


async def stop_simulate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(process.wait(), 30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_simulate_command_serves_until_sigterm() -> None:
    process, lines = await start_simulate(
        "--seed-tokens", "cli-token", "--seed-count", "1",
        "--queued-seconds", "0", "--processing-seconds", "600",
    )  # fmt: skip
    try:
        url = lines[0].split()[-1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        seeded = lines[1].split()
        assert seeded[0] == "seeded"
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{url}{API}/{seeded[1]}", headers={"Authorization": "Bearer cli-token"}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["data"]["status"] == "processing"
            async with session.get(f"{url}/_sim/stats") as resp:
                assert (await resp.json())["requests"] == 1
    finally:
        await stop_simulate(process)


async def curl(command: str) -> str:
    """Run a curl command line as printed (the shell's quoting), return its output."""
    process = await asyncio.create_subprocess_exec(
        *shlex.split(command), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, command
    return out.decode()


async def test_start_up_lines_say_how_to_get_and_poll_a_transcription_id() -> None:
    """The printed curl commands work as printed: the POST creates a transcription, the GET
    (with the new ID in place of ``<transcription_id>``) polls it with the same token."""
    process, lines = await start_simulate("--queued-seconds", "0", "--processing-seconds", "600")
    try:
        create = next(line.strip() for line in lines if "-X POST" in line)
        poll = next(line.strip() for line in lines if line.strip().startswith("curl -si"))
        assert "transcription ID" in "\n".join(lines)
        created = json.loads(await curl(create))
        transcription_id = created["data"]["transcription_id"]
        answer = await curl(poll.replace("<transcription_id>", transcription_id))
        head, _, body = answer.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200")
        assert "Cache-Control: public, max-age=5" in head
        assert json.loads(body)["data"]["status"] == "processing"
    finally:
        await stop_simulate(process)


def test_start_up_lines_poll_a_seeded_transcription_when_there_is_one() -> None:
    config = SimulatorConfig(queued_seconds=1.0, processing_seconds=4.0)
    lines = startup_lines("http://127.0.0.1:1", config, [("tok", "trans_1"), ("tok", "trans_2")])
    assert lines[1:3] == ["seeded trans_1 for token tok", "seeded trans_2 for token tok"]
    poll = next(line for line in lines if "curl -si" in line)
    assert poll.strip() == (
        f"curl -si http://127.0.0.1:1{API}/trans_1 -H 'Authorization: Bearer tok'"
    )
    assert "queued 1s, processing 4s" in "\n".join(lines)
    assert lines[-1] == "stats: curl -s http://127.0.0.1:1/_sim/stats"


async def test_cors_mode_allows_prefer_and_exposes_preference_applied(
    make_sim: Callable[..., Awaitable[tuple[Simulator, Client]]],
) -> None:
    """A page on another origin long-polls (RFC 7240): its preflight asks for ``Prefer``, and
    it must be able to read ``Preference-Applied`` on the answer."""
    _, c = await make_sim(front=OriginFront(cors=True))
    origin = {"Origin": "https://app.example"}
    preflight = await c.options(
        f"{API}/trans_1",
        headers={
            **origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, if-none-match, prefer",
        },
    )
    assert preflight.status == 204
    allowed = {
        h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")
    }
    # An EventSource that reconnects sends Last-Event-ID (and Chromium Cache-Control).
    assert {"authorization", "if-none-match", "prefer", "last-event-id"} <= allowed
    transcription_id = await create(c)
    resp = await c.get(f"{API}/{transcription_id}", headers={**OWNER, **origin})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Cache-Status", "Preference-Applied"} <= exposed


async def test_an_access_token_query_parameter_authenticates_without_authorization(
    make_sim: Callable[..., Awaitable[tuple[Simulator, Client]]],
) -> None:
    """RFC 6750 §2.3, for a browser's EventSource, which cannot send Authorization."""
    _, c = await make_sim()
    transcription_id = await create(c)
    token = OWNER["Authorization"].removeprefix("Bearer ")
    resp = await c.get(f"{API}/{transcription_id}?access_token={token}")
    assert resp.status == 200
    other = await c.get(f"{API}/{transcription_id}?access_token=someone-else")
    assert other.status == 404
    # Authorization, when sent, is the credential: the query does not override it.
    mixed = await c.get(
        f"{API}/{transcription_id}?access_token={token}", headers={"Authorization": "Bearer x"}
    )
    assert mixed.status == 404
