"""engine.wsframe builds server data frames byte-identical to websockets' own serialiser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from engine.wsframe import data_frame

BOUNDARIES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 200_000]


def _reference(payload: bytes, binary: bool) -> bytes:
    opcode = Opcode.BINARY if binary else Opcode.TEXT
    return Frame(opcode, payload).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("length", BOUNDARIES)
def test_every_length_class_matches_websockets(length: int, binary: bool) -> None:
    payload = bytes(i % 251 for i in range(length))
    assert data_frame(payload, binary=binary) == _reference(payload, binary)


@given(st.binary(max_size=300), st.booleans())
def test_random_payloads_match_websockets(payload: bytes, binary: bool) -> None:
    assert data_frame(payload, binary=binary) == _reference(payload, binary)


def test_a_frame_parses_back_to_its_payload() -> None:
    payload = b"x" * 70_000
    reader = StreamReader()
    reader.feed_data(data_frame(payload, binary=True))
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload
