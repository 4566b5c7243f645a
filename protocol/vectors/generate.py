"""Generate the protocol v1 test vectors: valid, refused (``invalid*.json``) and edge cases.

Run from the repository root::

    python protocol/vectors/generate.py          # rewrite the files
    python protocol/vectors/generate.py --check  # exit 1 if the files are out of date

Every vector in ``v1.json`` pairs one message with its exact bytes in both codecs, so a
client library in any language can check its encoder byte for byte and its decoder value
for value. ``invalid.json`` lists payloads a decoder of client messages must refuse, with
the error class the reference decoder raises and what a server in its default
configuration does with it (``outcome``: the 4096-byte message size limit comes first);
``invalid_server.json`` does the same for a decoder of server messages (what a client
library must refuse). ``edge.json`` lists accepted payloads a plain encoder would never
write (repeated keys, the deepest nesting allowed, ``ep`` without ``off``) with the
message the reference decoder makes of them. The files are generated, never edited:
``tests/test_protocol_vectors.py`` fails when they drift from this script.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import msgpack

from protocol.codec import JSON, MSGPACK, Codec
from protocol.errors import ProtocolError
from protocol.messages import (
    Ack,
    Batch,
    Buy,
    BuyResult,
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
    Pinned,
    Pong,
    Product,
    Purchase,
    Refresh,
    Refreshed,
    SaleClosed,
    SaleInfo,
    SaleOpened,
    SendComment,
    SoldOut,
    Stock,
    SystemMessage,
    Unpinned,
    Viewers,
    Welcome,
)
from protocol.wire import to_wire

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "EDGE",
    "INVALID",
    "INVALID_SERVER",
    "VALID",
    "main",
    "outcome",
    "render_edge",
    "render_invalid",
    "render_invalid_server",
    "render_valid",
]

HERE = Path(__file__).resolve().parent
VALID_PATH = HERE / "v1.json"
INVALID_PATH = HERE / "invalid.json"
INVALID_SERVER_PATH = HERE / "invalid_server.json"
EDGE_PATH = HERE / "edge.json"

DEFAULT_MAX_MESSAGE_SIZE = 4096  # bytes: a server's default client message limit (SPEC §12)
MAX_DEPTH = 1024  # nested containers both reference decoders accept, the message map included

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

SALE_ID = "s-77"
PRODUCT = Product(
    id="p-1001",
    title="限时秒杀 iPhone 15 Pro 256G",
    price=599900,
    currency="CNY",
    image="https://img.example.com/p/1001.jpg",
    extra=(("颜色", "黑色钛金属"), ("stars", 5), ("包邮", True), ("discount", -500)),
)
PRODUCT_MIN = Product(id="p-2", title="T恤 🔥", price=0)
SALE = SaleInfo(
    id=SALE_ID,
    product_id=PRODUCT.id,
    price=499900,
    limit=2,
    stock=100,
    remaining=100,
    starts=NOW + 60_000,
    ends=NOW + 660_000,
    status="scheduled",
)
SALE_OPEN = replace(SALE, remaining=37, status="open")
SYSTEM = SystemMessage(id="m-1", text="欢迎来到直播间！8点整开抢 🎉", ts=NOW + 4, offset=4)
PINNED = Pinned(product=PRODUCT, ts=NOW + 5, offset=5)
SALE_OPENED = SaleOpened(sale=SALE, ts=NOW + 6, offset=6)
PURCHASE = Purchase(sale_id=SALE_ID, name="小*", qty=2, ts=NOW + 60_007, offset=7)
SOLD_OUT = SoldOut(sale_id=SALE_ID, ts=NOW + 60_008, offset=8)
SALE_CLOSED = SaleClosed(sale_id=SALE_ID, reason="sold_out", ts=NOW + 60_009, offset=9)
UNPINNED = Unpinned(product_id=PRODUCT.id, ts=NOW + 60_010, offset=10)

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
    ("buy_default_qty_string_rid", "client", Buy(room=ROOM, sale=SALE_ID, rid="b-7f3a9c")),
    ("buy_qty_int_rid", "client", Buy(room=ROOM, sale=SALE_ID, qty=2, rid=11)),
    (
        "buy_max_qty_uuid_rid",
        "client",
        Buy(room=ROOM, sale=SALE_ID, qty=100, rid="3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b"),
    ),
    ("buy_zero_rid", "client", Buy(room="直播间-1", sale="秒杀-1", rid=0)),
    ("refresh", "client", Refresh(token="v1.eyJ1aWQiOiJ1LTEwMDEifQ.c2lnbmF0dXJl")),
    ("refresh_string_rid", "client", Refresh(token="v1.e30.c2ln", rid="r-1")),
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
        "welcome_with_token_expiry",
        "server",
        Welcome(
            session="s-8f2d",
            user_id="u-1001",
            name="小明",
            role="viewer",
            heartbeat_ms=20000,
            server_time=NOW,
            expires=NOW + 3_600_000,
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
    (
        "joined_with_pin_and_sale_int_rid",
        "server",
        Joined(
            room=ROOM,
            epoch=EPOCH,
            offset=7,
            viewers=52000,
            likes=1_200_000,
            resync=False,
            recent=(SYSTEM, PINNED, SALE_OPENED, PURCHASE),
            pin=PRODUCT,
            sale=SALE_OPEN,
            rid=1,
        ),
    ),
    (
        "joined_with_minimal_pin_no_sale",
        "server",
        Joined(
            room=ROOM,
            epoch=EPOCH,
            offset=0,
            viewers=3,
            likes=0,
            resync=True,
            recent=(),
            pin=PRODUCT_MIN,
        ),
    ),
    (
        "joined_with_sale_no_pin_string_rid",
        "server",
        Joined(
            room=ROOM,
            epoch=EPOCH,
            offset=0,
            viewers=3,
            likes=0,
            resync=False,
            recent=(),
            sale=replace(SALE, remaining=0, status="sold_out"),
            rid="j-2",
        ),
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
    (
        "batch_flash_sale_lifecycle",
        "server",
        Batch(
            room=ROOM,
            events=(
                SYSTEM,
                PINNED,
                SALE_OPENED,
                Stock(sale_id=SALE_ID, remaining=98),
                PURCHASE,
                SOLD_OUT,
                Stock(sale_id=SALE_ID, remaining=0),
                SALE_CLOSED,
                UNPINNED,
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
    (
        "buy_result_ok",
        "server",
        BuyResult(rid="b-7f3a9c", sale=SALE_ID, status="ok", order="s-77-1", qty=1, remaining=99),
    ),
    (
        "buy_result_sold_out_int_rid",
        "server",
        BuyResult(rid=11, sale=SALE_ID, status="sold_out", qty=2, remaining=0, msg="已抢光"),
    ),
    (
        "buy_result_limit_reached",
        "server",
        BuyResult(
            rid="b-2",
            sale=SALE_ID,
            status="limit_reached",
            qty=2,
            remaining=37,
            msg="at most 2 per user",
        ),
    ),
    (
        "buy_result_not_open",
        "server",
        BuyResult(rid="b-3", sale=SALE_ID, status="not_open", msg="the sale has not started"),
    ),
    (
        "buy_result_error_unknown_sale",
        "server",
        BuyResult(rid="b-4", sale="s-404", status="error", msg="unknown sale"),
    ),
    (
        "buy_result_error_try_again",
        "server",
        BuyResult(rid=BIG, sale=SALE_ID, status="error", qty=1, msg="try again"),
    ),
    ("buy_result_minimal", "server", BuyResult(rid=0, sale=SALE_ID, status="sold_out")),
    ("refreshed", "server", Refreshed(expires=NOW + 7_200_000)),
    ("refreshed_string_rid", "server", Refreshed(expires=NOW + 7_200_000, rid="r-1")),
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
    ("event_system", "event", SYSTEM),
    (
        "event_system_empty_text_big_ints",
        "event",
        SystemMessage(id="m-big", text="", ts=BIG, offset=BIG),
    ),
    ("event_pinned_product_with_every_extra_type", "event", PINNED),
    ("event_pinned_minimal_product", "event", Pinned(product=PRODUCT_MIN, ts=NOW, offset=1)),
    (
        "event_pinned_product_empty_extra",
        "event",
        Pinned(product=replace(PRODUCT_MIN, extra=()), ts=NOW, offset=2),
    ),
    ("event_unpinned", "event", UNPINNED),
    ("event_sale_opened_scheduled", "event", SALE_OPENED),
    ("event_sale_opened_open", "event", SaleOpened(sale=SALE_OPEN, ts=NOW + 7, offset=7)),
    ("event_sale_closed_sold_out", "event", SALE_CLOSED),
    (
        "event_sale_closed_by_host",
        "event",
        SaleClosed(sale_id=SALE_ID, reason="closed", ts=NOW + 9, offset=9),
    ),
    (
        "event_sale_closed_ended",
        "event",
        SaleClosed(sale_id=SALE_ID, reason="ended", ts=SALE.ends, offset=9),
    ),
    ("event_sold_out", "event", SOLD_OUT),
    ("event_purchase", "event", PURCHASE),
    (
        "event_purchase_empty_name",
        "event",
        Purchase(sale_id=SALE_ID, name="", qty=1, ts=NOW, offset=8),
    ),
    ("event_stock", "event", Stock(sale_id=SALE_ID, remaining=37)),
    ("event_stock_zero", "event", Stock(sale_id=SALE_ID, remaining=0)),
]


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _j(text: str) -> bytes:
    return text.encode("utf-8")


def _without(wire: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in wire.items() if k != key}


BUY_WIRE = to_wire(Buy(room=ROOM, sale=SALE_ID, qty=1, rid="b-1"))
PING_HEAD = b"\x82\xa1t\xa4ping\xa1x"  # msgpack {"t": "ping", "x": …} up to the value of x


def _jd(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _both(name: str, obj: Any, error: str) -> list[tuple[str, str, bytes, str]]:
    """The same invalid map in both codecs."""
    return [(name, "msgpack", _pack(obj), error), (name, "json", _jd(obj), error)]


def _nested(depth: int) -> tuple[bytes, bytes]:
    """A ``ping`` whose unknown key ``x`` holds nested arrays: ``depth`` containers in all."""
    arrays = depth - 1  # the message map is the first container
    packed = PING_HEAD + b"\x91" * (arrays - 1) + b"\x90"
    text = '{"t":"ping","x":' + "[" * arrays + "]" * arrays + "}"
    return packed, _j(text)


NESTED_MAX = _nested(MAX_DEPTH)
NESTED_OVER = _nested(MAX_DEPTH + 1)

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
    # msgpack: no bin or ext value anywhere, not even an empty one
    ("empty_bin_value", "msgpack", _pack({"t": "ping", "rid": b""}), "MalformedMessage"),
    ("empty_bin16_value", "msgpack", PING_HEAD + b"\xc5\x00\x00", "MalformedMessage"),
    ("empty_bin32_value", "msgpack", PING_HEAD + b"\xc6\x00\x00\x00\x00", "MalformedMessage"),
    ("empty_bin_map_key", "msgpack", _pack({"t": "ping", b"": 1}), "MalformedMessage"),
    ("empty_bin_under_unknown_key", "msgpack", _pack({"t": "ping", "x": b""}), "MalformedMessage"),
    (
        "empty_bin_nested_under_unknown_key",
        "msgpack",
        _pack({"t": "ping", "x": [1, {"y": [b""]}]}),
        "MalformedMessage",
    ),
    (
        "empty_bin_nested_map_key",
        "msgpack",
        _pack({"t": "ping", "x": [{b"": "y"}]}),
        "MalformedMessage",
    ),
    ("empty_ext8_value", "msgpack", PING_HEAD + b"\xc7\x00\x01", "MalformedMessage"),
    ("empty_ext8_timestamp_type", "msgpack", PING_HEAD + b"\xc7\x00\xff", "MalformedMessage"),
    ("fixext1_value", "msgpack", PING_HEAD + b"\xd4\x01\x00", "MalformedMessage"),
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
    ("nesting_1025_containers", "msgpack", NESTED_OVER[0], "MalformedMessage"),
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
    (
        "buy_result_from_client",
        "msgpack",
        _pack({"t": "buy_result", "rid": 1, "sale": "s-77", "status": "ok"}),
        "UnknownMessageType",
    ),
    (
        "buy_type_is_case_sensitive",
        "msgpack",
        _pack({**BUY_WIRE, "t": "Buy"}),
        "UnknownMessageType",
    ),
    # msgpack: known type, invalid field
    ("join_missing_room", "msgpack", _pack({"t": "join"}), "InvalidField"),
    ("join_room_nil", "msgpack", _pack({"t": "join", "room": None}), "InvalidField"),
    ("join_room_empty", "msgpack", _pack({"t": "join", "room": ""}), "InvalidField"),
    ("join_room_65_chars", "msgpack", _pack({"t": "join", "room": "r" * 65}), "InvalidField"),
    ("join_room_integer", "msgpack", _pack({"t": "join", "room": 42}), "InvalidField"),
    ("join_room_array", "msgpack", _pack({"t": "join", "room": [ROOM]}), "InvalidField"),
    # join.room follows the room-name rule (SPEC §4.9); other commands check 1..64 only
    *_both("join_room_with_space", {"t": "join", "room": "live 42"}, "InvalidField"),
    *_both("join_room_with_slash", {"t": "join", "room": "live/42"}, "InvalidField"),
    *_both("join_room_with_nul", {"t": "join", "room": "live\x0042"}, "InvalidField"),
    *_both("join_room_with_rlo_u202e", {"t": "join", "room": "live\u202e42"}, "InvalidField"),
    *_both("join_room_with_lrm_u200e", {"t": "join", "room": "\u200elive-42"}, "InvalidField"),
    *_both("join_room_emoji", {"t": "join", "room": "直播🔥"}, "InvalidField"),
    *_both("join_room_with_hash_tag_braces", {"t": "join", "room": "{live}-42"}, "InvalidField"),
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
        "MalformedMessage",
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
    ("buy_missing_rid", "msgpack", _pack(_without(BUY_WIRE, "rid")), "InvalidField"),
    ("buy_rid_nil", "msgpack", _pack({**BUY_WIRE, "rid": None}), "InvalidField"),
    ("buy_rid_empty_string", "msgpack", _pack({**BUY_WIRE, "rid": ""}), "InvalidField"),
    ("buy_rid_65_chars", "msgpack", _pack({**BUY_WIRE, "rid": "r" * 65}), "InvalidField"),
    ("buy_rid_true", "msgpack", _pack({**BUY_WIRE, "rid": True}), "InvalidField"),
    ("buy_missing_room", "msgpack", _pack(_without(BUY_WIRE, "room")), "InvalidField"),
    ("buy_missing_sale", "msgpack", _pack(_without(BUY_WIRE, "sale")), "InvalidField"),
    ("buy_sale_empty", "msgpack", _pack({**BUY_WIRE, "sale": ""}), "InvalidField"),
    ("buy_sale_65_chars", "msgpack", _pack({**BUY_WIRE, "sale": "s" * 65}), "InvalidField"),
    ("buy_sale_integer", "msgpack", _pack({**BUY_WIRE, "sale": 77}), "InvalidField"),
    ("buy_qty_zero", "msgpack", _pack({**BUY_WIRE, "qty": 0}), "InvalidField"),
    ("buy_qty_101", "msgpack", _pack({**BUY_WIRE, "qty": 101}), "InvalidField"),
    ("buy_qty_negative", "msgpack", _pack({**BUY_WIRE, "qty": -1}), "InvalidField"),
    ("buy_qty_string", "msgpack", _pack({**BUY_WIRE, "qty": "2"}), "InvalidField"),
    *_both("refresh_missing_token", {"t": "refresh", "rid": 1}, "InvalidField"),
    *_both("refresh_token_empty", {"t": "refresh", "token": "", "rid": 1}, "InvalidField"),
    *_both("refresh_token_integer", {"t": "refresh", "token": 1}, "InvalidField"),
    # refused by the decoder, but a default server refuses its size first (outcome 1009)
    *_both("refresh_token_16385_chars", {"t": "refresh", "token": "t" * 16385}, "InvalidField"),
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
    ("nesting_1025_containers", "json", NESTED_OVER[1], "MalformedMessage"),
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
    ("buy_missing_rid", "json", _j('{"t":"buy","room":"live-42","sale":"s-77"}'), "InvalidField"),
    (
        "buy_rid_null",
        "json",
        _j('{"t":"buy","room":"live-42","sale":"s-77","rid":null}'),
        "InvalidField",
    ),
    (
        "buy_rid_empty_string",
        "json",
        _j('{"t":"buy","room":"live-42","sale":"s-77","rid":""}'),
        "InvalidField",
    ),
    (
        "buy_qty_zero",
        "json",
        _j('{"t":"buy","room":"live-42","sale":"s-77","qty":0,"rid":1}'),
        "InvalidField",
    ),
    (
        "buy_qty_101",
        "json",
        _j('{"t":"buy","room":"live-42","sale":"s-77","qty":101,"rid":1}'),
        "InvalidField",
    ),
    (
        "buy_qty_float",
        "json",
        _j('{"t":"buy","room":"live-42","sale":"s-77","qty":2.0,"rid":1}'),
        "InvalidField",
    ),
    (
        "buy_sale_null",
        "json",
        _j('{"t":"buy","room":"live-42","sale":null,"rid":1}'),
        "InvalidField",
    ),
]


JOINED_WIRE = to_wire(
    Joined(
        room=ROOM,
        epoch=EPOCH,
        offset=0,
        viewers=1,
        likes=0,
        resync=False,
        recent=(),
        pin=PRODUCT_MIN,
        sale=SALE,
    )
)
PIN_WIRE: dict[str, Any] = JOINED_WIRE["pin"]
SALE_WIRE: dict[str, Any] = JOINED_WIRE["sale"]
WELCOME_WIRE = to_wire(
    Welcome(session="s-1", user_id="u-1", name="", role="viewer", heartbeat_ms=1, server_time=NOW)
)
BUY_RESULT_WIRE = to_wire(
    BuyResult(rid="b-1", sale=SALE_ID, status="ok", order="s-77-1", qty=1, remaining=9)
)


def _pin(**changes: Any) -> dict[str, Any]:
    """A ``joined`` whose ``pin`` has ``changes`` (a value of None drops the key)."""
    pin = {k: v for k, v in {**PIN_WIRE, **changes}.items() if v is not None}
    return {**JOINED_WIRE, "pin": pin}


def _extra(extra: Any) -> dict[str, Any]:
    return _pin(extra=extra)


def _sale(**changes: Any) -> dict[str, Any]:
    sale = {k: v for k, v in {**SALE_WIRE, **changes}.items() if v is not None}
    return {**JOINED_WIRE, "sale": sale}


def _batch(*events: Any) -> dict[str, Any]:
    return {"t": "batch", "room": ROOM, "ev": list(events)}


# (name, codec, payload, error) that decode_server must refuse (what a client refuses).
INVALID_SERVER: list[tuple[str, str, bytes, str]] = [
    # not one well-formed message map
    ("top_level_array", "msgpack", _pack(["batch"]), "MalformedMessage"),
    ("top_level_array", "json", _j('["batch"]'), "MalformedMessage"),
    *_both("batch_event_without_t", _batch({"sale": SALE_ID, "remaining": 1}), "MalformedMessage"),
    *_both("batch_event_not_a_map", _batch("stock"), "MalformedMessage"),
    # unknown type
    *_both("client_type_from_server", BUY_WIRE, "UnknownMessageType"),
    *_both("unknown_type", {"t": "flash", "rid": 1}, "UnknownMessageType"),
    # buy_result
    *_both("buy_result_unknown_status", {**BUY_RESULT_WIRE, "status": "maybe"}, "InvalidField"),
    *_both(
        "buy_result_status_is_case_sensitive", {**BUY_RESULT_WIRE, "status": "OK"}, "InvalidField"
    ),
    *_both("buy_result_status_integer", {**BUY_RESULT_WIRE, "status": 0}, "InvalidField"),
    *_both("buy_result_missing_status", _without(BUY_RESULT_WIRE, "status"), "InvalidField"),
    *_both("buy_result_missing_rid", _without(BUY_RESULT_WIRE, "rid"), "InvalidField"),
    *_both("buy_result_missing_sale", _without(BUY_RESULT_WIRE, "sale"), "InvalidField"),
    *_both("buy_result_order_empty", {**BUY_RESULT_WIRE, "order": ""}, "InvalidField"),
    *_both("buy_result_msg_201_chars", {**BUY_RESULT_WIRE, "msg": "m" * 201}, "InvalidField"),
    *_both("buy_result_negative_remaining", {**BUY_RESULT_WIRE, "remaining": -1}, "InvalidField"),
    # joined.pin: a product card
    *_both("joined_pin_not_a_map", {**JOINED_WIRE, "pin": "p-2"}, "InvalidField"),
    *_both("joined_pin_missing_id", _pin(id=None), "InvalidField"),
    *_both("joined_pin_missing_title", _pin(title=None), "InvalidField"),
    *_both("joined_pin_title_empty", _pin(title=""), "InvalidField"),
    *_both("joined_pin_title_201_chars", _pin(title="限" * 201), "InvalidField"),
    *_both("joined_pin_price_negative", _pin(price=-1), "InvalidField"),
    *_both("joined_pin_price_string", _pin(price="9.90"), "InvalidField"),
    *_both("joined_pin_price_float", _pin(price=9.9), "InvalidField"),
    *_both("joined_pin_currency_4_chars", _pin(currency="CNYX"), "InvalidField"),
    *_both("joined_pin_image_1001_chars", _pin(image="h" * 1001), "InvalidField"),
    *_both("joined_pin_extra_not_a_map", _extra([["stars", 5]]), "InvalidField"),
    *_both("joined_pin_extra_33_entries", _extra({f"k{i}": i for i in range(33)}), "InvalidField"),
    *_both("joined_pin_extra_key_65_chars", _extra({"k" * 65: 1}), "InvalidField"),
    *_both("joined_pin_extra_float_value", _extra({"rating": 4.5}), "InvalidField"),
    *_both("joined_pin_extra_map_value", _extra({"size": {"w": 1}}), "InvalidField"),
    *_both("joined_pin_extra_array_value", _extra({"tags": ["a"]}), "InvalidField"),
    *_both("joined_pin_extra_value_2_pow_53", _extra({"n": 2**53}), "InvalidField"),
    *_both("joined_pin_extra_value_minus_2_pow_53", _extra({"n": -(2**53)}), "InvalidField"),
    *_both("joined_pin_extra_text_1001_chars", _extra({"note": "x" * 1001}), "InvalidField"),
    ("joined_pin_extra_bin_key", "msgpack", _pack(_extra({b"": 1})), "MalformedMessage"),
    ("joined_pin_extra_bin_value", "msgpack", _pack(_extra({"k": b""})), "MalformedMessage"),
    # welcome.exp and refreshed
    *_both("welcome_exp_negative", {**WELCOME_WIRE, "exp": -1}, "InvalidField"),
    *_both("welcome_exp_string", {**WELCOME_WIRE, "exp": "3600"}, "InvalidField"),
    *_both("refreshed_missing_exp", {"t": "refreshed", "rid": 1}, "InvalidField"),
    *_both("refreshed_exp_float", {"t": "refreshed", "exp": 1.5}, "InvalidField"),
    *_both("refreshed_exp_2_pow_53", {"t": "refreshed", "exp": 2**53}, "InvalidField"),
    # joined.sale: a sale snapshot
    *_both("joined_sale_not_a_map", {**JOINED_WIRE, "sale": [SALE_ID]}, "InvalidField"),
    *_both("joined_sale_unknown_status", _sale(status="paused"), "InvalidField"),
    *_both("joined_sale_missing_status", _sale(status=None), "InvalidField"),
    *_both("joined_sale_missing_pid", _sale(pid=None), "InvalidField"),
    *_both("joined_sale_limit_zero", _sale(limit=0), "InvalidField"),
    *_both("joined_sale_negative_remaining", _sale(remaining=-1), "InvalidField"),
    *_both("joined_sale_starts_float", _sale(starts=1.5), "InvalidField"),
    # room events
    *_both(
        "batch_pinned_missing_product",
        _batch({"t": "pinned", "ts": NOW, "off": 1}),
        "InvalidField",
    ),
    *_both(
        "batch_pinned_product_price_negative",
        _batch({"t": "pinned", "product": {**PIN_WIRE, "price": -1}, "ts": NOW, "off": 1}),
        "InvalidField",
    ),
    *_both(
        "batch_sale_opened_sale_nil",
        _batch({"t": "sale_opened", "sale": None, "ts": NOW, "off": 1}),
        "InvalidField",
    ),
    *_both(
        "batch_sale_closed_unknown_reason",
        _batch({"t": "sale_closed", "sale": SALE_ID, "reason": "paused", "ts": NOW, "off": 1}),
        "InvalidField",
    ),
    *_both(
        "batch_sold_out_missing_off",
        _batch({"t": "sold_out", "sale": SALE_ID, "ts": NOW}),
        "InvalidField",
    ),
    *_both(
        "batch_purchase_qty_zero",
        _batch({"t": "purchase", "sale": SALE_ID, "name": "小*", "qty": 0, "ts": NOW, "off": 1}),
        "InvalidField",
    ),
    *_both(
        "batch_purchase_name_65_chars",
        _batch({"t": "purchase", "sale": SALE_ID, "name": "n" * 65, "qty": 1, "ts": NOW, "off": 1}),
        "InvalidField",
    ),
    *_both(
        "batch_stock_negative_remaining",
        _batch({"t": "stock", "sale": SALE_ID, "remaining": -1}),
        "InvalidField",
    ),
    *_both("batch_stock_missing_sale", _batch({"t": "stock", "remaining": 1}), "InvalidField"),
    *_both(
        "batch_system_text_2001_chars",
        _batch({"t": "system", "id": "m-1", "text": "x" * 2001, "ts": NOW, "off": 1}),
        "InvalidField",
    ),
    *_both(
        "batch_unpinned_pid_empty",
        _batch({"t": "unpinned", "pid": "", "ts": NOW, "off": 1}),
        "InvalidField",
    ),
]


# (name, codec, payload) that decode_client accepts although no encoder of ours writes them.
EDGE: list[tuple[str, str, bytes]] = [
    # a repeated key: senders MUST NOT write one; a server takes the last value
    (
        "repeated_key_last_value_wins",
        "msgpack",
        b"\x84\xa1t\xa4like\xa4room\xa7live-42\xa1n\x01\xa1n\x03",
    ),
    ("repeated_key_last_value_wins", "json", _j('{"t":"like","room":"live-42","n":1,"n":3}')),
    (
        "repeated_rid_last_value_wins",
        "msgpack",
        b"\x83\xa1t\xa4ping\xa3rid\xa1a\xa3rid\x07",
    ),
    ("repeated_rid_last_value_wins", "json", _j('{"t":"ping","rid":"a","rid":7}')),
    # ep without off: ignored by the server, a fresh join (resync false)
    *[
        (name, codec, payload)
        for name, codec, payload, _ in _both(
            "join_epoch_without_offset", {"t": "join", "room": ROOM, "ep": EPOCH}, ""
        )
    ],
    # the deepest nesting allowed: 1024 containers, the message map included
    ("nesting_1024_containers", "msgpack", NESTED_MAX[0]),
    ("nesting_1024_containers", "json", NESTED_MAX[1]),
]

_CODECS: dict[str, Codec] = {"msgpack": MSGPACK, "json": JSON}


def outcome(codec: str, payload: bytes) -> str:
    """What a server in its default configuration does with an invalid client payload.

    The websocket layer refuses a message over the size limit before decoding it; any
    other payload gets what its decoding error says: ``close <code>`` or ``error <code>``.
    """
    if len(payload) > DEFAULT_MAX_MESSAGE_SIZE:
        return "close 1009"
    try:
        _CODECS[codec].decode_client(payload)
    except ProtocolError as exc:
        if exc.close_code is not None:
            return f"close {int(exc.close_code)}"
        return f"error {exc.code.value}"
    raise ValueError(f"{codec} payload {payload[:40]!r}… is not refused")


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
    """The text of ``invalid.json``: each vector with its ``outcome`` on a default server."""
    return _dump(
        [
            {
                "name": name,
                "codec": codec,
                "hex": payload.hex(),
                "error": error,
                "outcome": outcome(codec, payload),
            }
            for name, codec, payload, error in INVALID
        ]
    )


def render_invalid_server() -> str:
    """The text of ``invalid_server.json``."""
    return _dump(
        [
            {"name": name, "codec": codec, "hex": payload.hex(), "error": error}
            for name, codec, payload, error in INVALID_SERVER
        ]
    )


def render_edge() -> str:
    """The text of ``edge.json``: ``message`` is the wire map of what the decoder yields."""
    return _dump(
        [
            {
                "name": name,
                "codec": codec,
                "hex": payload.hex(),
                "message": to_wire(_CODECS[codec].decode_client(payload)),
            }
            for name, codec, payload in EDGE
        ]
    )


def main(argv: list[str]) -> int:
    """Write the files, or with ``--check`` report whether they are up to date."""
    check = "--check" in argv
    stale = []
    for path, text in (
        (VALID_PATH, render_valid()),
        (INVALID_PATH, render_invalid()),
        (INVALID_SERVER_PATH, render_invalid_server()),
        (EDGE_PATH, render_edge()),
    ):
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
