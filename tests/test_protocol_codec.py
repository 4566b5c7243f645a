"""Protocol v1 codecs: what SPEC.md promises, one behaviour per test, plus properties.

Unit tests pin single rules (bounds, types, error classes, splicing); hypothesis checks
that every valid message round-trips through both codecs, that spliced batches equal
full encodings, and that no input whatsoever makes a decoder raise anything but
:class:`ProtocolError`.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    DEFAULT_SUBPROTOCOL,
    JSON,
    MSGPACK,
    Ack,
    Batch,
    Buy,
    BuyResult,
    CloseCode,
    Codec,
    Comment,
    Error,
    ErrorCode,
    InvalidField,
    Join,
    Joined,
    Leave,
    Left,
    Like,
    Likes,
    MalformedMessage,
    Ping,
    Pinned,
    Pong,
    Product,
    ProtocolError,
    Purchase,
    Refresh,
    Refreshed,
    RoomEvent,
    SaleClosed,
    SaleInfo,
    SaleOpened,
    SendComment,
    SoldOut,
    Stock,
    SystemMessage,
    UnknownMessageType,
    Unpinned,
    Viewers,
    Welcome,
    codec_for,
)
from protocol.messages import (
    BUY_STATUSES,
    CLIENT_TYPES,
    MAX_INT,
    MAX_TOKEN_LENGTH,
    ROOM_EVENT_TYPES,
    SALE_CLOSE_REASONS,
    SALE_STATUSES,
    SERVER_TYPES,
    Field,
)
from protocol.names import ROOM_NAME_RULE
from protocol.wire import event_from_wire, to_wire

CODECS = [MSGPACK, JSON]
codecs = pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ROOM = "live-42"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def dumps(codec: Codec, obj: Any) -> bytes:
    """Serialise a plain map with ``codec``, bypassing the typed encoder."""
    return pack(obj) if codec is MSGPACK else orjson.dumps(obj)


def comment(off: int = 1, text: str = "弹幕") -> Comment:
    return Comment(id=f"c{off}", user_id="u-1", name="小明", text=text, ts=1_000 + off, offset=off)


def joined(
    recent: tuple[RoomEvent, ...] = (),
    rid: str | int | None = None,
    *,
    pin: Product | None = None,
    sale: SaleInfo | None = None,
) -> Joined:
    return Joined(
        room=ROOM,
        epoch="e1",
        offset=9,
        viewers=3,
        likes=4,
        resync=True,
        recent=recent,
        pin=pin,
        sale=sale,
        rid=rid,
    )


PRODUCT = Product(
    id="p-1",
    title="限时秒杀 iPhone",
    price=599900,
    currency="CNY",
    image="https://img.example.com/1.jpg",
    extra=(("颜色", "黑"), ("stars", 5), ("包邮", True), ("delta", -3), ("one", 1)),
)
SALE = SaleInfo(
    id="s-1",
    product_id="p-1",
    price=499900,
    limit=2,
    stock=100,
    remaining=37,
    starts=1_000,
    ends=2_000,
    status="open",
)
BUY = {"t": "buy", "room": ROOM, "sale": "s-1", "qty": 1, "rid": "b-1"}


# --- negotiation -------------------------------------------------------------------


def test_no_subprotocol_means_msgpack() -> None:
    assert codec_for(None) is MSGPACK
    assert DEFAULT_SUBPROTOCOL == "liveroom.v1.msgpack"


def test_subprotocol_names_select_codec_and_frame_opcode() -> None:
    assert codec_for("liveroom.v1.msgpack") is MSGPACK and MSGPACK.binary
    assert codec_for("liveroom.v1.json") is JSON and not JSON.binary


def test_unknown_subprotocol_has_no_codec() -> None:
    with pytest.raises(KeyError):
        codec_for("liveroom.v2.msgpack")


# --- the envelope ------------------------------------------------------------------


def test_wire_map_puts_t_first_and_leaves_out_absent_optionals() -> None:
    assert list(to_wire(Join(room=ROOM))) == ["t", "room"]
    assert list(to_wire(Join(room=ROOM, offset=0, epoch="e", rid=0))) == [
        "t",
        "room",
        "off",
        "ep",
        "rid",
    ]


def test_like_count_defaults_to_one_and_is_always_sent() -> None:
    assert to_wire(Like(room=ROOM)) == {"t": "like", "room": ROOM, "n": 1}
    assert MSGPACK.decode_client(pack({"t": "like", "room": ROOM})) == Like(room=ROOM, count=1)


@codecs
def test_null_is_the_same_as_an_absent_key(codec: Codec) -> None:
    data = dumps(codec, {"t": "join", "room": ROOM, "off": None, "ep": None, "rid": None})
    assert codec.decode_client(data) == Join(room=ROOM)


@codecs
def test_null_required_field_is_missing(codec: Codec) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {"t": "comment", "room": ROOM, "text": None}))
    assert info.value.field == "text"


@codecs
def test_unknown_keys_are_ignored(codec: Codec) -> None:
    data = dumps(codec, {"t": "ping", "rid": 1, "future": {"nested": [1, 2.5, None]}})
    assert codec.decode_client(data) == Ping(rid=1)


@codecs
def test_unknown_keys_inside_events_are_ignored(codec: Codec) -> None:
    ev = {**to_wire(comment()), "badge": "vip"}
    data = dumps(codec, {"t": "batch", "room": ROOM, "ev": [ev]})
    assert codec.decode_server(data) == Batch(room=ROOM, events=(comment(),))


@codecs
def test_key_order_does_not_matter(codec: Codec) -> None:
    data = dumps(codec, {"rid": "x", "room": ROOM, "t": "leave"})
    assert codec.decode_client(data) == Leave(room=ROOM, rid="x")


# --- errors: which class, which close code, which rid ---------------------------------


@codecs
def test_unknown_type_raises_unknown_message_type_with_rid(codec: Codec) -> None:
    with pytest.raises(UnknownMessageType) as info:
        codec.decode_client(dumps(codec, {"t": "shout", "rid": "r-1"}))
    assert info.value.rid == "r-1"
    assert info.value.close_code is CloseCode.UNKNOWN_TYPE
    assert int(CloseCode.UNKNOWN_TYPE) == 4003


@codecs
def test_server_message_types_are_unknown_to_decode_client(codec: Codec) -> None:
    for t in SERVER_TYPES.keys() - CLIENT_TYPES.keys():
        with pytest.raises(UnknownMessageType):
            codec.decode_client(dumps(codec, {"t": t}))


@codecs
def test_client_message_types_are_unknown_to_decode_server(codec: Codec) -> None:
    for t in CLIENT_TYPES.keys() - SERVER_TYPES.keys():
        with pytest.raises(UnknownMessageType):
            codec.decode_server(dumps(codec, {"t": t}))


@codecs
def test_type_names_are_case_sensitive(codec: Codec) -> None:
    with pytest.raises(UnknownMessageType):
        codec.decode_client(dumps(codec, {"t": "Ping"}))


@codecs
@pytest.mark.parametrize("obj", [[], "ping", 1, None, True, {"room": ROOM}, {"t": 1}])
def test_not_a_map_with_string_t_is_malformed_and_closes_1007(codec: Codec, obj: Any) -> None:
    with pytest.raises(MalformedMessage) as info:
        codec.decode_client(dumps(codec, obj))
    assert info.value.close_code is CloseCode.INVALID_PAYLOAD
    assert int(CloseCode.INVALID_PAYLOAD) == 1007


@codecs
def test_malformed_message_still_reports_a_readable_rid(codec: Codec) -> None:
    with pytest.raises(MalformedMessage) as info:
        codec.decode_client(dumps(codec, {"t": 5, "rid": 12}))
    assert info.value.rid == 12


@codecs
def test_invalid_field_keeps_connection_open_and_echoes_rid(codec: Codec) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {"t": "like", "room": ROOM, "n": 0, "rid": 5}))
    err = info.value
    assert (err.close_code, err.code, err.field, err.rid) == (None, ErrorCode.INVALID_FIELD, "n", 5)


@codecs
def test_missing_required_field_is_invalid_field_naming_the_wire_key(codec: Codec) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {"t": "join", "rid": "j"}))
    assert (info.value.field, info.value.rid) == ("room", "j")


@codecs
@pytest.mark.parametrize("rid", ["r" * 65, 2**53, -(2**53), True, 1.5, [1], {}])
def test_invalid_rid_is_invalid_field_without_rid(codec: Codec, rid: Any) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {"t": "ping", "rid": rid}))
    assert (info.value.field, info.value.rid) == ("rid", None)


@codecs
@pytest.mark.parametrize("rid", ["", "r" * 64, "请求-1", 0, 2**53 - 1, -(2**53 - 1)])
def test_rid_is_a_string_up_to_64_chars_or_a_53_bit_integer(codec: Codec, rid: Any) -> None:
    assert codec.decode_client(dumps(codec, {"t": "ping", "rid": rid})) == Ping(rid=rid)


def test_ack_requires_rid() -> None:
    with pytest.raises(InvalidField) as info:
        MSGPACK.decode_server(pack({"t": "ack", "off": 3}))
    assert info.value.field == "rid"


# --- field bounds and types -------------------------------------------------------------


@codecs
def test_comment_text_over_protocol_limit_is_invalid_field(codec: Codec) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {"t": "comment", "room": ROOM, "text": "a" * 2001}))
    assert info.value.field == "text"


@codecs
def test_comment_text_at_protocol_limit_is_accepted(codec: Codec) -> None:
    msg = codec.decode_client(dumps(codec, {"t": "comment", "room": ROOM, "text": "a" * 2000}))
    assert msg == SendComment(room=ROOM, text="a" * 2000)


@codecs
def test_text_length_counts_code_points_not_bytes_or_utf16_units(codec: Codec) -> None:
    # 2000 emoji: 2000 code points, 4000 UTF-16 units, 8000 UTF-8 bytes.
    ok = dumps(codec, {"t": "comment", "room": ROOM, "text": "🔥" * 2000})
    assert codec.decode_client(ok) == SendComment(room=ROOM, text="🔥" * 2000)
    with pytest.raises(InvalidField):
        codec.decode_client(dumps(codec, {"t": "comment", "room": ROOM, "text": "🔥" * 2001}))


@codecs
def test_empty_comment_text_is_valid_on_the_wire(codec: Codec) -> None:
    # Whether an empty or blank comment is refused (empty_comment) is the server's call.
    msg = codec.decode_client(dumps(codec, {"t": "comment", "room": ROOM, "text": " "}))
    assert msg == SendComment(room=ROOM, text=" ")


@codecs
@pytest.mark.parametrize(
    ("room", "ok"), [("r", True), ("r" * 64, True), ("", False), ("r" * 65, False)]
)
def test_room_is_1_to_64_chars(codec: Codec, room: str, ok: bool) -> None:
    data = dumps(codec, {"t": "join", "room": room})
    if ok:
        assert codec.decode_client(data) == Join(room=room)
    else:
        with pytest.raises(InvalidField):
            codec.decode_client(data)


@codecs
@pytest.mark.parametrize(("n", "ok"), [(1, True), (100, True), (0, False), (101, False)])
def test_like_count_is_1_to_100(codec: Codec, n: int, ok: bool) -> None:
    data = dumps(codec, {"t": "like", "room": ROOM, "n": n})
    if ok:
        assert codec.decode_client(data) == Like(room=ROOM, count=n)
    else:
        with pytest.raises(InvalidField):
            codec.decode_client(data)


@codecs
@pytest.mark.parametrize(
    ("ep", "ok"), [("e", True), ("e" * 32, True), ("", False), ("e" * 33, False)]
)
def test_epoch_is_1_to_32_chars(codec: Codec, ep: str, ok: bool) -> None:
    data = dumps(codec, {"t": "join", "room": ROOM, "off": 1, "ep": ep})
    if ok:
        assert codec.decode_client(data) == Join(room=ROOM, offset=1, epoch=ep)
    else:
        with pytest.raises(InvalidField):
            codec.decode_client(data)


@codecs
def test_bool_is_not_accepted_as_int(codec: Codec) -> None:
    for obj in (
        {"t": "like", "room": ROOM, "n": True},
        {"t": "join", "room": ROOM, "off": False},
        {"t": "ping", "rid": True},
    ):
        with pytest.raises(InvalidField):
            codec.decode_client(dumps(codec, obj))


@codecs
def test_int_is_not_accepted_as_bool(codec: Codec) -> None:
    wire = {**to_wire(joined()), "resync": 1}
    with pytest.raises(InvalidField) as info:
        codec.decode_server(dumps(codec, wire))
    assert info.value.field == "resync"


@codecs
def test_float_is_not_accepted_as_int_even_when_whole(codec: Codec) -> None:
    with pytest.raises(InvalidField):
        codec.decode_client(dumps(codec, {"t": "like", "room": ROOM, "n": 1.0}))


@codecs
def test_string_is_not_accepted_as_int(codec: Codec) -> None:
    with pytest.raises(InvalidField):
        codec.decode_client(dumps(codec, {"t": "join", "room": ROOM, "off": "1"}))


@codecs
def test_integers_are_0_to_2_pow_53_minus_1(codec: Codec) -> None:
    top = dumps(codec, {"t": "join", "room": ROOM, "off": MAX_INT})
    assert codec.decode_client(top) == Join(room=ROOM, offset=MAX_INT)
    for off in (MAX_INT + 1, -1, 2**64 - 1):
        with pytest.raises(InvalidField):
            codec.decode_client(dumps(codec, {"t": "join", "room": ROOM, "off": off}))


def test_json_integer_beyond_64_bits_is_invalid_field() -> None:
    with pytest.raises(InvalidField):
        JSON.decode_client(b'{"t":"join","room":"r","off":100000000000000000000}')


@codecs
@pytest.mark.parametrize(
    "room",
    [
        "live 42",  # space
        "live/42",
        "live\x0042",  # NUL
        "live\x7f",
        "live\u202e24",  # right-to-left override
        "\u200elive",  # left-to-right mark
        "live\u2066",  # left-to-right isolate
        "{live}",  # braces: a Redis hash tag
        "直播🔥",  # emoji
        "price$",  # symbol
        "é" * 65,
    ],
)
def test_join_room_outside_the_room_name_rule_is_invalid_field(codec: Codec, room: str) -> None:
    data = dumps(codec, {"t": "join", "room": room, "rid": 5})
    with pytest.raises(InvalidField) as info:
        codec.decode_client(data)
    assert (info.value.field, info.value.rid, info.value.close_code) == ("room", 5, None)
    assert ROOM_NAME_RULE in str(info.value)


@codecs
@pytest.mark.parametrize(
    "room", ["live-42", "直播间-1", "a_b.c:d-E9", "é" * 64, "e\u0301", "Ünïcödé", "٣٤"]
)
def test_join_room_under_the_room_name_rule_is_accepted(codec: Codec, room: str) -> None:
    assert codec.decode_client(dumps(codec, {"t": "join", "room": room})) == Join(room=room)


@codecs
def test_only_join_checks_the_room_name_rule(codec: Codec) -> None:
    # Other commands check the length only: the server answers not_joined for such a room.
    room = "live 42 🔥"
    assert codec.decode_client(dumps(codec, {"t": "leave", "room": room})) == Leave(room=room)
    assert codec.decode_client(dumps(codec, {"t": "like", "room": room})) == Like(room=room)
    with pytest.raises(InvalidField):
        codec.decode_client(dumps(codec, {"t": "join", "room": room}))


def test_join_room_check_is_one_kind_used_by_join_only() -> None:
    kinds = {
        cls: f.kind
        for cls in (*CLIENT_TYPES.values(), *SERVER_TYPES.values())
        for f in cls.SCHEMA
        if f.key == "room"
    }
    assert {cls for cls, kind in kinds.items() if kind == "room"} == {Join}


# --- refresh, refreshed and welcome.exp ------------------------------------------------


@codecs
def test_refresh_carries_a_token_of_1_to_16384_chars(codec: Codec) -> None:
    for token in ("t", "t" * MAX_TOKEN_LENGTH):
        data = dumps(codec, {"t": "refresh", "token": token, "rid": 1})
        assert codec.decode_client(data) == Refresh(token=token, rid=1)
    for bad in ("", "t" * (MAX_TOKEN_LENGTH + 1), 7, None):
        with pytest.raises(InvalidField) as info:
            codec.decode_client(dumps(codec, {"t": "refresh", "token": bad, "rid": 1}))
        assert (info.value.field, info.value.rid) == ("token", 1)


@codecs
def test_refreshed_carries_the_new_expiry(codec: Codec) -> None:
    message = Refreshed(expires=1_732_503_600_000, rid="r-1")
    assert to_wire(message) == {"t": "refreshed", "exp": 1_732_503_600_000, "rid": "r-1"}
    assert codec.decode_server(codec.encode(message)) == message
    with pytest.raises(InvalidField) as info:
        codec.decode_server(dumps(codec, {"t": "refreshed", "rid": 1}))
    assert info.value.field == "exp"


def test_refresh_and_refreshed_travel_in_their_own_direction_only() -> None:
    with pytest.raises(UnknownMessageType):
        MSGPACK.decode_server(MSGPACK.encode(Refresh(token="t")))
    with pytest.raises(UnknownMessageType):
        MSGPACK.decode_client(MSGPACK.encode(Refreshed(expires=1)))


@codecs
def test_welcome_exp_is_optional_and_written_last(codec: Codec) -> None:
    base = Welcome(session="s", user_id="u", name="n", role="viewer", heartbeat_ms=1, server_time=2)
    assert base.expires is None and "exp" not in to_wire(base)
    with_exp = Welcome(
        session="s",
        user_id="u",
        name="n",
        role="viewer",
        heartbeat_ms=1,
        server_time=2,
        expires=3,
    )
    assert list(to_wire(with_exp))[-1] == "exp"
    assert codec.decode_server(codec.encode(with_exp)) == with_exp
    with pytest.raises(InvalidField):
        codec.decode_server(dumps(codec, {**to_wire(base), "exp": -1}))


def test_refresh_error_codes_exist() -> None:
    assert ErrorCode.TOKEN_INVALID.value == "token_invalid"
    assert ErrorCode.TOKEN_EXPIRED.value == "token_expired"
    assert ErrorCode.ROOMS_FULL.value == "rooms_full"
    assert ErrorCode.ROOM_NOT_LIVE.value == "room_not_live"


# --- msgpack specifics ----------------------------------------------------------------


def test_msgpack_bin_and_ext_types_are_rejected() -> None:
    for value in (b"hi", msgpack.ExtType(1, b"hi"), msgpack.Timestamp(1, 0)):
        with pytest.raises(MalformedMessage):
            MSGPACK.decode_client(pack({"t": "comment", "room": ROOM, "text": value}))
    with pytest.raises(MalformedMessage):
        MSGPACK.decode_client(pack({"t": b"ping"}))
    # A zero-length bin passes the decoder's size limit, and is still malformed.
    with pytest.raises(MalformedMessage):
        MSGPACK.decode_client(pack({"t": "comment", "room": ROOM, "text": b""}))


PING_X = b"\x82\xa1t\xa4ping\xa1x"  # {"t": "ping", "x": …}


@pytest.mark.parametrize(
    "data",
    [
        pack({"t": "ping", "rid": b""}),  # value of a known key
        pack({"t": "ping", "x": b""}),  # value of an unknown key
        pack({"t": "ping", b"": 1}),  # map key
        pack({"t": "ping", "x": [1, {"y": [b""]}]}),  # nested under an unknown key
        pack({"t": "ping", "x": [{b"": 1}]}),  # nested map key
        pack({"t": "join", "room": ROOM, "x": {"y": b""}}),
        PING_X + b"\xc5\x00\x00",  # bin16 of length 0
        PING_X + b"\xc6\x00\x00\x00\x00",  # bin32 of length 0
        PING_X + b"\xc7\x00\x01",  # ext8 of length 0
        PING_X + b"\xc7\x00\xff",  # ext8 of length 0, the timestamp type
        PING_X + b"\xc8\x00\x00\x05",  # ext16 of length 0
        PING_X + b"\xd4\x01\x00",  # fixext1
        b"\xc4\x00",
    ],
    ids=lambda data: data.hex(),
)
def test_msgpack_empty_bin_and_ext_anywhere_are_malformed(data: bytes) -> None:
    for decode in (MSGPACK.decode_client, MSGPACK.decode_server):
        with pytest.raises(MalformedMessage) as info:
            decode(data)
        assert info.value.close_code == CloseCode.INVALID_PAYLOAD


def test_msgpack_bin_marker_bytes_inside_strings_and_integers_are_accepted() -> None:
    # 0xc4..0xc6 bytes that are no bin header (UTF-8 of "Ą", a uint16) cost a walk, no error.
    text = "Ąń Ćę"
    assert MSGPACK.decode_client(pack({"t": "comment", "room": ROOM, "text": text, "rid": 0xC400}))
    nested = PING_X + b"\x91" * 1021 + b"\x92\xa2\xc4\x84\xcd\xc5\x00"  # 1024 deep, Ą, 0xc500
    assert MSGPACK.decode_client(nested) == Ping()


def test_msgpack_non_string_map_keys_are_malformed() -> None:
    with pytest.raises(MalformedMessage):
        MSGPACK.decode_client(pack({"t": "ping", 1: "x"}))


def test_msgpack_decoder_accepts_any_integer_and_string_width() -> None:
    # Encoders should use the shortest form, decoders must accept every form.
    wide = (
        b"\x83"
        + b"\xd9\x01t"  # str8 "t"
        + b"\xda\x00\x04like"  # str16 "like"
        + b"\xa4room\xa1r"
        + b"\xa1n\xcf"
        + (7).to_bytes(8, "big")  # uint64 7
    )
    assert MSGPACK.decode_client(wide) == Like(room="r", count=7)
    assert MSGPACK.decode_client(
        b"\x82\xa1t\xa4ping\xa3rid\xd3" + (-1).to_bytes(8, "big", signed=True)
    ) == Ping(rid=-1)


def test_msgpack_encoder_uses_shortest_forms_and_str_not_bin() -> None:
    assert MSGPACK.encode(Ping(rid=127)) == b"\x82\xa1t\xa4ping\xa3rid\x7f"
    assert MSGPACK.encode(Ping(rid=128)).endswith(b"\xcc\x80")
    assert MSGPACK.encode(Ping(rid=-33)).endswith(b"\xd0\xdf")
    assert MSGPACK.encode(Ping(rid=MAX_INT)).endswith(b"\xcf" + MAX_INT.to_bytes(8, "big"))
    assert MSGPACK.encode(Ping(rid="x" * 31)).endswith(b"\xbf" + b"x" * 31)
    assert MSGPACK.encode(Ping(rid="x" * 32)).endswith(b"\xd9\x20" + b"x" * 32)
    assert b"\xc3" in MSGPACK.encode(joined()) and b"\xc2" not in MSGPACK.encode(joined())


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
    ],
)
def test_msgpack_huge_length_headers_are_malformed(header: bytes) -> None:
    with pytest.raises(MalformedMessage):
        MSGPACK.decode_client(header)


def test_msgpack_containers_over_4096_items_are_malformed() -> None:
    with pytest.raises(MalformedMessage):
        MSGPACK.decode_client(pack({"t": "ping", "x": [None] * 4097}))
    assert MSGPACK.decode_client(pack({"t": "ping", "x": [None] * 4096})) == Ping()


@codecs
def test_server_messages_over_4096_items_decode(codec: Codec) -> None:
    """The item bound is for client messages (SPEC §12): a resume's batch or a large
    snapshot may hold more events, and a client must take them."""
    events = tuple(comment(i + 1) for i in range(5000))
    batch = codec.encode_batch(ROOM, [codec.encode_event(ev) for ev in events])
    assert codec.decode_server(batch) == Batch(room=ROOM, events=events)
    if codec is MSGPACK:  # the same container in a client message is still refused
        with pytest.raises(MalformedMessage):
            MSGPACK.decode_client(pack({"t": "ping", "x": [None] * 5000}))


def _nested_ping(codec: Codec, depth: int) -> bytes:
    """A ``ping`` whose unknown key holds nested arrays: ``depth`` containers in all."""
    arrays = depth - 1
    if codec is MSGPACK:
        return PING_X + b"\x91" * (arrays - 1) + b"\x90"
    return b'{"t":"ping","x":' + b"[" * arrays + b"]" * arrays + b"}"


@codecs
def test_nesting_depth_is_at_most_1024_containers_counting_the_message(codec: Codec) -> None:
    assert len(_nested_ping(codec, 1025)) < 4096
    assert codec.decode_client(_nested_ping(codec, 1024)) == Ping()
    with pytest.raises(MalformedMessage):
        codec.decode_client(_nested_ping(codec, 1025))


@codecs
def test_deeply_nested_payload_is_malformed_not_a_recursion_error(codec: Codec) -> None:
    data = b"\x91" * 100_000 + b"\xc0" if codec is MSGPACK else b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(MalformedMessage):
        codec.decode_client(data)


@codecs
def test_trailing_bytes_are_malformed(codec: Codec) -> None:
    with pytest.raises(MalformedMessage):
        codec.decode_client(codec.encode(Ping()) * 2)


@codecs
def test_empty_payload_is_malformed(codec: Codec) -> None:
    with pytest.raises(MalformedMessage):
        codec.decode_client(b"")


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        MSGPACK.decode_client(b"\x82\xa1t\xa4ping\xa3rid\xa2\xff\xfe")
    with pytest.raises(MalformedMessage):
        JSON.decode_client(b'{"t":"ping","rid":"\xff"}')


# --- JSON specifics -------------------------------------------------------------------


def test_json_is_compact_utf8_without_unicode_escapes() -> None:
    encoded = JSON.encode(SendComment(room=ROOM, text="弹幕🔥", rid=1))
    assert encoded == '{"t":"comment","room":"live-42","text":"弹幕🔥","rid":1}'.encode()


def test_json_decoder_accepts_escapes_and_whitespace() -> None:
    data = b' { "t" : "comment" , "room" : "r" , "text" : "\\u5f39\\ud83d\\udd25\\n" } '
    assert JSON.decode_client(data) == SendComment(room="r", text="弹🔥\n")


def test_json_lone_surrogate_escape_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        JSON.decode_client(b'{"t":"ping","rid":"\\udc00"}')


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_json_non_finite_literals_are_malformed(literal: bytes) -> None:
    with pytest.raises(MalformedMessage):
        JSON.decode_client(b'{"t":"ping","rid":' + literal + b"}")


# --- room events, batch and joined ------------------------------------------------------


@codecs
def test_unknown_event_types_inside_batch_are_skipped(codec: Codec) -> None:
    events = [{"t": "pin", "sku": "A1"}, to_wire(comment()), {"t": "gift", "n": 1}]
    data = dumps(codec, {"t": "batch", "room": ROOM, "ev": events})
    assert codec.decode_server(data) == Batch(room=ROOM, events=(comment(),))


@codecs
def test_unknown_event_types_inside_joined_recent_are_skipped(codec: Codec) -> None:
    wire = {**to_wire(joined()), "recent": [{"t": "pin"}, to_wire(comment())]}
    assert codec.decode_server(dumps(codec, wire)) == joined(recent=(comment(),))


def test_event_of_unknown_type_on_its_own_is_invalid_field() -> None:
    with pytest.raises(InvalidField):
        event_from_wire({"t": "pin"})


@codecs
@pytest.mark.parametrize("bad", [1, [], {"total": 1}, {"t": 3}])
def test_event_that_is_not_a_map_with_string_t_is_malformed(codec: Codec, bad: Any) -> None:
    with pytest.raises(MalformedMessage):
        codec.decode_server(dumps(codec, {"t": "batch", "room": ROOM, "ev": [bad]}))


@codecs
def test_known_event_with_invalid_field_is_invalid_field(codec: Codec) -> None:
    data = dumps(codec, {"t": "batch", "room": ROOM, "ev": [{"t": "likes", "total": -1}]})
    with pytest.raises(InvalidField):
        codec.decode_server(data)


@codecs
def test_events_must_be_a_list(codec: Codec) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_server(dumps(codec, {"t": "batch", "room": ROOM, "ev": {}}))
    assert info.value.field == "ev"


@codecs
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 300])
def test_batch_spliced_from_preencoded_events_equals_full_encoding(codec: Codec, n: int) -> None:
    events = tuple(comment(i + 1, f"#{i} 弹幕") if i % 3 else Likes(total=i) for i in range(n))
    parts = [codec.encode_event(ev) for ev in events]
    assert codec.encode_batch(ROOM, parts) == codec.encode(Batch(room=ROOM, events=events))


def test_msgpack_batch_of_65536_events_uses_array32_header() -> None:
    events = (Viewers(count=1),) * 65536
    part = MSGPACK.encode_event(events[0])
    spliced = MSGPACK.encode_batch(ROOM, [part] * len(events))
    assert b"\xa2ev\xdd\x00\x01\x00\x00" in spliced
    assert spliced == MSGPACK.encode(Batch(room=ROOM, events=events))


@codecs
@pytest.mark.parametrize("rid", [None, 7, "j-1"])
@pytest.mark.parametrize("n", [0, 1, 20])
@pytest.mark.parametrize(
    ("pin", "sale"), [(None, None), (PRODUCT, None), (None, SALE), (PRODUCT, SALE)]
)
def test_joined_spliced_from_preencoded_events_equals_full_encoding(
    codec: Codec, rid: str | int | None, n: int, pin: Product | None, sale: SaleInfo | None
) -> None:
    recent = tuple(
        comment(i + 1) if i % 2 else Pinned(product=PRODUCT, ts=i, offset=i + 1) for i in range(n)
    )
    parts = [codec.encode_event(ev) for ev in recent]
    full = codec.encode(joined(recent, rid, pin=pin, sale=sale))
    assert codec.encode_joined(joined((), rid, pin=pin, sale=sale), parts) == full
    assert codec.decode_server(full) == joined(recent, rid, pin=pin, sale=sale)


@codecs
def test_encode_joined_ignores_joined_recent(codec: Codec) -> None:
    spliced = codec.encode_joined(joined((comment(1),)), [codec.encode_event(comment(2))])
    assert codec.decode_server(spliced) == joined((comment(2),))


# --- flash sale: buy, buy_result, products, sales ---------------------------------------


@codecs
@pytest.mark.parametrize("rid", ["b", "r" * 64, 0, -MAX_INT, MAX_INT])
def test_buy_rid_is_a_non_empty_string_or_an_integer(codec: Codec, rid: Any) -> None:
    msg = codec.decode_client(dumps(codec, {**BUY, "rid": rid}))
    assert msg == Buy(room=ROOM, sale="s-1", qty=1, rid=rid)


@codecs
@pytest.mark.parametrize("rid", [None, "", "r" * 65, True, 1.5, 2**53])
def test_buy_without_a_valid_rid_is_invalid_field_without_rid(codec: Codec, rid: Any) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {**BUY, "rid": rid}))
    assert (info.value.field, info.value.rid) == ("rid", None)
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {k: v for k, v in BUY.items() if k != "rid"}))
    assert info.value.field == "rid"


def test_buy_rid_has_no_default() -> None:
    with pytest.raises(TypeError):
        Buy(room=ROOM, sale="s-1")  # type: ignore[call-arg]


@codecs
@pytest.mark.parametrize(("qty", "ok"), [(1, True), (100, True), (0, False), (101, False)])
def test_buy_qty_is_1_to_100_and_defaults_to_1(codec: Codec, qty: int, ok: bool) -> None:
    data = dumps(codec, {**BUY, "qty": qty, "rid": 9})
    if ok:
        assert codec.decode_client(data) == Buy(room=ROOM, sale="s-1", qty=qty, rid=9)
    else:
        with pytest.raises(InvalidField) as info:
            codec.decode_client(data)
        assert (info.value.field, info.value.rid) == ("qty", 9)
    no_qty = dumps(codec, {"t": "buy", "room": ROOM, "sale": "s-1", "rid": 9})
    assert codec.decode_client(no_qty) == Buy(room=ROOM, sale="s-1", rid=9)
    assert to_wire(Buy(room=ROOM, sale="s-1", rid=9))["qty"] == 1


@codecs
@pytest.mark.parametrize("sale", ["", "s" * 65, 7, None])
def test_buy_sale_is_1_to_64_chars(codec: Codec, sale: Any) -> None:
    with pytest.raises(InvalidField) as info:
        codec.decode_client(dumps(codec, {**BUY, "sale": sale}))
    assert info.value.field == "sale"


@codecs
@pytest.mark.parametrize("status", BUY_STATUSES)
def test_buy_result_statuses(codec: Codec, status: str) -> None:
    message = BuyResult(rid="b-1", sale="s-1", status=status, msg="m")
    assert codec.decode_server(codec.encode(message)) == message


@codecs
@pytest.mark.parametrize("status", ["OK", "maybe", "", "not_found", 0])
def test_buy_result_status_outside_the_set_is_invalid_field(codec: Codec, status: Any) -> None:
    wire = {**to_wire(BuyResult(rid=3, sale="s-1", status="ok")), "status": status}
    with pytest.raises(InvalidField) as info:
        codec.decode_server(dumps(codec, wire))
    assert (info.value.field, info.value.rid) == ("status", 3)


def test_buy_result_leaves_out_absent_optionals() -> None:
    assert list(to_wire(BuyResult(rid=1, sale="s", status="sold_out"))) == [
        "t",
        "rid",
        "sale",
        "status",
    ]


def test_buy_and_buy_result_travel_in_their_own_direction_only() -> None:
    with pytest.raises(UnknownMessageType):
        MSGPACK.decode_server(pack(BUY))
    with pytest.raises(UnknownMessageType):
        MSGPACK.decode_client(MSGPACK.encode(BuyResult(rid=1, sale="s", status="ok")))


@codecs
@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"status": "paused"}, "status"),
        ({"limit": 0}, "limit"),
        ({"remaining": -1}, "remaining"),
        ({"pid": ""}, "pid"),
        ({"starts": 1.0}, "starts"),
    ],
)
def test_sale_snapshot_fields_are_checked(codec: Codec, values: Any, field: str) -> None:
    wire = to_wire(joined(sale=SALE, rid="j"))
    wire["sale"] = {**wire["sale"], **values}
    with pytest.raises(InvalidField) as info:
        codec.decode_server(dumps(codec, wire))
    assert (info.value.field, info.value.rid) == (f"sale.{field}", "j")


@codecs
@pytest.mark.parametrize("reason", SALE_CLOSE_REASONS)
def test_sale_closed_reasons(codec: Codec, reason: str) -> None:
    event = SaleClosed(sale_id="s-1", reason=reason, ts=1, offset=2)
    assert event_from_wire(codec.loads(codec.encode_event(event))) == event
    with pytest.raises(InvalidField):
        event_from_wire({**to_wire(event), "reason": reason.upper()})


@codecs
@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"id": ""}, "id"),
        ({"title": ""}, "title"),
        ({"title": "t" * 201}, "title"),
        ({"price": -1}, "price"),
        ({"price": True}, "price"),
        ({"currency": "CN"}, "currency"),
        ({"currency": "CNYX"}, "currency"),
        ({"image": "i" * 1001}, "image"),
        ({"extra": []}, "extra"),
        ({"extra": {f"k{i}": i for i in range(33)}}, "extra"),
        ({"extra": {"k" * 65: 1}}, "extra"),
        ({"extra": {"rating": 4.5}}, "extra.rating"),
        ({"extra": {"n": 2**53}}, "extra.n"),
        ({"extra": {"n": -(2**53)}}, "extra.n"),
        ({"extra": {"s": "x" * 1001}}, "extra.s"),
        ({"extra": {"m": {"a": 1}}}, "extra.m"),
        ({"extra": {"l": [1]}}, "extra.l"),
    ],
)
def test_product_fields_are_checked(codec: Codec, values: Any, field: str) -> None:
    wire = to_wire(joined(pin=PRODUCT, rid=4))
    wire["pin"] = {**wire["pin"], **values}
    with pytest.raises(InvalidField) as info:
        codec.decode_server(dumps(codec, wire))
    assert (info.value.field, info.value.rid) == (f"pin.{field}", 4)


@codecs
@pytest.mark.parametrize("missing", ["id", "title", "price"])
def test_product_required_fields(codec: Codec, missing: str) -> None:
    wire = to_wire(joined(pin=PRODUCT))
    wire["pin"] = {k: v for k, v in wire["pin"].items() if k != missing}
    with pytest.raises(InvalidField) as info:
        codec.decode_server(dumps(codec, wire))
    assert info.value.field == f"pin.{missing}"


@codecs
@pytest.mark.parametrize("bad", [1, "p", [], True])
def test_nested_value_that_is_not_a_map_is_invalid_field(codec: Codec, bad: Any) -> None:
    for key in ("pin", "sale"):
        with pytest.raises(InvalidField) as info:
            codec.decode_server(dumps(codec, {**to_wire(joined()), key: bad}))
        assert info.value.field == key
    event = {"t": "pinned", "product": bad, "ts": 1, "off": 1}
    with pytest.raises(InvalidField):
        codec.decode_server(dumps(codec, {"t": "batch", "room": ROOM, "ev": [event]}))


def test_msgpack_bin_in_attrs_is_malformed() -> None:
    for extra in ({b"": 1}, {"k": b""}):
        wire = {**to_wire(joined(pin=PRODUCT)), "pin": {**to_wire_product(), "extra": extra}}
        with pytest.raises(MalformedMessage):
            MSGPACK.decode_server(pack(wire))


def to_wire_product() -> dict[str, Any]:
    wire: dict[str, Any] = to_wire(joined(pin=PRODUCT))["pin"]
    return wire


@codecs
def test_attrs_keep_value_types_and_wire_order(codec: Codec) -> None:
    decoded = codec.decode_server(codec.encode(joined(pin=PRODUCT)))
    assert isinstance(decoded, Joined) and decoded.pin is not None
    assert decoded.pin.extra == PRODUCT.extra
    assert [(k, type(v)) for k, v in decoded.pin.extra or ()] == [
        ("颜色", str),
        ("stars", int),
        ("包邮", bool),
        ("delta", int),
        ("one", int),
    ]
    assert list(to_wire_product()["extra"]) == ["颜色", "stars", "包邮", "delta", "one"]


@codecs
def test_attrs_null_values_are_absent_and_empty_attrs_round_trip(codec: Codec) -> None:
    wire = {**to_wire(joined(pin=PRODUCT)), "pin": {**to_wire_product(), "extra": {"a": None}}}
    decoded = codec.decode_server(dumps(codec, wire))
    assert isinstance(decoded, Joined) and decoded.pin is not None
    assert decoded.pin.extra == ()
    bare = Product(id="p", title="t", price=0, extra=())
    assert codec.decode_server(codec.encode(joined(pin=bare))) == joined(pin=bare)


def test_attrs_with_repeated_keys_cannot_be_encoded() -> None:
    product = Product(id="p", title="t", price=0, extra=(("k", 1), ("k", 2)))
    with pytest.raises(ValueError, match="repeated keys"):
        to_wire(joined(pin=product))


@codecs
def test_unknown_keys_inside_nested_values_are_ignored(codec: Codec) -> None:
    wire = to_wire(joined(pin=PRODUCT, sale=SALE))
    wire["pin"] = {**wire["pin"], "video": {"url": "x"}}
    wire["sale"] = {**wire["sale"], "tier": 2}
    assert codec.decode_server(dumps(codec, wire)) == joined(pin=PRODUCT, sale=SALE)


@codecs
def test_null_nested_values_are_absent(codec: Codec) -> None:
    wire = {**to_wire(joined()), "pin": None, "sale": None}
    assert codec.decode_server(dumps(codec, wire)) == joined()
    pin = {**to_wire_product(), "currency": None, "image": None, "extra": None}
    decoded = codec.decode_server(dumps(codec, {**to_wire(joined()), "pin": pin}))
    assert decoded == joined(pin=Product(id="p-1", title=PRODUCT.title, price=PRODUCT.price))


def test_joined_puts_pin_and_sale_after_recent_and_before_rid() -> None:
    wire = to_wire(joined((comment(),), 1, pin=PRODUCT, sale=SALE))
    assert list(wire)[-4:] == ["recent", "pin", "sale", "rid"]


@codecs
def test_flash_sale_events_round_trip_in_a_batch(codec: Codec) -> None:
    events: tuple[RoomEvent, ...] = (
        SystemMessage(id="m-1", text="8点开抢", ts=1, offset=1),
        Pinned(product=PRODUCT, ts=2, offset=2),
        SaleOpened(sale=SALE, ts=3, offset=3),
        Stock(sale_id="s-1", remaining=36),
        Purchase(sale_id="s-1", name="小*", qty=1, ts=4, offset=4),
        SoldOut(sale_id="s-1", ts=5, offset=5),
        SaleClosed(sale_id="s-1", reason="sold_out", ts=6, offset=6),
        Unpinned(product_id="p-1", ts=7, offset=7),
    )
    batch = Batch(room=ROOM, events=events)
    parts = [codec.encode_event(ev) for ev in events]
    assert codec.encode_batch(ROOM, parts) == codec.encode(batch)
    assert codec.decode_server(codec.encode(batch)) == batch


@codecs
def test_unknown_event_types_among_flash_sale_events_are_skipped(codec: Codec) -> None:
    stock = Stock(sale_id="s-1", remaining=3)
    events = [{"t": "coupon", "id": 1}, to_wire(stock), {"t": "lottery"}, to_wire(comment())]
    data = dumps(codec, {"t": "batch", "room": ROOM, "ev": events})
    assert codec.decode_server(data) == Batch(room=ROOM, events=(stock, comment()))


@codecs
def test_sale_and_close_status_sets(codec: Codec) -> None:
    assert set(SALE_STATUSES) == {"scheduled", "open", "sold_out", "closed", "ended"}
    assert set(BUY_STATUSES) == {"ok", "sold_out", "limit_reached", "not_open", "error"}
    for status in SALE_STATUSES:
        sale = SaleInfo(**{**_fields(SALE), "status": status})
        assert codec.decode_server(codec.encode(joined(sale=sale))) == joined(sale=sale)


def _fields(obj: Any) -> dict[str, Any]:
    return {f.attr: getattr(obj, f.attr) for f in obj.SCHEMA}


# --- properties -------------------------------------------------------------------------

RIDS = st.one_of(st.text(max_size=64), st.integers(-MAX_INT, MAX_INT))
ROOM_NAMES = st.text(
    st.one_of(st.characters(categories=("L", "M", "N")), st.sampled_from("_.:-")),
    min_size=1,
    max_size=64,
)
ATTR_VALUES = st.one_of(
    st.text(max_size=1000),
    st.integers(-MAX_INT, MAX_INT),
    st.sampled_from([0, 1, -MAX_INT, MAX_INT]),
    st.booleans(),
)


def _value(f: Field) -> st.SearchStrategy[Any]:
    if f.kind == "str":
        if f.choices:
            return st.sampled_from(f.choices)
        return st.text(min_size=f.lo, max_size=f.hi)
    if f.kind == "room":
        return ROOM_NAMES
    if f.kind == "int":
        return st.one_of(st.integers(f.lo, f.hi), st.sampled_from([f.lo, f.hi]))
    if f.kind == "bool":
        return st.booleans()
    if f.kind == "rid":
        return RIDS.filter(lambda rid: not isinstance(rid, str) or len(rid) >= f.lo)
    if f.kind == "product":
        return messages(Product)
    if f.kind == "sale":
        return messages(SaleInfo)
    if f.kind == "attrs":
        return st.dictionaries(st.text(max_size=64), ATTR_VALUES, max_size=f.hi).map(
            lambda d: tuple(d.items())
        )
    return st.lists(EVENTS, max_size=20).map(tuple)


def messages(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Valid messages of type ``cls``, built from its schema: optional fields come and go."""
    required = {f.attr: _value(f) for f in cls.SCHEMA if f.required}
    optional = {f.attr: _value(f) for f in cls.SCHEMA if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


EVENTS: st.SearchStrategy[RoomEvent] = st.one_of(
    [messages(cls) for cls in ROOM_EVENT_TYPES.values()]
)
CLIENT_MESSAGES = st.one_of([messages(cls) for cls in CLIENT_TYPES.values()])
SERVER_MESSAGES = st.one_of([messages(cls) for cls in SERVER_TYPES.values()])


def test_strategies_cover_every_message_type() -> None:
    covered = {Join, Leave, SendComment, Like, Ping, Buy, Welcome, Joined, Left, Batch, Ack}
    covered |= {Refresh, Refreshed}
    covered |= {Error, Pong, BuyResult, Comment, Likes, Viewers, SystemMessage, Pinned}
    covered |= {Unpinned, SaleOpened, SaleClosed, SoldOut, Purchase, Stock}
    assert covered == {*CLIENT_TYPES.values(), *SERVER_TYPES.values(), *ROOM_EVENT_TYPES.values()}


def _same(decoded: Any, message: Any) -> None:
    """Equal, and equal in repr too: ``True == 1`` must not hide a bool turned int."""
    assert decoded == message
    assert repr(decoded) == repr(message)


@PROPERTY
@given(message=CLIENT_MESSAGES)
def test_every_client_message_round_trips_through_both_codecs(message: Any) -> None:
    for codec in CODECS:
        _same(codec.decode_client(codec.encode(message)), message)


@PROPERTY
@given(message=SERVER_MESSAGES)
def test_every_server_message_round_trips_through_both_codecs(message: Any) -> None:
    for codec in CODECS:
        _same(codec.decode_server(codec.encode(message)), message)


@PROPERTY
@given(event=EVENTS)
def test_every_room_event_round_trips_through_both_codecs(event: RoomEvent) -> None:
    for codec in CODECS:
        _same(event_from_wire(codec.loads(codec.encode_event(event))), event)


@PROPERTY
@given(product=messages(Product), sale=st.one_of(st.none(), messages(SaleInfo)))
def test_joined_with_any_pin_and_sale_round_trips(product: Product, sale: SaleInfo | None) -> None:
    message = joined((Pinned(product=product, ts=1, offset=1),), "j", pin=product, sale=sale)
    for codec in CODECS:
        _same(codec.decode_server(codec.encode(message)), message)


@PROPERTY
@given(room=st.text(min_size=1, max_size=64), events=st.lists(EVENTS, max_size=40))
def test_spliced_batch_equals_full_encoding(room: str, events: list[RoomEvent]) -> None:
    for codec in CODECS:
        parts = [codec.encode_event(ev) for ev in events]
        full = codec.encode(Batch(room=room, events=tuple(events)))
        assert codec.encode_batch(room, parts) == full


@PROPERTY
@given(message=messages(Joined))
def test_spliced_joined_equals_full_encoding(message: Joined) -> None:
    for codec in CODECS:
        parts = [codec.encode_event(ev) for ev in message.recent]
        assert codec.encode_joined(message, parts) == codec.encode(message)


@PROPERTY
@given(message=messages(Ack))
def test_encode_ack_equals_encoding_the_message(message: Ack) -> None:
    for codec in CODECS:
        assert codec.encode_ack(message.rid, message.offset) == codec.encode(message)


# Arbitrary input: decoders may refuse it, but only with ProtocolError.

WIRE_KEYS = sorted(
    {f.key for cls in (*CLIENT_TYPES.values(), *SERVER_TYPES.values()) for f in cls.SCHEMA}
    | {f.key for cls in ROOM_EVENT_TYPES.values() for f in cls.SCHEMA}
    | {f.key for cls in (Product, SaleInfo) for f in cls.SCHEMA}
)
TYPE_NAMES = sorted({*CLIENT_TYPES, *SERVER_TYPES, *ROOM_EVENT_TYPES, "pin", ""})
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, 100, 101, MAX_INT, MAX_INT + 1, -(2**53)]),
    st.floats(),
    st.text(max_size=70),
    st.sampled_from([*BUY_STATUSES, *SALE_STATUSES, *SALE_CLOSE_REASONS, "CNY"]),
)


def _structures(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> Any:
    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        typed = st.builds(
            lambda t, rest: {**rest, "t": t},
            st.sampled_from(TYPE_NAMES),
            st.dictionaries(st.sampled_from(WIRE_KEYS), children, max_size=8),
        )
        # Maps with schema keys but no ``t``: nested values (product, sale, attrs).
        untyped = st.dictionaries(st.sampled_from(WIRE_KEYS), children, max_size=10)
        return st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(keys, children, max_size=6),
            typed,
            untyped,
        )

    return st.recursive(scalars, extend, max_leaves=30)


JSONABLE = _structures(SCALARS.filter(lambda v: not isinstance(v, int) or v < 2**63), st.text())
MSGPACKABLE = _structures(
    st.one_of(SCALARS, st.binary(max_size=4)), st.one_of(st.text(), st.integers(-5, 5))
)


def _decode_or_refuse(codec: Codec, data: bytes) -> None:
    for decode in (codec.decode_client, codec.decode_server):
        try:
            decode(data)
        except ProtocolError as exc:
            assert exc.close_code is None or exc.close_code in CloseCode
            assert exc.rid is None or isinstance(exc.rid, str | int)


@PROPERTY
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    for codec in CODECS:
        _decode_or_refuse(codec, data)


@PROPERTY
@given(obj=MSGPACKABLE)
def test_arbitrary_msgpack_structures_raise_only_protocol_error(obj: Any) -> None:
    _decode_or_refuse(MSGPACK, pack(obj))


@PROPERTY
@given(obj=JSONABLE)
def test_arbitrary_json_structures_raise_only_protocol_error(obj: Any) -> None:
    _decode_or_refuse(JSON, orjson.dumps(obj))


@PROPERTY
@given(message=st.one_of(CLIENT_MESSAGES, SERVER_MESSAGES), data=st.data())
def test_mutated_valid_payloads_raise_only_protocol_error(
    message: Any, data: st.DataObject
) -> None:
    for codec in CODECS:
        payload = bytearray(codec.encode(message))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(payload) - 1))
            payload[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(payload)))
        _decode_or_refuse(codec, bytes(payload[:cut]))
        _decode_or_refuse(codec, bytes(payload))
