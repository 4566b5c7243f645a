"""liveroom protocol v1, sans-I/O: typed messages, codecs, errors. No sockets, no asyncio.

Bytes in, typed messages out; typed messages in, bytes out. SPEC.md beside this file is
the normative description for frontend authors; ``vectors/`` pairs each message with its
exact bytes in both codecs.
"""

from protocol.codec import CODECS, DEFAULT_SUBPROTOCOL, JSON, MSGPACK, Codec, codec_for
from protocol.codes import CloseCode, ErrorCode
from protocol.errors import InvalidField, MalformedMessage, ProtocolError, UnknownMessageType
from protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    ClientMessage,
    Comment,
    Error,
    Join,
    Joined,
    Leave,
    Left,
    Like,
    Likes,
    Message,
    Ping,
    Pong,
    Rid,
    RoomEvent,
    SendComment,
    ServerMessage,
    Viewers,
    Welcome,
)

__all__ = [
    "CODECS",
    "DEFAULT_SUBPROTOCOL",
    "JSON",
    "MSGPACK",
    "PROTOCOL_VERSION",
    "Ack",
    "Batch",
    "ClientMessage",
    "CloseCode",
    "Codec",
    "Comment",
    "Error",
    "ErrorCode",
    "InvalidField",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "Like",
    "Likes",
    "MalformedMessage",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "Rid",
    "RoomEvent",
    "SendComment",
    "ServerMessage",
    "UnknownMessageType",
    "Viewers",
    "Welcome",
    "codec_for",
]
