"""The fold is pure, refuses gaps, and fold_all equals folding one record at a time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventproxy import CorruptLogError, Record, RouteAdded, RouteRemoved, RouteTable, fold, fold_all
from eventproxy.table import FoldingTable

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


@given(st.lists(events, max_size=40), st.lists(st.integers(1, 8), max_size=40))
def test_folding_in_place_in_batches_equals_the_pure_fold(evs: list, sizes: list[int]) -> None:
    """FoldingTable (the projection's in-place fold) == fold_all, whatever the batch sizes; each
    batch reports the entries it touched as they were before it."""
    records = records_of(evs)
    folding = FoldingTable()
    view = folding.view
    start = 0
    for size in [*sizes, len(records)]:
        batch = records[start : start + size]
        if not batch:
            continue
        previous = folding.snapshot()
        before = folding.apply(batch)
        assert before == {spec: previous.get(spec) for spec in {r.event.routespec for r in batch}}
        assert previous == fold_all(RouteTable(), records[:start])  # snapshots stay as they were
        start += len(batch)
        assert folding.view is view and view == fold_all(RouteTable(), records[:start])
    assert folding.snapshot() == fold_all(RouteTable(), records)


def test_folding_in_place_refuses_a_gap_without_changing_anything() -> None:
    folding = FoldingTable(fold_all(RouteTable(), records_of([RouteAdded("/a/", "http://h:1")])))
    bad = [
        Record(seq=2, ts=TS, actor="t", event=RouteRemoved("/a/")),
        Record(seq=4, ts=TS, actor="t", event=RouteAdded("/b/", "http://h:2")),
    ]
    with pytest.raises(CorruptLogError, match="table is at seq 2, next record has seq 4"):
        folding.apply(bad)
    assert folding.seq == 1 and set(folding.view) == {"/a/"}
