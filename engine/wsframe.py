"""Serialise one server-to-client websocket frame, once, for writing to many transports.

Server frames are never masked (RFC 6455 5.1) and liveroom negotiates no extensions, so
the bytes of a frame are the same for every recipient: the fan-out encodes a frame once
and writes the same bytes to each subscriber's transport. Framing is websockets' own.
"""

from __future__ import annotations

from websockets.frames import Frame, Opcode

__all__ = ["data_frame"]


def data_frame(payload: bytes, *, binary: bool) -> bytes:
    """Return the complete wire bytes of a final data frame carrying ``payload``."""
    opcode = Opcode.BINARY if binary else Opcode.TEXT
    return Frame(opcode, payload).serialize(mask=False, extensions=[])
