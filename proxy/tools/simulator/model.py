"""The simulated service's state, kept apart from HTTP: transcriptions, faults, stats and clock.

A transcription belongs to the bearer token that created it and moves ``queued`` →
``processing`` → ``completed`` (or ``failed``) over configured times. Its status is computed from
the injected clock on every read, so there are no background tasks and a test steps time by hand.
Transcript content is generated from the seed and the ID, so every read of one agrees.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from proxy.core.coding import available_codings
from proxy.tools.origin_front import OriginFront

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
_DOCUMENT_CACHE_SIZE: Final = 256

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
