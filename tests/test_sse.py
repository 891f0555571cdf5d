"""``EventStream``: server-sent events cut from a body fed in arbitrary pieces (WHATWG
rules), checked against a model of the events written and against ``httpx-sse``."""

from __future__ import annotations

from typing import Any

from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.client.stream import EventStream

VALUE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)))
LINE = st.one_of(
    st.tuples(st.just("data"), VALUE, st.booleans()),
    st.tuples(st.sampled_from(["event", "id", "retry", "database"]), VALUE, st.booleans()),
    st.tuples(st.just(""), VALUE, st.just(True)),  # a comment
)
EVENT = st.lists(LINE, min_size=1, max_size=5)


def _written(events: list[list[tuple[str, str, bool]]], end: str, last_open: bool) -> str:
    """The body: each event's lines, a blank line after each (not after the last when
    ``last_open``), every line ending in ``end``."""
    lines: list[str] = []
    for number, event in enumerate(events):
        for name, value, space in event:
            lines.append(f"{name}:{' ' if space else ''}{value}")
        if not (last_open and number == len(events) - 1):
            lines.append("")
    return "".join(line + end for line in lines)


def _expected(events: list[list[tuple[str, str, bool]]], last_open: bool) -> list[str]:
    """The data of each event ended by a blank line that has data lines."""
    out = []
    for number, event in enumerate(events):
        if last_open and number == len(events) - 1:
            break
        data = [v[1:] if not s and v.startswith(" ") else v for n, v, s in event if n == "data"]
        if data:
            out.append("\n".join(data))
    return out


def _feed(body: bytes, cuts: list[int]) -> list[str]:
    stream, events, start = EventStream(), [], 0
    for cut in [*sorted(set(cuts)), len(body)]:
        events.extend(stream.feed(body[start:cut]))
        start = cut
    return events + stream.end()


def _httpx_sse(text: str) -> list[Any]:
    lines, decoder = SSELineDecoder(), SSEDecoder()
    found = [decoder.decode(line) for line in [*lines.decode(text), *lines.flush()]]
    return [event for event in found if event is not None]


@settings(max_examples=400)
@given(
    events=st.lists(EVENT, max_size=6),
    end=st.sampled_from(["\n", "\r\n", "\r"]),
    last_open=st.booleans(),
    data=st.data(),
)
def test_events_come_out_whole_however_the_body_is_cut(
    events: list[list[tuple[str, str, bool]]], end: str, last_open: bool, data: st.DataObject
) -> None:
    body = _written(events, end, last_open).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))

    assert _feed(body, cuts) == _expected(events, last_open)


@settings(max_examples=400)
@given(events=st.lists(st.lists(st.tuples(st.just("data"), VALUE, st.booleans()), min_size=1)))
def test_the_same_events_as_httpx_sse(events: list[list[tuple[str, str, bool]]]) -> None:
    text = _written(events, "\n", last_open=False)

    assert _feed(text.encode(), []) == [event.data for event in _httpx_sse(text)]


def test_a_heartbeat_without_data_is_no_event() -> None:
    body = b": keep-alive\n\nevent: ping\n\nretry: 10\n\ndata: {}\n\n"
    assert _feed(body, []) == ["{}"]


def test_a_crlf_cut_between_its_cr_and_its_lf_is_one_line_end() -> None:
    body = b"data: a\r\n\r\ndata: b\r\n\r\n"
    assert _feed(body, [7, 8, 9, 16]) == ["a", "b"]


def test_a_cr_that_ends_the_body_ends_its_line() -> None:
    stream = EventStream()
    assert stream.feed(b"data: a\r\r") == []  # the last CR may be half of a CRLF
    assert stream.end() == ["a"]


def test_a_multibyte_character_cut_in_two_is_whole() -> None:
    body = "data: héllo \u2028 wörld\n\n".encode()
    assert _feed(body, [8]) == ["héllo \u2028 wörld"]
