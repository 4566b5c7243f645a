"""Serialise one server-to-client websocket frame, once, for writing to many transports.

Server frames are never masked (RFC 6455 5.1) and liveroom negotiates no extensions, so
the bytes of a frame are the same for every recipient: the fan-out encodes a frame once
and writes the same bytes to each subscriber's transport.

The header is built here rather than by ``websockets.frames.Frame.serialize`` because
every ack and every batch frame passes through this function (the library's general
serialiser costs about 0.7 us, a third of an ack's encoding). It is the one case RFC 6455
allows a server: FIN set, no RSV bits, no mask, and a 7-bit, 16-bit or 64-bit length.
``tests/test_wsframe.py`` checks it byte for byte against ``Frame.serialize`` at every
length boundary and on random payloads. Parsing stays websockets' own.
"""

from __future__ import annotations

import struct

__all__ = ["data_frame"]

_FIN_BINARY = 0x82
_FIN_TEXT = 0x81
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def data_frame(payload: bytes, *, binary: bool) -> bytes:
    """Return the complete wire bytes of a final, unmasked data frame carrying ``payload``."""
    first = _FIN_BINARY if binary else _FIN_TEXT
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 0x10000:
        return _LEN16.pack(first, 126, n) + payload
    return _LEN64.pack(first, 127, n) + payload
