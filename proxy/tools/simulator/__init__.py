"""A simulated Aitronos transcription API, to show, test and benchmark the proxy offline.

It follows ``shared/api/transcription-api.md`` in three parts: ``model`` (transcriptions, their
states over an injected clock, faults and served-traffic stats; no HTTP), ``api`` (the aiohttp
app: routes, ETags and 304s, the compression and CORS modes of ``proxy.tools.origin_front``, the
``/_sim/`` control plane) and ``cli`` (``python -m proxy simulate --port P``).
"""

from proxy.tools.simulator.api import (
    SIMULATOR_KEY,
    create_simulator_app,
    error_response,
    http_date,
    iso_timestamp,
    route_kind,
    strong_etag,
    validated_response,
)
from proxy.tools.simulator.cli import (
    build_parser,
    config_from_args,
    listening_url,
    main,
    serve,
    serving,
    startup_lines,
)
from proxy.tools.simulator.model import (
    API_PREFIX,
    CONTROL_PREFIX,
    SUBTITLE_MEDIA_TYPES,
    TERMINAL_STATUSES,
    Fault,
    Sentence,
    Simulator,
    SimulatorConfig,
    SimulatorStats,
    Status,
    TranscriptDocument,
    Transcription,
    generate_document,
    render_subtitles,
)

__all__ = [
    "API_PREFIX",
    "CONTROL_PREFIX",
    "SIMULATOR_KEY",
    "SUBTITLE_MEDIA_TYPES",
    "TERMINAL_STATUSES",
    "Fault",
    "Sentence",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "Status",
    "TranscriptDocument",
    "Transcription",
    "build_parser",
    "config_from_args",
    "create_simulator_app",
    "error_response",
    "generate_document",
    "http_date",
    "iso_timestamp",
    "listening_url",
    "main",
    "render_subtitles",
    "route_kind",
    "serve",
    "serving",
    "startup_lines",
    "strong_etag",
    "validated_response",
]
