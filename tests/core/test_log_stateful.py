"""Stateful property test: any sequence of appends, compactions and reopenings keeps the log
equal to a plain-dict model, and replay from snapshot + tail equal to replay from zero.

Runs for the memory and file backends, on asyncio and on trio (through an anyio portal, since
hypothesis drives the steps synchronously).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from eventproxy import Record, RouteAdded, RouteLog, RouteRemoved, RouteTable, fold_all, open_log
from eventproxy.log import forget_memory_logs

_names = itertools.count()
specs = st.sampled_from(["/", "/user/a/", "/user/b/", "/user/%C3%A9/", "h.example/user/a/"])
events = st.one_of(
    st.builds(
        RouteAdded,
        specs,
        st.sampled_from(["http://127.0.0.1:1", "http://127.0.0.1:2"]),
        st.fixed_dictionaries({"user": st.sampled_from(["a", "b"]), "flag": st.booleans()}),
    ),
    st.builds(RouteRemoved, specs),
)


class LogMachine(RuleBasedStateMachine):
    backend: tuple[str, dict[str, Any]] = ("asyncio", {})
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal(*self.backend)
        self.portal = self._portal_cm.__enter__()
        self.tmp = Path(tempfile.mkdtemp(prefix="eventproxy-stateful-"))
        if self.kind == "memory":
            self.url = f"memory://stateful-{next(_names)}"
        else:
            self.url = f"file://{self.tmp / 'routes.log'}"
        self.log: RouteLog = self.portal.call(open_log, self.url)
        self.model: dict[str, tuple[str, dict[str, Any]]] = {}
        self.history: list[Record] = []  # every record ever appended, from seq 1

    @rule(batch=st.lists(events, min_size=1, max_size=5))
    def append(self, batch: list[Any]) -> None:
        seqs = self.portal.call(self.log.append, batch)
        assert seqs == list(range(len(self.history) + 1, len(self.history) + 1 + len(batch)))
        self.history.extend(self.portal.call(self.log.read, seqs[0]))
        for event in batch:
            if isinstance(event, RouteAdded):
                self.model[event.routespec] = (event.target, event.data)
            else:
                self.model.pop(event.routespec, None)

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        cut = data.draw(st.integers(0, len(self.history) - 1))
        self.portal.call(lambda: self.log.compact(retention=timedelta(0), now=self.history[cut].ts))

    @rule()
    def reopen(self) -> None:
        self.portal.call(self.log.aclose)
        self.log = self.portal.call(open_log, self.url)

    @invariant()
    def table_equals_model_and_replay_from_zero(self) -> None:
        table: RouteTable = self.portal.call(self.log.load_table)
        assert {k: (v.target, v.data) for k, v in table.items()} == self.model
        assert table == fold_all(RouteTable(), self.history)
        assert self.portal.call(self.log.head) == len(self.history)
        snapshot = self.portal.call(self.log.snapshot)
        base = snapshot.table if snapshot is not None else RouteTable()
        assert base == fold_all(RouteTable(), self.history[: base.seq])

    def teardown(self) -> None:
        self.portal.call(self.log.aclose)
        self._portal_cm.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)
        forget_memory_logs()


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("kind", ["memory", "file"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_log_state_machine(kind: str, backend: str) -> None:
    machine = type(
        f"LogMachine_{kind}_{backend}", (LogMachine,), {"kind": kind, "backend": (backend, {})}
    )
    run_state_machine_as_test(machine, settings=SETTINGS)
