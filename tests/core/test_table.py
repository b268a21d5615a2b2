"""The fold is pure, refuses gaps, and fold_all equals folding one record at a time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventproxy import CorruptLogError, Record, RouteAdded, RouteRemoved, RouteTable, fold, fold_all

TS = datetime(2026, 1, 1, tzinfo=UTC)
specs = st.sampled_from(["/", "/a/", "/a/b/", "/user/x/", "h.example/a/"])
events = st.one_of(
    st.builds(
        RouteAdded,
        specs,
        st.sampled_from(["http://127.0.0.1:1", "http://10.0.0.2:2"]),
        st.dictionaries(st.sampled_from(["k", "user"]), st.booleans() | st.integers(-5, 5)),
    ),
    st.builds(RouteRemoved, specs),
)


def records_of(evs: list) -> list[Record]:
    return [Record(seq=i + 1, ts=TS, actor="t", event=e) for i, e in enumerate(evs)]


@given(st.lists(events, max_size=40))
def test_fold_matches_a_plain_dict_model(evs: list) -> None:
    model: dict[str, tuple[str, dict]] = {}
    table = RouteTable()
    for record in records_of(evs):
        before = table
        table = fold(table, record)
        assert before.seq == record.seq - 1  # fold never changes its argument
        if isinstance(record.event, RouteAdded):
            model[record.event.routespec] = (record.event.target, record.event.data)
        else:
            model.pop(record.event.routespec, None)
    assert {k: (v.target, v.data) for k, v in table.items()} == model
    assert fold_all(RouteTable(), records_of(evs)) == table
    assert table.seq == len(evs)


@given(st.lists(events, max_size=30), st.integers(0, 30))
def test_fold_all_in_two_parts_equals_one(evs: list, cut: int) -> None:
    records = records_of(evs)
    cut = min(cut, len(records))
    assert fold_all(fold_all(RouteTable(), records[:cut]), records[cut:]) == fold_all(
        RouteTable(), records
    )


def test_gap_refused() -> None:
    table = fold(RouteTable(), Record(seq=1, ts=TS, actor="t", event=RouteRemoved("/a/")))
    with pytest.raises(
        CorruptLogError, match="sequence gap: table is at seq 1, next record has seq 3"
    ):
        fold(table, Record(seq=3, ts=TS, actor="t", event=RouteRemoved("/a/")))


def test_data_types_preserved_and_copies_handed_out() -> None:
    data = {"flag": True, "n": 1, "f": 1.0, "none": None, "l": [1, {"x": False}]}
    table = fold(
        RouteTable(), Record(seq=1, ts=TS, actor="t", event=RouteAdded("/a", "http://h:1", data))
    )
    out = table["/a/"].as_jupyterhub()
    assert out == {"routespec": "/a/", "target": "http://h:1", "data": data}
    assert repr(out["data"]) == repr(data)
    out["data"]["l"][1]["x"] = True
    assert table["/a/"].data["l"][1]["x"] is False
