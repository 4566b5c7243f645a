"""The committed test vectors (protocol/vectors/*.json) and SPEC.md hold for the codecs.

Every valid vector encodes to exactly its bytes in both codecs and decodes back to the
same typed message; every invalid vector is refused with the named error (client payloads
by ``decode_client``, server payloads by ``decode_server``) and its ``outcome`` is what a
default server does (the 4096-byte size limit first, then the error); every edge vector is
accepted as the message it names; the generator, run afresh, reproduces the committed
files byte for byte; SPEC.md's field tables (messages, events and the nested ``product``
and ``sale`` values) equal the schemas and its example exchange equals what the codecs
produce.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest

from protocol import JSON, MSGPACK, CloseCode, Codec, ErrorCode, errors
from protocol.messages import (
    CLIENT_TYPES,
    CONFLATED_EVENT_TYPES,
    MAX_INT,
    OFFSET_EVENT_TYPES,
    ROOM_EVENT_TYPES,
    SERVER_TYPES,
    Field,
    Message,
    Product,
    RoomEvent,
    SaleInfo,
)
from protocol.wire import event_from_wire, to_wire

VECTORS_DIR = Path(__file__).resolve().parent.parent / "protocol" / "vectors"
CODECS: dict[str, Codec] = {"msgpack": MSGPACK, "json": JSON}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_liveroom_vectors_generate", VECTORS_DIR / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()
VALID: list[dict[str, Any]] = json.loads((VECTORS_DIR / "v1.json").read_text("utf-8"))
INVALID: list[dict[str, Any]] = json.loads((VECTORS_DIR / "invalid.json").read_text("utf-8"))
INVALID_SERVER: list[dict[str, Any]] = json.loads(
    (VECTORS_DIR / "invalid_server.json").read_text("utf-8")
)
EDGE: list[dict[str, Any]] = json.loads((VECTORS_DIR / "edge.json").read_text("utf-8"))
DEFAULT_MAX_MESSAGE_SIZE = 4096  # SPEC §12: the websocket layer refuses more, with 1009
TYPED: dict[str, Message] = {name: message for name, _, message in GENERATOR.VALID}


def _payload(vector: dict[str, Any], codec: str) -> bytes:
    if codec == "msgpack":
        return bytes.fromhex(vector["msgpack_hex"])
    return str(vector["json"]).encode("utf-8")


def _decode(codec: Codec, direction: str, data: bytes) -> Message:
    if direction == "client":
        return codec.decode_client(data)
    if direction == "server":
        return codec.decode_server(data)
    return event_from_wire(codec.loads(data))


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [f"{v.get('codec', '')}:{v['name']}".lstrip(":") for v in vectors]


def test_generator_reproduces_the_committed_files() -> None:
    assert GENERATOR.render_valid() == (VECTORS_DIR / "v1.json").read_text("utf-8")
    assert GENERATOR.render_invalid() == (VECTORS_DIR / "invalid.json").read_text("utf-8")
    assert GENERATOR.render_invalid_server() == (VECTORS_DIR / "invalid_server.json").read_text(
        "utf-8"
    )
    assert GENERATOR.render_edge() == (VECTORS_DIR / "edge.json").read_text("utf-8")


def test_vector_names_are_unique() -> None:
    assert len({v["name"] for v in VALID}) == len(VALID)
    assert len({(v["codec"], v["name"]) for v in INVALID}) == len(INVALID)
    assert len({(v["codec"], v["name"]) for v in INVALID_SERVER}) == len(INVALID_SERVER)
    assert len({(v["codec"], v["name"]) for v in EDGE}) == len(EDGE)


def test_vectors_cover_every_message_and_event_type() -> None:
    seen = {(v["direction"], v["message"]["t"]) for v in VALID}
    assert {("client", t) for t in CLIENT_TYPES} <= seen
    assert {("server", t) for t in SERVER_TYPES} <= seen
    assert {("event", t) for t in ROOM_EVENT_TYPES} <= seen


@pytest.mark.parametrize("vectors", [INVALID, INVALID_SERVER], ids=["client", "server"])
def test_invalid_vectors_cover_every_error_in_both_codecs(vectors: list[dict[str, Any]]) -> None:
    seen = {(v["codec"], v["error"]) for v in vectors}
    names = ("MalformedMessage", "UnknownMessageType", "InvalidField")
    assert seen == {(c, e) for c in CODECS for e in names}


def test_vectors_cover_the_flash_sale_cases() -> None:
    names = {v["name"] for v in VALID}
    # Each attrs value type, unicode product titles, joined with pin and sale.
    extras = [
        value
        for v in VALID
        for value in _nested_values(v["message"], "extra")
        if isinstance(value, dict)
    ]
    kinds = {type(x) for extra in extras for x in extra.values()}
    assert kinds == {str, int, bool}
    assert any(x < 0 for extra in extras for x in extra.values() if type(x) is int)
    assert any("秒杀" in t for v in VALID for t in _nested_values(v["message"], "title"))
    joined = [v["message"] for v in VALID if v["message"]["t"] == "joined"]
    assert any("pin" in m and "sale" in m and m["recent"] for m in joined)
    statuses = {v["message"]["status"] for v in VALID if v["message"]["t"] == "buy_result"}
    assert statuses == {"ok", "sold_out", "limit_reached", "not_open", "error"}
    assert {"buy_missing_rid", "buy_qty_zero", "buy_qty_101"} <= {v["name"] for v in INVALID}
    assert "buy_result_unknown_status" in {v["name"] for v in INVALID_SERVER}
    assert "batch_flash_sale_lifecycle" in names


def _nested_values(obj: Any, key: str) -> list[Any]:
    """Every value under ``key`` at any depth of a wire map."""
    found: list[Any] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found.extend(_nested_values(v, key))
    elif isinstance(obj, list):
        for item in obj:
            found.extend(_nested_values(item, key))
    return found


@pytest.mark.parametrize("codec_name", list(CODECS))
@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_vector_encodes_to_exactly_its_bytes(vector: dict[str, Any], codec_name: str) -> None:
    message = TYPED[vector["name"]]
    codec = CODECS[codec_name]
    assert to_wire(message) == vector["message"]
    expected = _payload(vector, codec_name)
    assert codec.encode(message) == expected
    if vector["direction"] == "event":
        assert type(message) in ROOM_EVENT_TYPES.values()
        assert codec.encode_event(cast(RoomEvent, message)) == expected


@pytest.mark.parametrize("codec_name", list(CODECS))
@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_vector_decodes_to_the_same_message(vector: dict[str, Any], codec_name: str) -> None:
    codec = CODECS[codec_name]
    decoded = _decode(codec, vector["direction"], _payload(vector, codec_name))
    assert decoded == TYPED[vector["name"]]
    assert type(decoded) is type(TYPED[vector["name"]])
    # Equality alone would let 1 stand for True (in attrs values): compare typed wire maps.
    assert _typed(to_wire(decoded)) == _typed(vector["message"])


def _typed(obj: Any) -> Any:
    """``obj`` with every scalar paired with its type, so that ``1 != True``."""
    if isinstance(obj, dict):
        return {k: _typed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_typed(v) for v in obj]
    return (type(obj).__name__, obj)


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_vector_bytes_hold_the_wire_map(vector: dict[str, Any]) -> None:
    # What a foreign decoder sees: the plain map, identical in both codecs.
    assert MSGPACK.loads(_payload(vector, "msgpack")) == vector["message"]
    assert JSON.loads(_payload(vector, "json")) == vector["message"]


@pytest.mark.parametrize("vector", INVALID, ids=_ids(INVALID))
def test_invalid_vector_is_refused_with_the_named_error(vector: dict[str, Any]) -> None:
    expected: type[errors.ProtocolError] = getattr(errors, vector["error"])
    with pytest.raises(errors.ProtocolError) as info:
        CODECS[vector["codec"]].decode_client(bytes.fromhex(vector["hex"]))
    assert type(info.value) is expected


# What a default server does with each error class (SPEC.md §15).
OUTCOMES = {
    "MalformedMessage": "close 1007",
    "UnknownMessageType": "close 4003",
    "InvalidField": "error invalid_field",
}


@pytest.mark.parametrize("vector", INVALID, ids=_ids(INVALID))
def test_invalid_vector_outcome_is_the_size_limit_then_the_decoder(vector: dict[str, Any]) -> None:
    size = len(bytes.fromhex(vector["hex"]))
    expected = "close 1009" if size > DEFAULT_MAX_MESSAGE_SIZE else OUTCOMES[vector["error"]]
    assert vector["outcome"] == expected


def test_invalid_vectors_show_limits_a_default_server_never_reaches() -> None:
    # 4097 items cannot fit in 4096 bytes: the size limit answers first.
    outcomes = {(v["codec"], v["name"]): v["outcome"] for v in INVALID}
    assert outcomes["msgpack", "array_over_4096_items"] == "close 1009"
    assert outcomes["msgpack", "nesting_1025_containers"] == "close 1007"
    assert outcomes["json", "nesting_1025_containers"] == "close 1007"
    assert {v["outcome"] for v in INVALID} == {*OUTCOMES.values(), "close 1009"}


def test_msgpack_empty_bin_and_ext_vectors_close_1007() -> None:
    outcomes = {v["name"]: (v["error"], v["outcome"]) for v in INVALID if v["codec"] == "msgpack"}
    for name in (
        "empty_bin_value",
        "empty_bin16_value",
        "empty_bin32_value",
        "empty_bin_map_key",
        "empty_bin_under_unknown_key",
        "empty_bin_nested_under_unknown_key",
        "empty_bin_nested_map_key",
        "empty_ext8_value",
        "empty_ext8_timestamp_type",
        "fixext1_value",
        "comment_text_empty_bin",
    ):
        assert outcomes[name] == ("MalformedMessage", "close 1007"), name


def test_invalid_vectors_hold_join_rooms_outside_the_room_name_rule() -> None:
    rooms = {
        MSGPACK.loads(bytes.fromhex(v["hex"]))["room"]
        for v in INVALID
        if v["codec"] == "msgpack" and v["name"].startswith("join_room_with")
    }
    rooms |= {
        MSGPACK.loads(bytes.fromhex(v["hex"]))["room"]
        for v in INVALID
        if v["codec"] == "msgpack" and v["name"] == "join_room_emoji"
    }
    assert {" ", "/", "\x00", "\u202e", "🔥"} <= {ch for room in rooms for ch in room}


@pytest.mark.parametrize("vector", EDGE, ids=_ids(EDGE))
def test_edge_vector_is_accepted_as_its_message(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["hex"])
    assert len(payload) <= DEFAULT_MAX_MESSAGE_SIZE
    decoded = CODECS[vector["codec"]].decode_client(payload)
    assert _typed(to_wire(decoded)) == _typed(vector["message"])


def test_edge_vectors_cover_repeated_keys_depth_and_epoch_without_offset() -> None:
    seen = {(v["codec"], v["name"]) for v in EDGE}
    for name in (
        "repeated_key_last_value_wins",
        "nesting_1024_containers",
        "join_epoch_without_offset",
    ):
        assert {(c, name) for c in CODECS} <= seen
    repeated = [v for v in EDGE if v["name"] == "repeated_key_last_value_wins"]
    assert all(v["message"]["n"] == 3 for v in repeated)


@pytest.mark.parametrize("vector", INVALID_SERVER, ids=_ids(INVALID_SERVER))
def test_invalid_server_vector_is_refused_with_the_named_error(vector: dict[str, Any]) -> None:
    expected: type[errors.ProtocolError] = getattr(errors, vector["error"])
    with pytest.raises(errors.ProtocolError) as info:
        CODECS[vector["codec"]].decode_server(bytes.fromhex(vector["hex"]))
    assert type(info.value) is expected


# --- SPEC.md stays in step with the schemas and the codecs --------------------------------

SPEC = (VECTORS_DIR.parent / "SPEC.md").read_text("utf-8")
SPEC_SECTIONS = {"client": "## 5.", "server": "## 6.", "event": "## 7."}
SCHEMAS: dict[str, Mapping[str, type[Any]]] = {
    "client": CLIENT_TYPES,
    "server": SERVER_TYPES,
    "event": ROOM_EVENT_TYPES,
}


def _spec_tables(section_heading: str) -> dict[str, list[tuple[str, ...]]]:
    """Field rows (key, type, req, bounds) of each ``###`` block of one SPEC.md section."""
    section = SPEC.split(section_heading, 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[tuple[str, ...]]] = {}
    for block in section.split("\n### ")[1:]:
        name = re.search(r"`(\w+)`", block.splitlines()[0])
        assert name is not None
        rows = [line for line in block.splitlines() if line.startswith("| `")]
        tables[name.group(1)] = [
            tuple(cell.strip().strip("`") for cell in row.split("|")[1:5]) for row in rows
        ]
    return tables


def _schema_rows(cls: type[Any]) -> list[tuple[str, ...]]:
    def bounds(f: Field) -> str:
        if f.kind == "room":
            return "§4.9"
        if f.kind == "str":
            return f"one of: {', '.join(f.choices)}" if f.choices else f"{f.lo}..{f.hi} chars"
        if f.kind == "int":
            return f"{f.lo}..{'2^53-1' if f.hi == MAX_INT else f.hi}"
        if f.kind == "rid":
            return "§4.3" if f.lo == 0 else "§4.3, not empty"
        if f.kind == "attrs":
            return f"at most {f.hi} entries"
        return {
            "bool": "true / false",
            "events": "array of events",
            "product": "§4.6",
            "sale": "§4.7",
        }[f.kind]

    return [(f.key, f.kind, "yes" if f.required else "no", bounds(f)) for f in cls.SCHEMA]


@pytest.mark.parametrize("direction", list(SPEC_SECTIONS))
def test_spec_field_tables_match_the_schemas(direction: str) -> None:
    tables = _spec_tables(SPEC_SECTIONS[direction])
    types = SCHEMAS[direction]
    assert sorted(tables) == sorted(types)
    for name, cls in types.items():
        assert tables[name] == _schema_rows(cls), name


def test_spec_value_type_tables_match_the_nested_schemas() -> None:
    tables = {name: rows for name, rows in _spec_tables("## 4.").items() if rows}
    assert tables == {"product": _schema_rows(Product), "sale": _schema_rows(SaleInfo)}


def test_spec_lists_offset_and_conflated_events() -> None:
    offsets = SPEC.split("- **Offsets.**", 1)[1].split("\n- ", 1)[0]
    conflated = SPEC.split("- **Conflated events**", 1)[1].split("\n- ", 1)[0]
    assert set(re.findall(r"`(\w+)`", offsets)) >= set(OFFSET_EVENT_TYPES)
    assert set(re.findall(r"`(\w+)`", conflated)) >= set(CONFLATED_EVENT_TYPES)


@pytest.mark.parametrize("cls", list(OFFSET_EVENT_TYPES.values()))
def test_offset_events_end_with_ts_and_off(cls: type[Any]) -> None:
    assert [f.key for f in cls.SCHEMA][-2:] == ["ts", "off"]
    assert [f.attr for f in cls.SCHEMA][-1] == "offset"


@pytest.mark.parametrize("cls", list(CONFLATED_EVENT_TYPES.values()))
def test_conflated_events_have_no_offset(cls: type[Any]) -> None:
    assert "off" not in {f.key for f in cls.SCHEMA}


def test_spec_example_exchange_matches_the_codecs() -> None:
    lines = SPEC.split("## 14.", 1)[1].splitlines()
    checked = 0
    for text, hex_line in itertools.pairwise(lines):
        if not text.startswith(("← {", "→ {")):
            continue
        payload = text[2:].encode("utf-8")
        decode = JSON.decode_server if text.startswith("←") else JSON.decode_client
        message = decode(payload)
        assert JSON.encode(message) == payload
        assert MSGPACK.encode(message).hex() == hex_line.strip()
        checked += 1
    assert checked >= 10


def _first_column(section: str) -> set[str]:
    """First cells of the table rows in one SPEC.md section."""
    text = SPEC.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return {row.split("|")[1].strip().strip("`") for row in rows}


def test_spec_lists_every_error_code() -> None:
    assert {code.value for code in ErrorCode} <= _first_column("## 10.")


def test_spec_lists_every_close_code() -> None:
    assert {str(int(code)) for code in CloseCode} <= _first_column("## 11.")


def test_spec_lists_the_vector_files() -> None:
    section = SPEC.split("## 15.", 1)[1]
    for path in sorted(VECTORS_DIR.glob("*.json")):
        assert f"`protocol/vectors/{path.name}`" in section
    assert "`outcome`" in section


def test_spec_lists_what_was_added_within_v1() -> None:
    added = SPEC.split("- Added within v1:", 1)[1].split("\n\n", 1)[0]
    for name in (
        "`refresh`",
        "`refreshed`",
        "`welcome.exp`",
        "`rooms_full`",
        "`room_not_live`",
        "`unavailable`",
        "unsolicited\n  `joined`",
    ):
        assert name in added
