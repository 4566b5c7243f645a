"""Errors raised while decoding untrusted bytes into protocol messages.

Decoding never raises anything but a subclass of :class:`ProtocolError`. Each error says
who is at fault (always the peer here), the error code to answer with, and whether the
connection must close (``close_code``) or may stay open with an ``error`` answer.
"""

from __future__ import annotations

from protocol.codes import CloseCode, ErrorCode

__all__ = ["InvalidField", "MalformedMessage", "ProtocolError", "UnknownMessageType"]

Rid = str | int


class ProtocolError(Exception):
    """Base class: the peer sent something this protocol version does not accept.

    Attributes:
        close_code: close the connection with this code, or ``None`` to answer with an
            ``error`` message and keep the connection open.
        code: the error code for an ``error`` answer.
        rid: the request id of the offending message, when it could be read.
    """

    close_code: CloseCode | None = CloseCode.POLICY_VIOLATION
    code: ErrorCode = ErrorCode.INVALID_FIELD

    def __init__(self, message: str, *, rid: Rid | None = None) -> None:
        super().__init__(message)
        self.rid = rid


class MalformedMessage(ProtocolError):
    """The bytes are not one well-formed message map in the negotiated codec."""

    close_code = CloseCode.INVALID_PAYLOAD


class UnknownMessageType(ProtocolError):
    """The message map is well formed but its ``t`` names no known message type."""

    close_code = CloseCode.UNKNOWN_TYPE


class InvalidField(ProtocolError):
    """A known message type with a missing, mistyped or out-of-range field.

    The connection stays open; the server answers ``error`` with code ``invalid_field``
    and the request id when the message carried one.
    """

    close_code = None
    code = ErrorCode.INVALID_FIELD

    def __init__(self, message: str, *, field: str, rid: Rid | None = None) -> None:
        super().__init__(message, rid=rid)
        self.field = field
