"""The named states of one client connection, one enum per direction (after h11's state machine).

Before these, eleven booleans together encoded where a connection was; which combinations could
occur was nowhere written. Each direction now has one state and the questions the server asks of
a connection (``busy``, ``idle``, ``waiting``) are derived from them in ``HttpConnection``.
"""

from __future__ import annotations

from enum import Enum


class ReadState(Enum):
    """Where the request side is, as the parser sees it (RFC 9112 §2.1 message framing)."""

    #: Between requests: nothing of the next head has arrived.
    IDLE = "idle"
    #: A request head has begun and is not whole yet.
    HEAD = "head"
    #: A head is whole and its body (content or chunks) is still arriving.
    BODY = "body"
    #: Nothing more is read: a request was refused or asked to close, or the client half-closed
    #: its side (RFC 9112 §9.6); the connection closes once the answers due are written.
    DONE = "done"


class WriteState(Enum):
    """Where the response side is, as the transport sees it."""

    #: Nothing unwritten: the next answer may go out at once.
    IDLE = "idle"
    #: A large body is being written slice by slice as the transport takes it.
    WRITING = "writing"
    #: The transport asked us to stop writing (``pause_writing``); a client that stays here for
    #: ``--client-send-timeout`` is cut.
    DRAINING = "draining"
    #: The connection is gone.
    CLOSED = "closed"


class AnswerState(Enum):
    """Whether requests are being answered (in the order they arrived, RFC 9112 §9.3.2)."""

    #: No request is owed an answer.
    IDLE = "idle"
    #: Answering: queued requests, a handler running, or an answer still being written.
    BUSY = "busy"
    #: A handler task (``Front.answer``) owns the connection's writes.
    HANDLING = "handling"
