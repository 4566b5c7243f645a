"""Generate the protocol v1 test vectors: ``v1.json`` (valid) and ``invalid.json`` (refused).

Run from the repository root::

    python protocol/vectors/generate.py          # rewrite both files
    python protocol/vectors/generate.py --check  # exit 1 if the files are out of date

Every vector in ``v1.json`` pairs one message with its exact bytes in both codecs, so a
client library in any language can check its encoder byte for byte and its decoder value
for value. ``invalid.json`` lists payloads a decoder of client messages must refuse, with
the error class the reference decoder raises. The files are generated, never edited:
``tests/test_protocol_vectors.py`` fails when they drift from this script.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any, Literal

import msgpack

from protocol.codec import JSON, MSGPACK
from protocol.messages import (
    Ack,
    Batch,
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
    SendComment,
    Viewers,
    Welcome,
)
from protocol.wire import to_wire

__all__ = ["INVALID", "VALID", "main", "render_invalid", "render_valid"]

HERE = Path(__file__).resolve().parent
VALID_PATH = HERE / "v1.json"
INVALID_PATH = HERE / "invalid.json"

Direction = Literal["client", "server", "event"]

BIG = 2**53 - 1  # largest integer the protocol carries
ROOM = "live-42"
EPOCH = "k3x9q1"
NOW = 1732500000000  # unix milliseconds


def _comment(off: int, text: str, *, uid: str = "u-1001", name: str = "小明") -> Comment:
    return Comment(id=f"c{off}", user_id=uid, name=name, text=text, ts=NOW + off, offset=off)


C1 = _comment(1, "弹幕来了！这件多少钱？")
C2 = _comment(2, "🔥🔥 666 👍", uid="u-2002", name="Ana")
C3 = _comment(3, "hello", uid="u-3003", name="")

VALID: list[tuple[str, Direction, Message]] = [
    # client to server
    ("join_fresh", "client", Join(room=ROOM)),
    ("join_resume_int_rid", "client", Join(room=ROOM, offset=1234, epoch=EPOCH, rid=1)),
    ("join_unicode_room_string_rid", "client", Join(room="直播间-1", rid="j-1")),
    ("join_resume_from_zero", "client", Join(room=ROOM, offset=0, epoch=EPOCH)),
    ("leave", "client", Leave(room=ROOM)),
    ("leave_int_rid", "client", Leave(room=ROOM, rid=7)),
    ("comment_chinese_string_rid", "client", SendComment(room=ROOM, text=C1.text, rid="a1b2")),
    ("comment_emoji_int_rid", "client", SendComment(room=ROOM, text=C2.text, rid=2)),
    ("comment_without_rid", "client", SendComment(room=ROOM, text="hello")),
    ("comment_empty_text", "client", SendComment(room=ROOM, text="", rid=3)),
    ("comment_text_40_chars_str8", "client", SendComment(room=ROOM, text="a" * 40)),
    ("comment_text_300_chars_str16", "client", SendComment(room=ROOM, text="b" * 300)),
    ("comment_rid_64_chars", "client", SendComment(room=ROOM, text="x", rid="r" * 64)),
    ("like_default_count", "client", Like(room=ROOM)),
    ("like_max_count_biggest_rid", "client", Like(room=ROOM, count=100, rid=BIG)),
    ("like_smallest_rid", "client", Like(room=ROOM, count=5, rid=-BIG)),
    ("ping", "client", Ping()),
    ("ping_string_rid", "client", Ping(rid="p-1")),
    ("ping_zero_rid", "client", Ping(rid=0)),
    # server to client
    (
        "welcome",
        "server",
        Welcome(
            session="s-8f2c",
            user_id="u-1001",
            name="小明",
            role="viewer",
            heartbeat_ms=20000,
            server_time=NOW,
        ),
    ),
    (
        "welcome_anonymous",
        "server",
        Welcome(
            session="s-9",
            user_id="anon:s-9",
            name="anonymous",
            role="viewer",
            heartbeat_ms=20000,
            server_time=NOW,
        ),
    ),
    (
        "joined_fresh_empty_room",
        "server",
        Joined(room=ROOM, epoch=EPOCH, offset=0, viewers=1, likes=0, resync=False, recent=()),
    ),
    (
        "joined_resync_snapshot_int_rid",
        "server",
        Joined(
            room=ROOM,
            epoch=EPOCH,
            offset=3,
            viewers=1520,
            likes=98000,
            resync=True,
            recent=(C1, C2, C3),
            rid=1,
        ),
    ),
    (
        "joined_resumed_string_rid",
        "server",
        Joined(
            room=ROOM,
            epoch=EPOCH,
            offset=3,
            viewers=1520,
            likes=98000,
            resync=False,
            recent=(C3,),
            rid="j-1",
        ),
    ),
    (
        "joined_resumed_nothing_missed",
        "server",
        Joined(room=ROOM, epoch=EPOCH, offset=3, viewers=2, likes=7, resync=False, recent=()),
    ),
    ("left", "server", Left(room=ROOM)),
    ("left_int_rid", "server", Left(room=ROOM, rid=7)),
    ("batch_one_comment", "server", Batch(room=ROOM, events=(C1,))),
    (
        "batch_comments_and_conflated_counts",
        "server",
        Batch(room=ROOM, events=(C2, Likes(total=98001), C3, Viewers(count=1521))),
    ),
    ("batch_likes_only", "server", Batch(room=ROOM, events=(Likes(total=98002),))),
    (
        "batch_16_events_array16",
        "server",
        Batch(room=ROOM, events=tuple(_comment(100 + i, f"#{i}") for i in range(16))),
    ),
    (
        "batch_big_ints",
        "server",
        Batch(
            room=ROOM,
            events=(
                Comment(id="c-big", user_id="u-1", name="n", text="t", ts=BIG, offset=BIG),
                Likes(total=BIG),
                Viewers(count=0),
            ),
        ),
    ),
    ("ack_comment_string_rid", "server", Ack(rid="a1b2", offset=1235)),
    ("ack_like_int_rid", "server", Ack(rid=9)),
    ("ack_biggest_rid_offset", "server", Ack(rid=BIG, offset=BIG)),
    (
        "error_empty_comment_string_rid",
        "server",
        Error(code="empty_comment", message="comment is empty", rid="a1b2"),
    ),
    (
        "error_forbidden_room_int_rid",
        "server",
        Error(code="forbidden_room", message="token does not admit room 'vip'", rid=4),
    ),
    (
        "error_invalid_field_without_rid",
        "server",
        Error(code="invalid_field", message="rid: expected a string or an integer"),
    ),
    ("error_read_only_empty_message", "server", Error(code="read_only", message="", rid=5)),
    ("pong", "server", Pong(server_time=NOW)),
    ("pong_string_rid", "server", Pong(server_time=NOW, rid="p-1")),
    # room events, as they appear inside batch.ev and joined.recent
    ("event_comment_chinese", "event", C1),
    ("event_comment_emoji", "event", C2),
    ("event_comment_empty_name", "event", C3),
    (
        "event_comment_big_ints",
        "event",
        Comment(id="c-big", user_id="u-1", name="n", text="t", ts=BIG, offset=BIG),
    ),
    ("event_likes", "event", Likes(total=98000)),
    ("event_likes_zero", "event", Likes(total=0)),
    ("event_viewers", "event", Viewers(count=1520)),
]


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _j(text: str) -> bytes:
    return text.encode("utf-8")


# (name, codec, payload, error) that decode_client must refuse.
INVALID: list[tuple[str, str, bytes, str]] = [
    # msgpack: not one well-formed message map
    ("empty_payload", "msgpack", b"", "MalformedMessage"),
    ("truncated_map", "msgpack", _pack({"t": "ping"})[:-2], "MalformedMessage"),
    ("trailing_bytes", "msgpack", _pack({"t": "ping"}) + b"\xc0", "MalformedMessage"),
    ("two_messages_in_one_frame", "msgpack", _pack({"t": "ping"}) * 2, "MalformedMessage"),
    ("reserved_byte_c1", "msgpack", b"\xc1", "MalformedMessage"),
    ("top_level_array", "msgpack", _pack(["ping"]), "MalformedMessage"),
    ("top_level_string", "msgpack", _pack("ping"), "MalformedMessage"),
    ("top_level_nil", "msgpack", _pack(None), "MalformedMessage"),
    ("map_without_t", "msgpack", _pack({"room": ROOM}), "MalformedMessage"),
    ("t_is_integer", "msgpack", _pack({"t": 1}), "MalformedMessage"),
    ("t_is_nil", "msgpack", _pack({"t": None}), "MalformedMessage"),
    ("t_is_bin", "msgpack", _pack({"t": b"ping"}), "MalformedMessage"),
    ("integer_map_key", "msgpack", _pack({"t": "ping", 1: 2}), "MalformedMessage"),
    ("invalid_utf8_string", "msgpack", b"\x81\xa1t\xa2\xff\xfe", "MalformedMessage"),
    (
        "bin_field_value",
        "msgpack",
        _pack({"t": "comment", "room": ROOM, "text": b"hi"}),
        "MalformedMessage",
    ),
    (
        "ext_field_value",
        "msgpack",
        _pack({"t": "comment", "room": ROOM, "text": msgpack.ExtType(1, b"hi")}),
        "MalformedMessage",
    ),
    (
        "timestamp_ext_field_value",
        "msgpack",
        _pack({"t": "ping", "rid": msgpack.Timestamp(1, 0)}),
        "MalformedMessage",
    ),
    ("array32_header_claims_4g_items", "msgpack", b"\xdd\xff\xff\xff\xff", "MalformedMessage"),
    ("map32_header_claims_4g_pairs", "msgpack", b"\xdf\xff\xff\xff\xff", "MalformedMessage"),
    ("str32_header_claims_4g_bytes", "msgpack", b"\xdb\xff\xff\xff\xff", "MalformedMessage"),
    (
        "array_over_4096_items",
        "msgpack",
        b"\x82\xa1t\xa4ping\xa1x\xdc" + struct.pack(">H", 4097) + b"\xc0" * 4097,
        "MalformedMessage",
    ),
    ("nesting_deeper_than_decoder_stack", "msgpack", b"\x91" * 1100 + b"\xc0", "MalformedMessage"),
    # msgpack: unknown type
    ("unknown_type", "msgpack", _pack({"t": "shout", "rid": 1}), "UnknownMessageType"),
    ("empty_type", "msgpack", _pack({"t": ""}), "UnknownMessageType"),
    ("server_type_from_client", "msgpack", _pack({"t": "welcome"}), "UnknownMessageType"),
    (
        "batch_from_client",
        "msgpack",
        _pack({"t": "batch", "room": ROOM, "ev": []}),
        "UnknownMessageType",
    ),
    ("type_names_are_case_sensitive", "msgpack", _pack({"t": "PING"}), "UnknownMessageType"),
    # msgpack: known type, invalid field
    ("join_missing_room", "msgpack", _pack({"t": "join"}), "InvalidField"),
    ("join_room_nil", "msgpack", _pack({"t": "join", "room": None}), "InvalidField"),
    ("join_room_empty", "msgpack", _pack({"t": "join", "room": ""}), "InvalidField"),
    ("join_room_65_chars", "msgpack", _pack({"t": "join", "room": "r" * 65}), "InvalidField"),
    ("join_room_integer", "msgpack", _pack({"t": "join", "room": 42}), "InvalidField"),
    ("join_room_array", "msgpack", _pack({"t": "join", "room": [ROOM]}), "InvalidField"),
    (
        "join_negative_offset",
        "msgpack",
        _pack({"t": "join", "room": ROOM, "off": -1}),
        "InvalidField",
    ),
    (
        "join_offset_2_pow_53",
        "msgpack",
        _pack({"t": "join", "room": ROOM, "off": 2**53}),
        "InvalidField",
    ),
    (
        "join_offset_uint64_max",
        "msgpack",
        _pack({"t": "join", "room": ROOM, "off": 2**64 - 1}),
        "InvalidField",
    ),
    (
        "join_offset_float",
        "msgpack",
        _pack({"t": "join", "room": ROOM, "off": 1.0}),
        "InvalidField",
    ),
    ("join_epoch_empty", "msgpack", _pack({"t": "join", "room": ROOM, "ep": ""}), "InvalidField"),
    (
        "join_epoch_33_chars",
        "msgpack",
        _pack({"t": "join", "room": ROOM, "ep": "e" * 33}),
        "InvalidField",
    ),
    ("leave_missing_room", "msgpack", _pack({"t": "leave", "rid": 1}), "InvalidField"),
    ("comment_missing_text", "msgpack", _pack({"t": "comment", "room": ROOM}), "InvalidField"),
    (
        "comment_text_integer",
        "msgpack",
        _pack({"t": "comment", "room": ROOM, "text": 5}),
        "InvalidField",
    ),
    (
        "comment_text_2001_chars",
        "msgpack",
        _pack({"t": "comment", "room": ROOM, "text": "a" * 2001}),
        "InvalidField",
    ),
    (
        "comment_text_empty_bin",
        "msgpack",
        _pack({"t": "comment", "room": ROOM, "text": b""}),
        "InvalidField",
    ),
    ("like_count_zero", "msgpack", _pack({"t": "like", "room": ROOM, "n": 0}), "InvalidField"),
    ("like_count_101", "msgpack", _pack({"t": "like", "room": ROOM, "n": 101}), "InvalidField"),
    ("like_count_true", "msgpack", _pack({"t": "like", "room": ROOM, "n": True}), "InvalidField"),
    ("like_count_string", "msgpack", _pack({"t": "like", "room": ROOM, "n": "1"}), "InvalidField"),
    ("ping_rid_65_chars", "msgpack", _pack({"t": "ping", "rid": "r" * 65}), "InvalidField"),
    ("ping_rid_2_pow_53", "msgpack", _pack({"t": "ping", "rid": 2**53}), "InvalidField"),
    ("ping_rid_minus_2_pow_53", "msgpack", _pack({"t": "ping", "rid": -(2**53)}), "InvalidField"),
    ("ping_rid_true", "msgpack", _pack({"t": "ping", "rid": True}), "InvalidField"),
    ("ping_rid_float", "msgpack", _pack({"t": "ping", "rid": 1.5}), "InvalidField"),
    ("ping_rid_map", "msgpack", _pack({"t": "ping", "rid": {}}), "InvalidField"),
    # json: not one well-formed message object
    ("empty_payload", "json", b"", "MalformedMessage"),
    ("not_json", "json", _j("ping"), "MalformedMessage"),
    ("truncated_object", "json", _j('{"t":"ping"'), "MalformedMessage"),
    ("trailing_comma", "json", _j('{"t":"ping",}'), "MalformedMessage"),
    ("two_messages_in_one_frame", "json", _j('{"t":"ping"}{"t":"ping"}'), "MalformedMessage"),
    ("single_quotes", "json", _j("{'t':'ping'}"), "MalformedMessage"),
    ("nan_literal", "json", _j('{"t":"ping","rid":NaN}'), "MalformedMessage"),
    ("invalid_utf8", "json", b'{"t":"comment","room":"r","text":"\xff"}', "MalformedMessage"),
    ("lone_surrogate_escape", "json", _j('{"t":"ping","rid":"\\ud800"}'), "MalformedMessage"),
    ("top_level_array", "json", _j('["ping"]'), "MalformedMessage"),
    ("top_level_null", "json", _j("null"), "MalformedMessage"),
    ("object_without_t", "json", _j('{"room":"live-42"}'), "MalformedMessage"),
    ("t_is_number", "json", _j('{"t":1}'), "MalformedMessage"),
    ("nesting_deeper_than_decoder_stack", "json", _j("[" * 1100 + "]" * 1100), "MalformedMessage"),
    # json: unknown type
    ("unknown_type", "json", _j('{"t":"shout","rid":"s-1"}'), "UnknownMessageType"),
    ("server_type_from_client", "json", _j('{"t":"ack","rid":1}'), "UnknownMessageType"),
    # json: known type, invalid field
    ("like_count_float", "json", _j('{"t":"like","room":"live-42","n":1.0}'), "InvalidField"),
    ("like_count_exponent", "json", _j('{"t":"like","room":"live-42","n":1e1}'), "InvalidField"),
    ("like_count_true", "json", _j('{"t":"like","room":"live-42","n":true}'), "InvalidField"),
    (
        "join_offset_beyond_uint64",
        "json",
        _j('{"t":"join","room":"live-42","off":18446744073709551616}'),
        "InvalidField",
    ),
    ("ping_rid_2_pow_53", "json", _j('{"t":"ping","rid":9007199254740992}'), "InvalidField"),
    ("ping_rid_array", "json", _j('{"t":"ping","rid":[1]}'), "InvalidField"),
    (
        "comment_text_null",
        "json",
        _j('{"t":"comment","room":"live-42","text":null}'),
        "InvalidField",
    ),
    ("comment_room_object", "json", _j('{"t":"comment","room":{},"text":"hi"}'), "InvalidField"),
]


def _dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def render_valid() -> str:
    """The text of ``v1.json``."""
    out = []
    for name, direction, message in VALID:
        out.append(
            {
                "name": name,
                "direction": direction,
                "message": to_wire(message),
                "msgpack_hex": MSGPACK.encode(message).hex(),
                "json": JSON.encode(message).decode("utf-8"),
            }
        )
    return _dump(out)


def render_invalid() -> str:
    """The text of ``invalid.json``."""
    return _dump(
        [
            {"name": name, "codec": codec, "hex": payload.hex(), "error": error}
            for name, codec, payload, error in INVALID
        ]
    )


def main(argv: list[str]) -> int:
    """Write both files, or with ``--check`` report whether they are up to date."""
    check = "--check" in argv
    stale = []
    for path, text in ((VALID_PATH, render_valid()), (INVALID_PATH, render_invalid())):
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path.name)
        if not check:
            path.write_text(text, encoding="utf-8")
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run python {Path(__file__).as_posix()}")
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale and not check else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
