"""HMAC-signed client tokens: who a connection is, which rooms it may join, until when.

Token format (version 1), three dot-separated parts::

    v1.<base64url-nopad(JSON payload)>.<base64url-nopad(HMAC-SHA256(secret, "v1." + payload_b64))>

Payload keys: ``sub`` (user id), ``name`` (display name), ``rooms`` (room ids, ``"*"`` for
any), ``role`` (a :class:`Role` value) and ``exp`` (unix seconds). Other keys are ignored.

Guarantees:

* :func:`verify_token` raises nothing but :class:`TokenInvalid` or :class:`TokenExpired`,
  whatever string it is given, and compares signatures in constant time.
* The payload is read only after its signature checked out, and the signature is
  compared in its canonical encoding, so one set of claims has exactly one valid token.
* A token whose claims :func:`verify_token` would reject cannot be minted.
* User ids starting with ``anon:`` are reserved for :func:`anonymous_claims`; no token
  carries one, so a token holder can never pose as an anonymous session or vice versa.

Whether a token admits a given room is not a token error: the gateway asks
:meth:`Claims.can_join` and answers ``forbidden_room``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from protocol.codes import CloseCode

__all__ = [
    "ANONYMOUS_PREFIX",
    "ANY_ROOM",
    "MAX_NAME_LENGTH",
    "MAX_ROOMS",
    "MAX_ROOM_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MAX_USER_ID_LENGTH",
    "Claims",
    "Role",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "anonymous_claims",
    "mint_token",
    "verify_token",
]

VERSION = "v1"
ANY_ROOM = "*"
ANONYMOUS_PREFIX = "anon:"
MAX_USER_ID_LENGTH = 128
MAX_NAME_LENGTH = 64
MAX_ROOM_LENGTH = 128
MAX_ROOMS = 256
MAX_TOKEN_LENGTH = 16384
"""Longer strings are rejected before any decoding or hashing."""

_ANONYMOUS_TTL = 100 * 365 * 86400.0
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class Role(enum.StrEnum):
    """What a token holder is in the rooms it joins."""

    VIEWER = "viewer"
    HOST = "host"
    MODERATOR = "moderator"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified identity of a connection.

    Attributes:
        user_id: stable user id (``anon:<session>`` for anonymous viewers).
        name: display name shown next to the user's comments.
        rooms: rooms the token admits; ``("*",)`` admits any room.
        role: the holder's role.
        expires_at: unix seconds after which the token is no longer accepted.
        anonymous: an anonymous read-only viewer (no token).
    """

    user_id: str
    name: str
    rooms: tuple[str, ...]
    role: Role
    expires_at: float
    anonymous: bool = False

    def can_join(self, room: str) -> bool:
        """Whether these claims admit ``room``."""
        return ANY_ROOM in self.rooms or room in self.rooms

    @property
    def can_write(self) -> bool:
        """Whether the holder may comment and like: every token role may, anonymous may not."""
        return not self.anonymous


_ROLES = frozenset(role.value for role in Role)


class TokenError(Exception):
    """A token was not accepted; the connection closes with :attr:`close_code`.

    Attributes:
        code: machine-readable reason, e.g. ``"token_invalid"``.
        close_code: websocket close code to close the connection with.
    """

    code: ClassVar[str] = "token_invalid"
    close_code: ClassVar[int] = CloseCode.TOKEN_INVALID


class TokenInvalid(TokenError):
    """Malformed token, bad signature, or a missing / mistyped / out-of-range claim."""

    code = "token_invalid"
    close_code = CloseCode.TOKEN_INVALID


class TokenExpired(TokenError):
    """Well-formed and correctly signed, but past its expiry time."""

    code = "token_expired"
    close_code = CloseCode.TOKEN_EXPIRED


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Decode unpadded base64url; ``text`` must already match ``_B64URL``."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("secret must not be empty")
    return key


def _signature(key: bytes, signed_part: str) -> str:
    return _b64encode(hmac.new(key, signed_part.encode("ascii"), hashlib.sha256).digest())


def _claims_problem(
    sub: object, name: object, rooms: object, role: object, exp: object
) -> str | None:
    """Return what is wrong with these claim values, or None when they are all valid."""
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_USER_ID_LENGTH:
        return f"sub must be a non-empty string of at most {MAX_USER_ID_LENGTH} characters"
    if sub.startswith(ANONYMOUS_PREFIX):
        return f"sub must not start with the reserved prefix {ANONYMOUS_PREFIX!r}"
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        return f"name must be a string of at most {MAX_NAME_LENGTH} characters"
    if not isinstance(rooms, list | tuple) or not 0 < len(rooms) <= MAX_ROOMS:
        return f"rooms must be a non-empty list of at most {MAX_ROOMS} room ids"
    for room in rooms:
        if not isinstance(room, str) or not 0 < len(room) <= MAX_ROOM_LENGTH:
            return f"each room must be a non-empty string of at most {MAX_ROOM_LENGTH} characters"
    if not isinstance(role, str) or role not in _ROLES:
        return f"role must be one of {', '.join(r.value for r in Role)}"
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not _finite(exp):
        return "exp must be a finite number (unix seconds)"
    return None


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float
        return False


def mint_token(secret: str | bytes, claims: Claims) -> str:
    """Sign ``claims`` into a token string.

    Args:
        secret: the HMAC key (``auth.secret``); a str is encoded as UTF-8.
        claims: what the token carries; ``anonymous`` claims cannot be minted.

    Returns:
        ``v1.<payload>.<signature>``, all URL-safe ASCII.

    Raises:
        ValueError: empty secret, anonymous claims, or claims :func:`verify_token` would
            reject (empty user id, too long name, no rooms, unknown role, ...).
    """
    key = _key(secret)
    if claims.anonymous:
        raise ValueError("anonymous claims cannot be minted into a token")
    problem = _claims_problem(
        claims.user_id, claims.name, claims.rooms, claims.role, claims.expires_at
    )
    if problem is not None:
        raise ValueError(f"cannot mint token: {problem}")
    payload = {
        "sub": claims.user_id,
        "name": claims.name,
        "rooms": list(claims.rooms),
        "role": str(claims.role),
        "exp": claims.expires_at,
    }
    signed_part = f"{VERSION}.{_b64encode(orjson.dumps(payload))}"
    token = f"{signed_part}.{_signature(key, signed_part)}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"cannot mint token: longer than {MAX_TOKEN_LENGTH} characters")
    return token


def verify_token(secret: str | bytes, token: str, now: float) -> Claims:
    """Check a token's signature and claims and return the claims.

    Args:
        secret: the HMAC key the token was minted with.
        token: the untrusted token string.
        now: current unix time in seconds (injected, for testability).

    Returns:
        The token's :class:`Claims` (never anonymous).

    Raises:
        TokenInvalid: not a v1 token, bad signature (including a wrong secret), or a
            missing / mistyped / out-of-range claim.
        TokenExpired: correctly signed and well formed, but ``now >= exp``.
        ValueError: empty ``secret`` (a configuration error, not the token's fault).
    """
    key = _key(secret)
    if not isinstance(token, str):
        raise TokenInvalid("token must be a string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid(f"token longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("token must have three dot-separated parts")
    version, payload_b64, signature = parts
    if version != VERSION:
        raise TokenInvalid(f"unsupported token version (expected {VERSION!r})")
    if not (_B64URL.fullmatch(payload_b64) and _B64URL.fullmatch(signature)):
        raise TokenInvalid("token parts must be unpadded base64url")
    expected = _signature(key, f"{version}.{payload_b64}")
    if not hmac.compare_digest(expected, signature):
        raise TokenInvalid("bad token signature")

    try:
        payload: Any = orjson.loads(_b64decode(payload_b64))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        raise TokenInvalid("token payload is not base64url-encoded JSON") from None
    if not isinstance(payload, dict):
        raise TokenInvalid("token payload must be a JSON object")
    sub: Any = payload.get("sub")
    name: Any = payload.get("name")
    rooms: Any = payload.get("rooms")
    role: Any = payload.get("role")
    exp: Any = payload.get("exp")
    problem = _claims_problem(sub, name, rooms, role, exp)
    if problem is not None:
        raise TokenInvalid(f"invalid token claims: {problem}")
    if now >= exp:
        raise TokenExpired("token expired")
    return Claims(
        user_id=sub,
        name=name,
        rooms=tuple(rooms),
        role=Role(role),
        expires_at=float(exp),
    )


def anonymous_claims(session_id: str, now: float) -> Claims:
    """Claims for an anonymous read-only viewer (when ``auth.allow_anonymous`` is on).

    Args:
        session_id: the connection's session id; the user id becomes ``anon:<session_id>``.
        now: current unix time in seconds.

    Returns:
        Viewer claims admitting any room, ``anonymous=True`` (so ``can_write`` is False),
        expiring a hundred years from ``now``.
    """
    return Claims(
        user_id=f"{ANONYMOUS_PREFIX}{session_id}",
        name="anonymous",
        rooms=(ANY_ROOM,),
        role=Role.VIEWER,
        expires_at=now + _ANONYMOUS_TTL,
        anonymous=True,
    )
