"""Close codes and error codes of liveroom protocol v1.

These numbers and names are part of the wire contract (see SPEC.md): a value, once
published, keeps its meaning forever. New codes may be added; none is ever reused.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["BUY_TRY_AGAIN", "CloseCode", "ErrorCode"]


class CloseCode(enum.IntEnum):
    """Websocket close codes the server sends, with the reason each stands for."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down; reconnect elsewhere / later
    PROTOCOL_ERROR = 1002  # broken websocket framing (RFC 6455)
    UNSUPPORTED_DATA = 1003  # text frame on msgpack, binary frame on json
    INVALID_PAYLOAD = 1007  # frame payload is not a decodable message
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # larger than the server's max message size
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # server at max connections
    TOKEN_INVALID = 4001  # token malformed, bad signature, or missing
    TOKEN_EXPIRED = 4002
    UNKNOWN_TYPE = 4003  # message type this protocol version does not know
    SLOW_CONSUMER = 4008  # client read too slowly; its unsent bytes hit the limit
    IDLE_TIMEOUT = 4009  # nothing received from the client for too long


class ErrorCode(enum.StrEnum):
    """Codes carried by ``error`` messages; the connection stays open after each."""

    INVALID_FIELD = "invalid_field"  # a field is missing, of the wrong type or out of range
    EMPTY_COMMENT = "empty_comment"
    COMMENT_TOO_LONG = "comment_too_long"
    FORBIDDEN_ROOM = "forbidden_room"  # the token does not admit this room
    NOT_JOINED = "not_joined"  # command for a room the connection has not joined
    TOO_MANY_ROOMS = "too_many_rooms"
    READ_ONLY = "read_only"  # anonymous viewers cannot comment or like
    RATE_LIMITED = "rate_limited"  # a command over its per-connection budget (rate limits)
    INTERNAL = "internal"
    TOKEN_INVALID = "token_invalid"  # a refused ``refresh``: bad token, or another user's
    TOKEN_EXPIRED = "token_expired"  # a refused ``refresh``: the new token already expired
    ROOMS_FULL = "rooms_full"  # the node holds its maximum number of rooms; retry later
    ROOM_NOT_LIVE = "room_not_live"  # anonymous join of a room the node does not hold
    UNAVAILABLE = "unavailable"  # the shared room state (Redis) is unreachable; retry later


BUY_TRY_AGAIN: Final = "try again"
"""The stable ``buy_result.msg`` of a Buy the node could not take (its queue full, or the
store unreachable): retry with the same ``rid`` (SPEC §9.3)."""
