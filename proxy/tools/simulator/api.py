"""The simulated API over HTTP: the aiohttp app, its routes, validators, 304s and control plane.

It follows ``shared/api/transcription-api.md``:

- ``POST /v1/audio/transcribe`` with ``{"audio_url": ..., "model_key": ...}`` → 201 and ``data``.
- ``GET|HEAD /v1/audio/transcribe/{id}`` → the full envelope with ``ETag``, ``Last-Modified`` and
  the status-dependent ``Cache-Control``; ``If-None-Match`` (weak comparison, ``*``) or, without
  it, ``If-Modified-Since`` → 304 without a body (RFC 9110 §13.2.2).
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

With a ``front`` in the config (compression mode ``--compress``, ``--narrow-304-vary``, CORS mode
``--cors``) it answers like an API behind an nginx that compresses and adds ``Vary`` and CORS
headers (``proxy.tools.origin_front``).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.tools.origin_front import front_middleware
from proxy.tools.simulator.model import (
    API_PREFIX,
    CONTROL_PREFIX,
    SUBTITLE_MEDIA_TYPES,
    TERMINAL_STATUSES,
    Clock,
    Sentence,
    Simulator,
    SimulatorConfig,
    Status,
    TranscriptDocument,
    Transcription,
    render_subtitles,
)

_EMPTY_BODY_STATUSES: Final = frozenset({204, 304})


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
    """The bearer token of ``Authorization``, or (RFC 6750 §2.3) of an ``access_token`` query
    parameter when the request has no ``Authorization``: a browser's ``EventSource`` cannot
    send fields of its own."""
    if "Authorization" not in request.headers:
        token = request.query.get("access_token", "")
        return token if token and " " not in token else None
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
