"""Protocol v1 framing and message parsing (pure functions, no server)."""

import json

import numpy as np
import pytest

from models.events import EVENT_DTYPE, make_events
from service.protocol import ProtocolError, decode_packet, encode_packet, parse_control, parse_start
from service.schemas import AdvanceMessage, FlushMessage, ResetMessage, StopMessage


def test_packet_is_the_13_byte_records_back_to_back():
    ev = make_events([1, 0x0102030405060708], [3, 0x0A0B], [4, 0x0C0D], [0, 1])
    data = encode_packet(ev)
    assert len(data) == 26
    # second record: t (8 bytes LE), x (2 LE), y (2 LE), p (1)
    assert data[13:] == bytes.fromhex("08070605040302010b0a0d0c01")
    back = decode_packet(data, 1 << 20)
    assert back.dtype == EVENT_DTYPE and np.array_equal(back, ev)


def test_empty_packet_decodes_to_no_events():
    assert decode_packet(b"", 100).size == 0


@pytest.mark.parametrize("n", [1, 12, 14, 27])
def test_truncated_or_misaligned_packet(n):
    with pytest.raises(ProtocolError) as e:
        decode_packet(bytes(n), 1 << 20)
    assert e.value.code == "misaligned_packet"
    assert f"{n} bytes" in e.value.message and f"{n % 13} stray bytes" in e.value.message
    assert not e.value.fatal


def test_packet_over_the_size_limit():
    with pytest.raises(ProtocolError) as e:
        decode_packet(bytes(13 * 11), 13 * 10)
    assert e.value.code == "packet_too_large"
    assert "143 bytes (11 events)" in e.value.message and "limit of 130 bytes" in e.value.message


def test_start_message_defaults_and_options():
    s = parse_start(
        json.dumps({"type": "start", "model": "m", "sensor": {"width": 128, "height": 64}, "dt_us": 5000})
    )
    assert s.version == 1 and s.model == "m" and s.sensor.width == 128 and s.dt_us == 5000
    assert s.readout.mode == "horizon" and s.output.top_k == 3


@pytest.mark.parametrize(
    "text, code",
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"model": "x"}', "bad_message"),
        ('{"type": "hello"}', "unknown_type"),
        ('{"type": "reset"}', "not_started"),
        ('{"type": "start", "version": 2}', "unsupported_version"),
        ('{"type": "start", "sensor": {"width": 0, "height": 5}}', "bad_message"),
        ('{"type": "start", "dt_us": "soon"}', "bad_message"),
        ('{"type": "start", "colour": "red"}', "bad_message"),
    ],
)
def test_bad_start_messages_are_fatal_with_a_code(text, code):
    with pytest.raises(ProtocolError) as e:
        parse_start(text)
    assert e.value.code == code and e.value.fatal
    assert e.value.to_message()["type"] == "error"


def test_control_messages():
    assert isinstance(parse_control('{"type": "reset"}'), ResetMessage)
    assert isinstance(parse_control('{"type": "flush"}'), FlushMessage)
    assert isinstance(parse_control('{"type": "stop"}'), StopMessage)
    adv = parse_control('{"type": "advance", "t_us": 123}')
    assert isinstance(adv, AdvanceMessage) and adv.t_us == 123


@pytest.mark.parametrize(
    "text, code, words",
    [
        ('{"type": "start"}', "already_started", "already started"),
        ('{"type": "advance"}', "bad_message", "t_us"),
        ('{"type": "advance", "t_us": -1}', "bad_message", "t_us"),
        ('{"type": "reset", "hard": true}', "bad_message", "hard"),
        ('{"type": "jump"}', "unknown_type", "'jump'"),
        ("nope", "bad_json", "not valid JSON"),
    ],
)
def test_bad_control_messages_are_not_fatal(text, code, words):
    with pytest.raises(ProtocolError) as e:
        parse_control(text)
    assert e.value.code == code and not e.value.fatal
    assert words in e.value.message
