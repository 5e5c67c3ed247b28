"""A versioned byte format for records kept outside the process (Redis), never pickle.

Layout: ``MAGIC`` (3 bytes), a version byte, the length of the metadata (4 bytes, big-endian),
the metadata as JSON, then the raw bodies one after another: each variant's stored body (in its
``coding``) followed by the bodies of its derived representations (other content codings, listed
in its ``derived``), so a replica reading the record never recompresses. Version 2 added
``derived``; version 3 ``coding``, the coding the one stored body is kept in (issue 19). A
reader trusts nothing in it: anything it cannot read exactly raises ``CodecError``, which the
store turns into a miss, so an upgrade or a corrupt entry costs one upstream fetch, never an error.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from proxy.core.coding import IDENTITY, PREFERENCE, Representation
from proxy.core.models import Record, StoredResponse

MAGIC = b"acp"
VERSION = 3
_HEAD = struct.Struct(">3sBI")


class CodecError(ValueError):
    """The bytes are not a record this version can read (other version, truncated, garbage)."""


def encode_record(record: Record) -> bytes:
    variants = [
        {
            "status": entry.status,
            "reason": entry.reason,
            "headers": entry.headers,
            "request_time": entry.request_time,
            "response_time": entry.response_time,
            "scope": entry.scope,
            "selecting": entry.selecting,
            "targeted": entry.targeted,
            "body": len(entry.body),
            "coding": entry.coding,
            "derived": [[rep.coding, rep.etag, len(rep.body or b"")] for rep in entry.derived],
        }
        for entry in record
    ]
    meta = json.dumps({"variants": variants}, separators=(",", ":"), allow_nan=False).encode()
    bodies = [
        body for entry in record for body in (entry.body, *(r.body or b"" for r in entry.derived))
    ]
    return b"".join((_HEAD.pack(MAGIC, VERSION, len(meta)), meta, *bodies))


def decode_record(data: bytes) -> Record:
    """The record in ``data``; raises ``CodecError`` unless every field is exactly as written."""
    if len(data) < _HEAD.size:
        raise CodecError("too short for a record")
    magic, version, meta_length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CodecError("not a record")
    if version != VERSION:
        raise CodecError(f"record format version {version}, this proxy reads {VERSION}")
    start = _HEAD.size + meta_length
    if start > len(data):
        raise CodecError("truncated metadata")
    try:
        meta = json.loads(data[_HEAD.size : start])
    except (ValueError, RecursionError) as error:
        raise CodecError("unreadable metadata") from error
    variants = meta.get("variants") if isinstance(meta, dict) else None
    if not isinstance(variants, list) or not variants:
        raise CodecError("no variants")
    record = []
    offset = start
    for fields in variants:
        entry, offset = _variant(fields, data, offset)
        record.append(entry)
    if offset != len(data):
        raise CodecError("body lengths do not add up")
    return tuple(record)


def _variant(fields: Any, data: bytes, offset: int) -> tuple[StoredResponse, int]:
    if not isinstance(fields, dict):
        raise CodecError("a variant is not an object")
    status = _typed(fields, "status", int)
    length = _typed(fields, "body", int)
    if not 100 <= status <= 999 or length < 0 or offset + length > len(data):
        raise CodecError("bad status or body length")
    body = data[offset : offset + length]
    offset += length
    derived = []
    listed = _typed(fields, "derived", list)
    for item in listed:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not (item[1] is None or isinstance(item[1], str))
            or not isinstance(item[2], int)
            or isinstance(item[2], bool)
            or item[2] < 0
            or offset + item[2] > len(data)
        ):
            raise CodecError("bad derived representation")
        derived.append(Representation(item[0], data[offset : offset + item[2]], item[1], True))
        offset += item[2]
    coding = fields.get("coding")
    if coding is not None and coding not in (IDENTITY, *PREFERENCE):
        raise CodecError("coding is not one this cache stores")
    try:
        entry = StoredResponse(
            status=status,
            reason=_typed(fields, "reason", str),
            headers=_pairs(fields, "headers"),
            body=body,
            request_time=_time(fields, "request_time"),
            response_time=_time(fields, "response_time"),
            scope=_typed(fields, "scope", str),
            selecting=_pairs(fields, "selecting"),
            targeted=_typed(fields, "targeted", bool),
            derived=tuple(derived),
            coding=coding,
        )
    except CodecError:
        raise
    except Exception as error:  # the model's own parsing must not let a bad entry escape as a crash
        raise CodecError("fields do not make a stored response") from error
    return entry, offset


def _typed(fields: dict[str, Any], name: str, kind: type) -> Any:
    value = fields.get(name)
    # bool is an int in Python: keep a JSON true out of an int field and 1 out of a bool one.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CodecError(f"{name} is not a {kind.__name__}")
    return value


def _time(fields: dict[str, Any], name: str) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CodecError(f"{name} is not a time")
    return float(value)


def _pairs(fields: dict[str, Any], name: str) -> tuple[tuple[str, str], ...]:
    value = _typed(fields, name, list)
    pairs = []
    for pair in value:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
        ):
            raise CodecError(f"{name} are not name/value pairs")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)
