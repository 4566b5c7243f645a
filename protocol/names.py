"""Room names: the one rule every part of liveroom applies (websocket, service API, stores).

A room name is 1..64 code points, each a Unicode letter (categories L*), mark (M*) or
number (N*), or one of ``_ . : -``. So ``live-42`` and ``直播间-1`` are room names; spaces,
``/``, braces (Redis hash tags), control characters, bidi and other format characters
(U+200E, U+202E, U+2066 …), symbols and emoji are not. Names are compared code point by
code point: no case folding, no Unicode normalisation.

Guarantees: :func:`valid_room_name` never raises, whatever it is given; it is cheap for
ASCII names (one regular expression) and checks other names character by character.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["ASCII_ROOM_NAME", "MAX_ROOM_NAME_LENGTH", "ROOM_NAME_RULE", "valid_room_name"]

MAX_ROOM_NAME_LENGTH: Final = 64
ROOM_NAME_RULE: Final = (
    f"1-{MAX_ROOM_NAME_LENGTH} letters, marks, digits or '_', '.', ':', '-' "
    "(no spaces, symbols, control or format characters)"
)
"""The rule in words, for error messages."""

ASCII_ROOM_NAME: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
"""The rule for ASCII strings as one pattern: ``fullmatch`` succeeds exactly for the ASCII
room names (for quick checks inlined on hot paths; other names need :func:`valid_room_name`)."""
_PUNCTUATION = frozenset("_.:-")
_CATEGORIES = frozenset("LMN")  # first letter of the Unicode general category


def valid_room_name(name: object) -> bool:
    """Whether ``name`` is a room name under the rule of this module."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_ROOM_NAME_LENGTH:
        return False
    if name.isascii():
        return ASCII_ROOM_NAME.fullmatch(name) is not None
    return all(ch in _PUNCTUATION or unicodedata.category(ch)[0] in _CATEGORIES for ch in name)
