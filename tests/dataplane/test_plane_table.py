"""``DataPlane.apply`` is the one way to change the table; its bookkeeping stays in step.

A Hypothesis state machine applies random batches (upserts, removals, bad rules, whole-table
swaps) and checks after each: the generation moved by one, the plane knows exactly the servers
its routers send to (what the pool retires is derived from it), and no activity record or
counter survives for a router that is gone.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from eventproxy_dataplane import DataPlane, RouterSpec, ServerSpec, ServiceSpec
from support.backends import make_table

NAMES = [f"r{i}" for i in range(6)]
URLS = [f"http://127.0.0.1:{9000 + i}" for i in range(4)]

upsert = st.tuples(
    st.sampled_from(NAMES),
    st.lists(st.sampled_from(URLS), min_size=0, max_size=2, unique=True),
    st.booleans(),  # a rule the table refuses
)
batch = st.tuples(st.lists(upsert, max_size=4), st.lists(st.sampled_from(NAMES), max_size=3))


def spec(name: str, urls: list[str], bad: bool) -> tuple[RouterSpec, ServiceSpec]:
    rule = "PathPrefix(`/x" if bad else f"PathPrefix(`/{name}/`)"
    return (
        RouterSpec(name=name, rule=rule, service=name),
        ServiceSpec(name=name, servers=tuple(ServerSpec(u) for u in urls)),
    )


def expected_users(plane: DataPlane) -> Counter[str]:
    users: Counter[str] = Counter()
    for name in plane.table.routers():
        route = plane.table.route(name)
        assert route is not None
        users.update({s.url for s in route.service.servers})
    return users


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(batch, st.just("swap")), max_size=12))
def test_bookkeeping_follows_every_batch(steps: list[object]) -> None:
    plane = DataPlane()
    for step in steps:
        # every router that exists has activity and counters before the step
        for name in plane.table.routers():
            plane._state.activity.touch(name)
            plane._state.metrics.count_response(name, 200)
        generation = plane.generation
        if step == "swap":
            plane.set_table(make_table({"r0": ("PathPrefix(`/r0/`)", [URLS[0]])}))
        else:
            assert isinstance(step, tuple)
            ups, removals = step
            problems = plane.apply([spec(*u) for u in ups], removals)
            assert len(problems) == sum(1 for u in ups if u[2])
        assert plane.generation == generation + 1
        assert Counter(plane._users) == expected_users(plane)
        live = set(plane.table.routers())
        assert set(plane.activity()) <= live
        assert plane._state.metrics.routers() <= live
        assert len(plane._state.activity) <= len(live)


def test_set_table_leaves_unchanged_routers_alone() -> None:
    plane = DataPlane(make_table({"a": ("PathPrefix(`/a/`)", [URLS[0]])}))
    plane._state.activity.touch("a")
    plane.set_table(
        make_table({"a": ("PathPrefix(`/a/`)", [URLS[0]]), "b": ("PathPrefix(`/b/`)", [URLS[1]])})
    )
    assert set(plane.activity()) == {"a"}  # a did not change: its activity is kept
    assert plane.generation == 2
    plane.set_table(make_table({"a": ("PathPrefix(`/a/`)", [URLS[2]])}))
    assert plane.activity() == {}  # a now sends to another server: a fresh start
    assert dict(plane._users) == {URLS[2]: 1}
