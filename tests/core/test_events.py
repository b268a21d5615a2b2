"""Events validate themselves; records round-trip through msgpack; bad records are refused."""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventproxy import (
    CorruptLogError,
    InvalidRouteDataError,
    InvalidRoutespecError,
    Record,
    RouteAdded,
    RouteRemoved,
    UnsupportedSchemaError,
)
from eventproxy.events import (
    decode_record,
    encode_record,
    packb,
    record_to_wire,
    records_from_wire,
    unpackb,
)

TS = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.floats(allow_nan=False)
    | st.binary(max_size=8)
)
route_data = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        json_scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    ),
    max_size=5,
)
routespecs = st.sampled_from(["/", "/user/a/", "/user/b/", "/user/%C3%A9/", "h.example/x/"])


@given(spec=routespecs, data=route_data, seq=st.integers(1, 2**40), actor=st.text(max_size=10))
def test_record_roundtrip_preserves_types(spec: str, data: dict, seq: int, actor: str) -> None:
    record = Record(
        seq=seq, ts=TS, actor=actor, event=RouteAdded(spec, "http://127.0.0.1:8888", data)
    )
    decoded = decode_record(encode_record(record))
    assert decoded == record
    assert repr(decoded.event.data) == repr(record.event.data)  # True stays True, 1 stays 1


def test_removed_roundtrip() -> None:
    record = Record(seq=3, ts=TS, actor="hub", event=RouteRemoved("/user/a"))
    assert decode_record(encode_record(record)) == record
    assert record.event.routespec == "/user/a/"


def test_event_refuses_bad_routespec_at_construction() -> None:
    with pytest.raises(InvalidRoutespecError):
        RouteAdded("/user/../hub/", "http://127.0.0.1:1")
    with pytest.raises(InvalidRoutespecError):
        RouteRemoved("/x`) || PathPrefix(`/")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("127.0.0.1:8888", "absolute http"),
        ("ftp://host/", "absolute http"),
        ("http://", "absolute http"),
        ("http://h:99999", "out of range"),
        ("http://h/x?y=1", "query"),
        ("http://h/\r\nX: y", "control"),
        (8888, "must be a str"),
    ],
)
def test_bad_targets_refused(target: object, reason: str) -> None:
    with pytest.raises(InvalidRouteDataError, match=reason):
        RouteAdded("/a/", target, {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"t": (1, 2)}, "tuple"),
        ({"s": {1, 2}}, "set"),
        ({1: "x"}, "keys must be str"),
        ({"d": datetime.now(UTC)}, "datetime"),
        ({"n": 2**64}, "out of range"),
        ([1], "must be a dict"),
    ],
)
def test_bad_data_refused(data: object, reason: str) -> None:
    with pytest.raises(InvalidRouteDataError, match=reason):
        RouteAdded("/a/", "http://h:1", data)  # type: ignore[arg-type]


def test_data_is_copied_so_callers_cannot_change_the_log() -> None:
    data = {"nested": {"x": [1]}}
    event = RouteAdded("/a/", "http://h:1", data)
    data["nested"]["x"].append(2)
    assert event.data == {"nested": {"x": [1]}}


def _wire(**changes: object) -> bytes:
    wire = record_to_wire(Record(seq=7, ts=TS, actor="hub", event=RouteAdded("/a/", "http://h:1")))
    wire.update(changes)
    for key, value in list(changes.items()):
        if value is None:
            del wire[key]
    return packb(wire)


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (_wire(v=2), UnsupportedSchemaError, "schema version 2"),
        (_wire(seq=None), CorruptLogError, "'seq' is missing"),
        (_wire(seq="7"), CorruptLogError, "'seq' has type str"),
        (_wire(type="route_renamed"), CorruptLogError, r"seq 7\).*unknown event type"),
        (_wire(routespec="/a/../b/"), CorruptLogError, r"seq 7\).*dot segment"),
        (_wire(ts=12), CorruptLogError, "'ts' has type int"),
        (b"\xc1", CorruptLogError, "not a msgpack record"),
        (msgpack.packb([1, 2]), CorruptLogError, "expected a map"),
    ],
)
def test_bad_records_refused_naming_the_position(payload: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        decode_record(payload, where="test-log at byte offset 99")


@given(
    spec=routespecs,
    data=route_data,
    seq=st.integers(1, 2**40),
    actor=st.text(max_size=10),
    removed=st.booleans(),
)
def test_batch_decoding_builds_what_the_constructors_build(
    spec: str, data: dict, seq: int, actor: str, removed: bool
) -> None:
    """The replay fast path (``records_from_wire``) skips the dataclass constructors: it must
    build equal records, with the normalised routespec and a copy of the data."""
    event = RouteRemoved(spec) if removed else RouteAdded(spec, "http://127.0.0.1:8888", data)
    records = [Record(seq=seq, ts=TS, actor=actor, event=event)]
    records.append(Record(seq=seq + 1, ts=TS, actor=actor, event=RouteRemoved("/user/a")))
    decoded = records_from_wire(unpackb(packb([record_to_wire(r) for r in records])), where="t")
    assert decoded == records
    assert [repr(r) for r in decoded] == [repr(r) for r in records]
    assert decoded[1].event.routespec == "/user/a/"
    if not removed:
        assert decoded[0].event.data is not records[0].event.data


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"v": 2}, UnsupportedSchemaError, "schema version 2"),
        ({"seq": 0}, CorruptLogError, "positive int"),
        ({"seq": "7"}, CorruptLogError, "'seq' has type str"),
        ({"routespec": "/a/../b/"}, CorruptLogError, r"seq 7\).*dot segment"),
        ({"target": "ftp://h/"}, CorruptLogError, "target"),
        ({"data": [1]}, CorruptLogError, "data"),
    ],
)
def test_batch_decoding_refuses_what_single_decoding_refuses(
    change: dict, error: type, match: str
) -> None:
    good = record_to_wire(Record(seq=6, ts=TS, actor="hub", event=RouteAdded("/b/", "http://h:1")))
    bad = record_to_wire(Record(seq=7, ts=TS, actor="hub", event=RouteAdded("/a/", "http://h:1")))
    bad.update(change)
    with pytest.raises(error, match=match):
        records_from_wire(unpackb(packb([good, bad])), where="test-log")
