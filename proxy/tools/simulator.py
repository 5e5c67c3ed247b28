"""A simulated Aitronos transcription API, to show, test and benchmark the proxy offline.

It follows ``shared/api/transcription-api.md``: a transcription belongs to the bearer token that
created it and moves ``queued`` → ``processing`` → ``completed`` (or ``failed``) over configured
times. The status is computed from the injected clock on every read, so there are no background
tasks and a test can step time by hand.

The transcription API:

- ``POST /v1/audio/transcribe`` with ``{"audio_url": ..., "model_key": ...}`` → 201 and ``data``.
- ``GET|HEAD /v1/audio/transcribe/{id}`` → the full envelope with ``ETag``, ``Last-Modified`` and
  the status-dependent ``Cache-Control``; ``If-None-Match`` (weak comparison, ``*``) or, without
  it, ``If-Modified-Since`` → 304 without a body.
- ``GET|HEAD /v1/audio/transcribe/{id}/paragraphs``, ``/sentences``, ``/subtitles/{srt,vtt,txt}``
  and ``/search?q=`` → deterministic content once completed. Before that they answer **409** with
  code ``TRANSCRIPTION_NOT_COMPLETED`` (``TRANSCRIPTION_FAILED`` for a failed one): the
  transcription exists but the representation does not yet, and a 409 is not heuristically
  cacheable, so no cache keeps it.
- ``DELETE /v1/audio/transcribe/{id}`` → 204, so cache invalidation can be exercised.
- Unknown ID or another token's ID → 404 ``TRANSCRIPTION_NOT_FOUND``; missing or malformed
  ``Authorization`` → 401 ``UNAUTHORIZED``; both as ``{"success": false, "error": {...}}``.

The control plane under ``/_sim/`` is never counted in the stats nor subject to faults:

- ``GET /_sim/stats`` (``?per_id=1`` adds GET counts per transcription), ``POST /_sim/reset-stats``.
- ``POST /_sim/seed`` with ``{"tokens": [...], "count": N}`` creates N transcriptions round-robin.
- ``GET|POST|DELETE /_sim/faults``: ``{"status": 503, "count": 3}`` or
  ``{"delay": 2.0, "count": 1}`` makes the next N API requests fail or hang, in the order queued.

With ``front`` (``--compress``, ``--narrow-304-vary``, ``--cors``) it answers like an API behind
an nginx that compresses and adds ``Vary`` and CORS headers (``proxy.tools.origin_front``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import secrets
import signal
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.core.coding import available_codings
from proxy.ops.config import env_backed_options, parse_bool
from proxy.tools.origin_front import OriginFront, front_middleware

Status = Literal["queued", "processing", "completed", "failed"]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

API_PREFIX: Final = "/v1/audio/transcribe"
CONTROL_PREFIX: Final = "/_sim/"
TERMINAL_STATUSES: Final = frozenset({"completed", "failed"})
SUBTITLE_MEDIA_TYPES: Final = {
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "txt": "text/plain",
}
_EMPTY_BODY_STATUSES: Final = frozenset({204, 304})
_DOCUMENT_CACHE_SIZE: Final = 256
_SEEDED_SHOWN: Final = 10

_WORDS: Final = (
    "the a we our this that it they you and but so because if when then also just really "
    "meeting project customer team budget quarter release roadmap feature design review "
    "question answer decision timeline deadline priority risk issue ticket deployment server "
    "cache latency request response traffic upload audio recording speaker transcript summary "
    "contract invoice payment account partner market product launch campaign report numbers "
    "growth revenue cost estimate plan schedule week month morning afternoon today tomorrow "
    "agreed discussed mentioned suggested asked explained confirmed expected noticed improved "
    "reduced increased shipped tested measured checked updated moved started finished needs "
    "should could would will can must might good better clear quick simple careful important "
    "new next last first second final open shared internal external main several many few "
    "about around before after during between across through into with without for from of on "
    "in at to by is was are were has have had been being do does did said think know see"
)
_VOCABULARY: Final = tuple(_WORDS.split())


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated API behaves; every field has a default suitable for a local demo."""

    queued_seconds: float = 1.0
    processing_seconds: float = 4.0
    failure_ratio: float = 0.0
    seed: int = 0
    transcript_words: int = 400
    pending_max_age: int = 5
    final_max_age: int = 86400
    status_check_interval: float = 10.0
    start_offsets: tuple[float, ...] = ()
    seed_tokens: tuple[str, ...] = ()
    seed_count: int = 0
    default_model_key: str = "aitronos-transcribe-v1"
    front: OriginFront = field(default_factory=OriginFront)

    def __post_init__(self) -> None:
        if self.queued_seconds < 0 or self.processing_seconds < 0:
            raise ValueError("queued_seconds and processing_seconds must be >= 0")
        if not 0.0 <= self.failure_ratio <= 1.0:
            raise ValueError("failure_ratio must be between 0 and 1")
        if self.transcript_words < 1:
            raise ValueError("transcript_words must be >= 1")
        if self.pending_max_age < 0 or self.final_max_age < 0:
            raise ValueError("max-age values must be >= 0")
        if self.seed_count < 0:
            raise ValueError("seed_count must be >= 0")
        unknown = set(self.front.compress) - set(available_codings())
        if unknown:
            raise ValueError(
                f"cannot compress with {', '.join(sorted(unknown))}: "
                f"available are {', '.join(available_codings())}"
            )


@dataclass
class Transcription:
    """One transcription's fixed timeline; its status at any instant follows from the clock."""

    transcription_id: str
    owner: str
    audio_url: str
    model_key: str
    language: str
    duration: float
    created_at: float
    processing_at: float
    finished_at: float
    fails: bool
    last_status_check: float

    def status_at(self, now: float) -> Status:
        if now < self.processing_at:
            return "queued"
        if now < self.finished_at:
            return "processing"
        return "failed" if self.fails else "completed"

    def updated_at(self, status: Status) -> float:
        if status == "queued":
            return self.created_at
        if status == "processing":
            return self.processing_at
        return self.finished_at


@dataclass(frozen=True)
class Fault:
    """A misbehaviour for the next ``remaining`` API requests: a delay, then maybe a status."""

    status: int | None
    delay: float
    remaining: int


@dataclass(frozen=True)
class Sentence:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class TranscriptDocument:
    """The transcript's content, generated from the seed and the ID so every read agrees."""

    paragraphs: tuple[tuple[Sentence, ...], ...]

    @property
    def sentences(self) -> tuple[Sentence, ...]:
        return tuple(s for paragraph in self.paragraphs for s in paragraph)

    @property
    def text(self) -> str:
        return "\n\n".join(" ".join(s.text for s in p) for p in self.paragraphs)


@dataclass
class SimulatorStats:
    """What the simulator served, the upstream load a demo or benchmark reports."""

    requests: int = 0
    responses: Counter[int] = field(default_factory=Counter)
    not_modified: int = 0
    bytes_sent: int = 0
    routes: Counter[str] = field(default_factory=Counter)
    transcription_gets: Counter[str] = field(default_factory=Counter)
    faults_applied: int = 0

    def reset(self) -> None:
        self.requests = 0
        self.responses.clear()
        self.not_modified = 0
        self.bytes_sent = 0
        self.routes.clear()
        self.transcription_gets.clear()
        self.faults_applied = 0

    def snapshot(self, *, per_id: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {
            "requests": self.requests,
            "responses": {str(code): n for code, n in sorted(self.responses.items())},
            "not_modified": self.not_modified,
            "bytes_sent": self.bytes_sent,
            "routes": dict(sorted(self.routes.items())),
            "transcriptions_requested": len(self.transcription_gets),
            "faults_applied": self.faults_applied,
        }
        if per_id:
            result["transcription_gets"] = dict(self.transcription_gets)
        return result


class Simulator:
    """The simulated service's state: transcriptions, pending faults and served-traffic stats."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.clock = clock
        self.sleep = sleep
        self.stats = SimulatorStats()
        self._rng = random.Random(self.config.seed)
        self._transcriptions: dict[str, Transcription] = {}
        self._faults: deque[Fault] = deque()
        self._documents: OrderedDict[str, TranscriptDocument] = OrderedDict()
        if self.config.seed_count and self.config.seed_tokens:
            self.seed(
                self.config.seed_tokens, self.config.seed_count * len(self.config.seed_tokens)
            )

    def create(
        self,
        token: str,
        audio_url: str,
        model_key: str | None = None,
        *,
        language: str = "en",
        start_offset: float = 0.0,
    ) -> Transcription:
        """Create a transcription owned by ``token``.

        A positive ``start_offset`` keeps it queued that much longer; a negative one backdates it,
        as if it had been created that many seconds ago.
        """
        now = self.clock()
        transcription_id = f"trans_{self._rng.getrandbits(128):032x}"
        fails = self._rng.random() < self.config.failure_ratio
        processing_at = now + start_offset + self.config.queued_seconds
        transcription = Transcription(
            transcription_id=transcription_id,
            owner=token,
            audio_url=audio_url,
            model_key=model_key or self.config.default_model_key,
            language=language,
            duration=round(self._rng.uniform(30.0, 900.0), 2),
            created_at=now + min(start_offset, 0.0),
            processing_at=processing_at,
            finished_at=processing_at + self.config.processing_seconds,
            fails=fails,
            last_status_check=now,
        )
        self._transcriptions[transcription_id] = transcription
        return transcription

    def seed(self, tokens: Sequence[str], count: int) -> list[tuple[str, str]]:
        """Create ``count`` transcriptions round-robin over ``tokens``; returns (token, id) pairs.

        The i-th gets ``config.start_offsets[i % len]`` so a batch completes at staggered times.
        """
        if not tokens:
            raise ValueError("seed needs at least one token")
        offsets = self.config.start_offsets or (0.0,)
        created = []
        for i in range(count):
            token = tokens[i % len(tokens)]
            t = self.create(
                token,
                f"https://example.com/audio/{i:06d}.mp3",
                start_offset=offsets[i % len(offsets)],
            )
            created.append((token, t.transcription_id))
        return created

    def seed_transcriptions(self, token: str, n: int) -> list[str]:
        return [tid for _, tid in self.seed([token], n)]

    def lookup(self, token: str, transcription_id: str) -> Transcription | None:
        """The transcription if ``token`` owns it: another caller's ID looks like no ID at all."""
        transcription = self._transcriptions.get(transcription_id)
        if transcription is None or not secrets.compare_digest(transcription.owner, token):
            return None
        return transcription

    def delete(self, token: str, transcription_id: str) -> bool:
        if self.lookup(token, transcription_id) is None:
            return False
        del self._transcriptions[transcription_id]
        self._documents.pop(transcription_id, None)
        return True

    def __len__(self) -> int:
        return len(self._transcriptions)

    def owners(self) -> list[tuple[str, str]]:
        """(token, id) for every live transcription, oldest first."""
        return [(t.owner, tid) for tid, t in self._transcriptions.items()]

    def inject_fault(
        self, *, status: int | None = None, delay: float = 0.0, count: int = 1
    ) -> None:
        if status is not None and not 400 <= status <= 599:
            raise ValueError("fault status must be a 4xx or 5xx code")
        if delay < 0 or count < 1:
            raise ValueError("fault delay must be >= 0 and count >= 1")
        self._faults.append(Fault(status=status, delay=delay, remaining=count))

    def clear_faults(self) -> None:
        self._faults.clear()

    def pending_faults(self) -> list[Fault]:
        return list(self._faults)

    def take_fault(self) -> Fault | None:
        """Consume one application of the oldest pending fault."""
        if not self._faults:
            return None
        fault = self._faults.popleft()
        if fault.remaining > 1:
            self._faults.appendleft(
                Fault(status=fault.status, delay=fault.delay, remaining=fault.remaining - 1)
            )
        return fault

    def refresh_status(self, transcription: Transcription, status: Status, now: float) -> bool:
        """Model the service re-asking its provider when its last check is stale (per the doc)."""
        if status in TERMINAL_STATUSES:
            return False
        if now - transcription.last_status_check > self.config.status_check_interval:
            transcription.last_status_check = now
            return True
        return False

    def document(self, transcription: Transcription) -> TranscriptDocument:
        cached = self._documents.get(transcription.transcription_id)
        if cached is not None:
            self._documents.move_to_end(transcription.transcription_id)
            return cached
        document = generate_document(
            f"{self.config.seed}:{transcription.transcription_id}",
            self.config.transcript_words,
            transcription.duration,
        )
        self._documents[transcription.transcription_id] = document
        if len(self._documents) > _DOCUMENT_CACHE_SIZE:
            self._documents.popitem(last=False)
        return document


def generate_document(seed: str, words: int, duration: float) -> TranscriptDocument:
    """Plausible English-looking prose of ``words`` words, timed evenly across ``duration``."""
    rng = random.Random(seed)
    seconds_per_word = duration / words
    paragraphs: list[tuple[Sentence, ...]] = []
    current: list[Sentence] = []
    paragraph_length = rng.randint(3, 6)
    position = 0
    while position < words:
        length = min(rng.randint(6, 18), words - position)
        chosen = [rng.choice(_VOCABULARY) for _ in range(length)]
        text = " ".join(chosen).capitalize() + rng.choice(".....?!")
        start = round(position * seconds_per_word, 3)
        position += length
        current.append(Sentence(start=start, end=round(position * seconds_per_word, 3), text=text))
        if len(current) == paragraph_length:
            paragraphs.append(tuple(current))
            current = []
            paragraph_length = rng.randint(3, 6)
    if current:
        paragraphs.append(tuple(current))
    return TranscriptDocument(paragraphs=tuple(paragraphs))


def iso_timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def strong_etag(*parts: object) -> str:
    """A quoted strong validator over the given state, so it changes exactly when the state does."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
    return f'"{digest}"'


def _json_body(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def error_response(status: int, code: str, message: str) -> web.Response:
    body = _json_body({"success": False, "error": {"code": code, "message": message}})
    response = web.Response(status=status, body=body, content_type="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="aitronos"'
    return response


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def is_not_modified(request: web.Request, etag: str, last_modified: float) -> bool:
    """RFC 9110 §13.2.2: If-None-Match (weak comparison) decides; If-Modified-Since only without."""
    if_none_match = request.if_none_match
    if if_none_match is not None:
        current = etag.strip('"')
        return any(tag.value == "*" or tag.value == current for tag in if_none_match)
    if request.headers.get("If-None-Match"):
        return False
    since = request.if_modified_since
    return since is not None and math.floor(last_modified) <= since.timestamp()


def validated_response(
    request: web.Request,
    *,
    body: bytes,
    content_type: str,
    etag: str,
    last_modified: float,
    max_age: int,
    now: float,
) -> web.Response:
    """A cacheable representation, or the 304 standing in for it when the client already has it."""
    headers = {
        "ETag": etag,
        "Last-Modified": http_date(last_modified),
        "Cache-Control": f"public, max-age={max_age}",
        "Date": http_date(now),
    }
    if is_not_modified(request, etag, last_modified):
        return web.Response(status=304, headers=headers)
    response = web.Response(body=body, headers=headers)
    response.content_type = content_type
    if content_type.startswith("text/") or content_type == "application/x-subrip":
        response.charset = "utf-8"
    return response


SIMULATOR_KEY: Final = web.AppKey("simulator", Simulator)


def _simulator(request: web.Request) -> Simulator:
    return request.app[SIMULATOR_KEY]


def route_kind(method: str, path: str) -> str:
    """Bounded labels for the stats, aligned with the proxy's ``route`` metric label."""
    if not path.startswith(API_PREFIX):
        return "other"
    rest = path[len(API_PREFIX) :].strip("/")
    if not rest:
        return "create" if method == "POST" else "other"
    if "/" not in rest:
        return "delete" if method == "DELETE" else "transcription"
    return "transcription_resource"


@web.middleware
async def _count_and_fault(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count each API request on arrival and apply the next pending fault before handling it."""
    if request.path.startswith(CONTROL_PREFIX):
        return await handler(request)
    simulator = _simulator(request)
    simulator.stats.requests += 1
    simulator.stats.routes[route_kind(request.method, request.path)] += 1
    fault = simulator.take_fault()
    if fault is not None:
        simulator.stats.faults_applied += 1
        if fault.delay:
            await simulator.sleep(fault.delay)
        if fault.status is not None:
            return error_response(fault.status, "SIMULATED_FAULT", "Injected by the simulator.")
    return await handler(request)


async def _count_response(request: web.Request, response: web.StreamResponse) -> None:
    """Count every response as it goes out, including router 404s and raised HTTP exceptions.

    Body bytes are what goes on the wire: none for HEAD, 204 and 304, as aiohttp sends none.
    """
    if request.path.startswith(CONTROL_PREFIX):
        return
    stats = _simulator(request).stats
    stats.responses[response.status] += 1
    if response.status == 304:
        stats.not_modified += 1
    if request.method == "HEAD" or response.status in _EMPTY_BODY_STATUSES:
        return
    if isinstance(response, web.Response):
        body = response.body
        if isinstance(body, bytes | bytearray):
            stats.bytes_sent += len(body)
            return
    stats.bytes_sent += response.content_length or 0


def _owned(request: web.Request) -> Transcription | web.Response:
    token = bearer_token(request)
    if token is None:
        return error_response(401, "UNAUTHORIZED", "A valid Bearer access token is required.")
    transcription_id = request.match_info["transcription_id"]
    transcription = _simulator(request).lookup(token, transcription_id)
    if transcription is None:
        return error_response(
            404, "TRANSCRIPTION_NOT_FOUND", f"Transcription {transcription_id} was not found."
        )
    return transcription


def _actions(transcription_id: str) -> dict[str, str]:
    base = f"{API_PREFIX}/{transcription_id}"
    return {
        "get_paragraphs": f"{base}/paragraphs",
        "get_sentences": f"{base}/sentences",
        "get_subtitles_srt": f"{base}/subtitles/srt",
        "get_subtitles_vtt": f"{base}/subtitles/vtt",
        "get_subtitles_txt": f"{base}/subtitles/txt",
        "search": f"{base}/search?q={{query}}",
    }


def transcription_data(
    simulator: Simulator, transcription: Transcription, status: Status
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "transcription_id": transcription.transcription_id,
        "status": status,
        "model_key": transcription.model_key,
        "audio_metadata": {
            "url": transcription.audio_url,
            "duration": transcription.duration,
            "language": transcription.language,
        },
        "created_at": iso_timestamp(transcription.created_at),
        "updated_at": iso_timestamp(transcription.updated_at(status)),
        "completed_at": None,
        "processing_time_seconds": None,
    }
    if status in TERMINAL_STATUSES:
        data["completed_at"] = iso_timestamp(transcription.finished_at)
        data["processing_time_seconds"] = round(
            transcription.finished_at - transcription.processing_at, 3
        )
    if status == "completed":
        data["text"] = simulator.document(transcription).text
    elif status == "failed":
        data["error"] = {
            "code": "AUDIO_DECODE_FAILED",
            "message": "The audio could not be decoded.",
        }
    return data


def _billing(transcription: Transcription, status: Status) -> dict[str, Any]:
    consumed = max(1, math.ceil(transcription.duration / 60)) * 10
    return {
        "synapses_consumed": consumed,
        "synapses_refunded": consumed if status == "failed" else 0,
        "currency": "synapses",
    }


async def create_transcription(request: web.Request) -> web.Response:
    token = bearer_token(request)
    if token is None:
        return error_response(401, "UNAUTHORIZED", "A valid Bearer access token is required.")
    try:
        payload = await request.json()
    except ValueError:
        return error_response(400, "INVALID_JSON", "The request body must be a JSON object.")
    audio_url = payload.get("audio_url") if isinstance(payload, dict) else None
    if not isinstance(audio_url, str) or not audio_url:
        return error_response(422, "VALIDATION_ERROR", "audio_url is required.")
    model_key = payload.get("model_key")
    language = payload.get("language", "en")
    if not isinstance(model_key, str | None) or not isinstance(language, str):
        return error_response(422, "VALIDATION_ERROR", "model_key and language must be strings.")
    simulator = _simulator(request)
    transcription = simulator.create(token, audio_url, model_key, language=language)
    now = simulator.clock()
    status = transcription.status_at(now)
    body = _json_body(
        {"success": True, "data": transcription_data(simulator, transcription, status)}
    )
    return web.Response(
        status=201,
        body=body,
        content_type="application/json",
        headers={
            "Location": f"{API_PREFIX}/{transcription.transcription_id}",
            "Date": http_date(now),
        },
    )


async def get_transcription(request: web.Request) -> web.Response:
    started = time.perf_counter()
    owned = _owned(request)
    if isinstance(owned, web.Response):
        return owned
    simulator = _simulator(request)
    simulator.stats.transcription_gets[owned.transcription_id] += 1
    now = simulator.clock()
    status = owned.status_at(now)
    refreshed = simulator.refresh_status(owned, status, now)
    updated_at = owned.updated_at(status)
    etag = strong_etag(owned.transcription_id, status, updated_at)
    envelope: dict[str, Any] = {
        "success": True,
        "data": transcription_data(simulator, owned, status),
        "billing": _billing(owned, status),
        "metadata": {
            "request_id": f"req_{secrets.token_hex(12)}",
            "timestamp": iso_timestamp(now),
            "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
            "upstream_refreshed": refreshed,
        },
        "actions": _actions(owned.transcription_id) if status == "completed" else {},
    }
    config = simulator.config
    final = status in TERMINAL_STATUSES
    return validated_response(
        request,
        body=_json_body(envelope),
        content_type="application/json",
        etag=etag,
        last_modified=updated_at,
        max_age=config.final_max_age if final else config.pending_max_age,
        now=now,
    )


async def delete_transcription(request: web.Request) -> web.Response:
    owned = _owned(request)
    if isinstance(owned, web.Response):
        return owned
    _simulator(request).delete(owned.owner, owned.transcription_id)
    return web.Response(status=204)


def _subtitle_timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render_subtitles(document: TranscriptDocument, fmt: str) -> str:
    sentences = document.sentences
    if fmt == "txt":
        return document.text + "\n"
    separator = "," if fmt == "srt" else "."
    cues = [
        f"{i}\n{_subtitle_timestamp(s.start, separator)} --> "
        f"{_subtitle_timestamp(s.end, separator)}\n{s.text}\n"
        for i, s in enumerate(sentences, start=1)
    ]
    body = "\n".join(cues)
    return f"WEBVTT\n\n{body}" if fmt == "vtt" else body


def _sentence_json(index: int, sentence: Sentence) -> dict[str, Any]:
    return {"index": index, "start": sentence.start, "end": sentence.end, "text": sentence.text}


def _resource_content(
    document: TranscriptDocument, transcription_id: str, kind: str, request: web.Request
) -> tuple[bytes, str] | web.Response:
    payload: dict[str, Any]
    if kind == "paragraphs":
        paragraphs = [
            {
                "index": i,
                "start": p[0].start,
                "end": p[-1].end,
                "text": " ".join(s.text for s in p),
            }
            for i, p in enumerate(document.paragraphs)
        ]
        payload = {"transcription_id": transcription_id, "paragraphs": paragraphs}
        return _json_body({"success": True, "data": payload}), "application/json"
    if kind == "sentences":
        sentences = [_sentence_json(i, s) for i, s in enumerate(document.sentences)]
        payload = {"transcription_id": transcription_id, "sentences": sentences}
        return _json_body({"success": True, "data": payload}), "application/json"
    if kind == "search":
        query = request.query.get("q", "").strip()
        if not query:
            return error_response(400, "VALIDATION_ERROR", "The q query parameter is required.")
        needle = query.lower()
        matches = [
            _sentence_json(i, s)
            for i, s in enumerate(document.sentences)
            if needle in s.text.lower()
        ]
        payload = {
            "transcription_id": transcription_id,
            "query": query,
            "total": len(matches),
            "matches": matches,
        }
        return _json_body({"success": True, "data": payload}), "application/json"
    return render_subtitles(document, kind).encode(), SUBTITLE_MEDIA_TYPES[kind]


def _resource_handler(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        owned = _owned(request)
        if isinstance(owned, web.Response):
            return owned
        simulator = _simulator(request)
        now = simulator.clock()
        status = owned.status_at(now)
        if status == "failed":
            return error_response(409, "TRANSCRIPTION_FAILED", "The transcription failed.")
        if status != "completed":
            return error_response(
                409, "TRANSCRIPTION_NOT_COMPLETED", f"The transcription is still {status}."
            )
        content = _resource_content(
            simulator.document(owned), owned.transcription_id, kind, request
        )
        if isinstance(content, web.Response):
            return content
        body, content_type = content
        etag = strong_etag(
            owned.transcription_id, kind, owned.finished_at, request.query.get("q", "")
        )
        return validated_response(
            request,
            body=body,
            content_type=content_type,
            etag=etag,
            last_modified=owned.finished_at,
            max_age=simulator.config.final_max_age,
            now=now,
        )

    return handle


async def _read_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        payload = await request.json()
    except ValueError:
        return error_response(400, "INVALID_JSON", "The request body must be a JSON object.")
    if not isinstance(payload, dict):
        return error_response(400, "INVALID_JSON", "The request body must be a JSON object.")
    return payload


async def sim_stats(request: web.Request) -> web.Response:
    per_id = request.query.get("per_id", "") in {"1", "true", "yes"}
    return web.json_response(_simulator(request).stats.snapshot(per_id=per_id))


async def sim_reset_stats(request: web.Request) -> web.Response:
    _simulator(request).stats.reset()
    return web.json_response({"reset": True})


def _faults_json(simulator: Simulator) -> dict[str, Any]:
    return {
        "faults": [
            {"status": f.status, "delay": f.delay, "count": f.remaining}
            for f in simulator.pending_faults()
        ]
    }


async def sim_get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults_json(_simulator(request)))


async def sim_add_fault(request: web.Request) -> web.Response:
    payload = await _read_json_object(request)
    if isinstance(payload, web.Response):
        return payload
    simulator = _simulator(request)
    try:
        status = payload.get("status")
        delay = float(payload.get("delay", 0.0))
        count = int(payload.get("count", 1))
        if status is None and delay == 0.0:
            raise ValueError("a fault needs a status or a delay")
        simulator.inject_fault(
            status=None if status is None else int(status), delay=delay, count=count
        )
    except (TypeError, ValueError) as exc:
        return error_response(422, "VALIDATION_ERROR", str(exc))
    return web.json_response(_faults_json(simulator), status=201)


async def sim_clear_faults(request: web.Request) -> web.Response:
    _simulator(request).clear_faults()
    return web.Response(status=204)


async def sim_seed(request: web.Request) -> web.Response:
    payload = await _read_json_object(request)
    if isinstance(payload, web.Response):
        return payload
    tokens = payload.get("tokens")
    if tokens is None and "token" in payload:
        tokens = [payload["token"]]
    count = payload.get("count", 1)
    if (
        not isinstance(tokens, list)
        or not tokens
        or not all(isinstance(t, str) and t for t in tokens)
        or not isinstance(count, int)
        or count < 0
    ):
        return error_response(
            422, "VALIDATION_ERROR", 'Expected {"tokens": [str, ...], "count": int >= 0}.'
        )
    created = _simulator(request).seed(tokens, count)
    return web.json_response(
        {"transcriptions": [{"token": t, "transcription_id": i} for t, i in created]}, status=201
    )


def create_simulator_app(
    config: SimulatorConfig | None = None,
    *,
    clock: Clock = time.time,
    simulator: Simulator | None = None,
) -> web.Application:
    """The simulated API as an aiohttp app; pass ``simulator`` to share its state with a test."""
    if simulator is not None and config is not None:
        raise ValueError("pass either config or simulator, not both")
    state = simulator if simulator is not None else Simulator(config, clock=clock)
    middlewares: list[Middleware] = [_count_and_fault]
    if state.config.front.active:
        middlewares.append(front_middleware(state.config.front))
    app = web.Application(middlewares=middlewares)
    app[SIMULATOR_KEY] = state
    app.on_response_prepare.append(_count_response)
    item = API_PREFIX + "/{transcription_id}"
    app.router.add_post(API_PREFIX, create_transcription)
    app.router.add_get(item, get_transcription)
    app.router.add_delete(item, delete_transcription)
    for kind in ("paragraphs", "sentences", "search"):
        app.router.add_get(f"{item}/{kind}", _resource_handler(kind))
    for fmt in SUBTITLE_MEDIA_TYPES:
        app.router.add_get(f"{item}/subtitles/{fmt}", _resource_handler(fmt))
    app.router.add_get("/_sim/stats", sim_stats)
    app.router.add_post("/_sim/reset-stats", sim_reset_stats)
    app.router.add_get("/_sim/faults", sim_get_faults)
    app.router.add_post("/_sim/faults", sim_add_fault)
    app.router.add_delete("/_sim/faults", sim_clear_faults)
    app.router.add_post("/_sim/seed", sim_seed)
    return app


def _float_list(value: str) -> tuple[float, ...]:
    return tuple(float(part) for part in value.split(",") if part.strip())


def _str_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags for ``python -m proxy simulate``; each defaults from ``SIM_<FLAG>`` in ``environ``."""
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m proxy simulate",
        description="Serve a simulated Aitronos transcription API (no network, no credentials).",
    )

    option = env_backed_options(parser, environ, "SIM_")
    option("--host", str, "127.0.0.1", "interface to listen on")
    option("--port", int, 8081, "port to listen on; 0 picks a free one")
    option("--queued-seconds", float, defaults.queued_seconds, "time spent queued")
    option("--processing-seconds", float, defaults.processing_seconds, "time spent processing")
    option("--failure-ratio", float, defaults.failure_ratio, "share of transcriptions that fail")
    option("--seed", int, defaults.seed, "random seed for IDs, failures and transcripts")
    option("--transcript-words", int, defaults.transcript_words, "words per transcript")
    option("--pending-max-age", int, defaults.pending_max_age, "max-age while queued/processing")
    option("--final-max-age", int, defaults.final_max_age, "max-age once completed/failed")
    option("--start-offsets", _float_list, "", "comma-separated delays for seeded transcriptions")
    option("--seed-tokens", _str_list, "", "comma-separated tokens to pre-seed transcriptions for")
    option("--seed-count", int, 0, "transcriptions to pre-seed per token")
    option(
        "--compress",
        _str_list,
        "",
        "codings to compress JSON/text answers with, as nginx's gzip does (e.g. gzip or "
        "gzip,br,zstd), with Vary: Accept-Encoding and weak ETags; empty: never",
    )
    option(
        "--narrow-304-vary",
        parse_bool,
        False,
        "send 304s without Vary: Accept-Encoding (as nginx's gzip_vary does)",
    )
    option(
        "--cors",
        parse_bool,
        False,
        "answer CORS preflights and add Access-Control-Allow-Origin and Vary: Origin",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        queued_seconds=args.queued_seconds,
        processing_seconds=args.processing_seconds,
        failure_ratio=args.failure_ratio,
        seed=args.seed,
        transcript_words=args.transcript_words,
        pending_max_age=args.pending_max_age,
        final_max_age=args.final_max_age,
        start_offsets=tuple(args.start_offsets),
        seed_tokens=tuple(args.seed_tokens),
        seed_count=args.seed_count,
        front=OriginFront(
            compress=tuple(args.compress),
            narrow_304_vary=args.narrow_304_vary,
            cors=args.cors,
        ),
    )


def listening_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then shut the listener down cleanly."""
    simulator = Simulator(config)
    runner = web.AppRunner(create_simulator_app(simulator=simulator), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        url = listening_url(runner)
        print(f"simulated transcription API listening on {url}", flush=True)
        seeded = simulator.owners()
        for token, transcription_id in seeded[:_SEEDED_SHOWN]:
            print(f"seeded {transcription_id} for token {token}", flush=True)
        if len(seeded) > _SEEDED_SHOWN:
            print(f"... and {len(seeded) - _SEEDED_SHOWN} more", flush=True)
        print(f"stats: curl -s {url}/_sim/stats", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """``python -m proxy simulate``: parse flags, then serve until interrupted."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"simulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
