"""pytest plugin of the conformance suite: fixtures, the ``proxy_difference`` marker, a report.

Loaded automatically (entry point ``pytest11: eventproxy``) wherever eventproxy is installed. It
is inert unless a test asks for one of its ``conformance_*`` fixtures, or the command line asks
for ``--conformance-report``.

* ``@pytest.mark.proxy_difference("configurable-http-proxy", reason="...")`` on a suite test (or
  on one ``pytest.param`` case) turns it into a *strict* xfail for that implementation (or for
  ``implementation[variant]``): the difference is documented, and if it ever goes away the
  suite fails with XPASS so the marker gets removed.
* ``@pytest.mark.conformance_needs("foreign_routes")`` on a suite test names a feature it needs
  (``FEATURES``; tests using ``conformance_host_proxy`` need ``host_routing``). A project marks
  the ``pytest.param`` of its factory fixture (or a test module) with
  ``conformance_lacks("foreign_routes", label="my-proxy[v]", reason="...")`` for a configuration
  that can never have it: those tests are then not generated (deselected, not skipped), and
  the report lists them as not applicable with ``reason``. A lack declared only at run time
  (``ProxyUnderTest.capabilities``, ``restart=None``, ``add_foreign_route=None``) still skips.
* ``--conformance-report=PATH`` writes one JSON record per (test, implementation): outcome,
  reason, detail; ``tests/integration/conformance_report.py`` turns it into a Markdown table.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ._backends import EchoBackend
from ._contract import ProxyFactory, ProxyUnderTest, close_jupyterhub_http_client

__all__ = ["Backends", "conformance_key", "record_detail"]

# The suite is imported later, by the projects' test modules: give it pytest's assertion messages.
pytest.register_assert_rewrite("eventproxy.testing.suite")

MARKER = "proxy_difference"
NEEDS = "conformance_needs"
LACKS = "conformance_lacks"
#: what a suite test may need and a configuration may lack
FEATURES = frozenset({"check_routes", "foreign_routes", "host_routing", "last_activity", "restart"})
_label_key = pytest.StashKey[str]()
_records_key = pytest.StashKey[list[dict[str, Any]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eventproxy-conformance")
    group.addoption(
        "--conformance-report",
        metavar="PATH",
        default=None,
        help="write the JupyterHub proxy conformance results (JSON) to PATH",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*implementations, reason): a documented difference of these proxy "
        "implementations (name or name[variant]); the test becomes a strict xfail for them",
    )
    config.addinivalue_line(
        "markers",
        f"{NEEDS}(*features): a conformance test needing these features "
        f"({', '.join(sorted(FEATURES))})",
    )
    config.addinivalue_line(
        "markers",
        f"{LACKS}(*features, label, reason): this configuration can never have these features; "
        "the conformance tests needing them are not generated",
    )
    config.stash[_records_key] = []


# -- which tests a configuration cannot run --------------------------------------------------


def _features(mark: pytest.Mark, where: str) -> set[str]:
    unknown = sorted(str(f) for f in mark.args if f not in FEATURES)
    if unknown or not mark.args:
        raise pytest.UsageError(
            f"{where}: @pytest.mark.{mark.name} names "
            + (f"unknown feature(s) {unknown}" if unknown else "no feature")
            + f"; the features are {sorted(FEATURES)}"
        )
    return {str(f) for f in mark.args}


def _needs(item: pytest.Item) -> set[str]:
    needs = set()
    for mark in item.iter_markers(NEEDS):
        needs |= _features(mark, item.nodeid)
    if "conformance_host_proxy" in getattr(item, "fixturenames", ()):
        needs.add("host_routing")
    return needs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the conformance tests needing a feature their configuration lacks."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        lacking = [m for m in item.iter_markers(LACKS) if _features(m, item.nodeid) & _needs(item)]
        if not lacking:
            kept.append(item)
            continue
        dropped.append(item)
        mark = lacking[0]
        label = mark.kwargs.get("label")
        if label:
            missing = sorted(_features(mark, item.nodeid) & _needs(item))
            config.stash[_records_key].append(
                {
                    "test": conformance_key(item),
                    "implementation": str(label),
                    "outcome": "not generated",
                    "reason": str(mark.kwargs.get("reason") or f"lacks {', '.join(missing)}"),
                    "detail": "",
                    "doc": _summary(item),
                    "nodeid": item.nodeid,
                }
            )
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# -- which tests are different for which implementation ------------------------------------


def conformance_key(item: pytest.Item) -> str:
    """``test_name`` or ``test_name[case]``: the suite's name for a test, without the project's
    own parametrisation (``case`` is the ``conformance_id`` of the suite's parameters)."""
    name = getattr(item, "originalname", item.name)
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        ids = [
            str(v.conformance_id)
            for v in callspec.params.values()
            if getattr(v, "conformance_id", None) is not None
        ]
        if ids:
            return f"{name}[{'-'.join(ids)}]"
    return str(name)


def _difference(item: pytest.Item, put: ProxyUnderTest) -> str | None:
    for mark in item.iter_markers(MARKER):
        if put.implementation in mark.args or put.label in mark.args:
            return str(mark.kwargs.get("reason", "documented difference"))
    key = conformance_key(item)
    return put.known_differences.get(key) or put.known_differences.get(key.split("[", 1)[0])


def _adopt(request: pytest.FixtureRequest, put: ProxyUnderTest) -> None:
    """Tag the test with the implementation; make a documented difference a strict xfail."""
    item = request.node
    item.stash[_label_key] = put.label
    reason = _difference(item, put)
    if reason is not None:
        item.add_marker(
            pytest.mark.xfail(strict=True, reason=f"documented difference of {put.label}: {reason}")
        )


def record_detail(request: pytest.FixtureRequest, detail: str) -> None:
    """Attach a short note (e.g. "rejected with ValueError") to this test's report entry."""
    request.node.user_properties.append(("conformance_detail", detail))


# -- fixtures ---------------------------------------------------------------------------------


class Backends:
    """Echo backends started on demand for one test, stopped at its end."""

    def __init__(self) -> None:
        self._running: list[EchoBackend] = []

    async def start(self, name: str) -> EchoBackend:
        backend = await EchoBackend(name).start()
        self._running.append(backend)
        return backend

    async def stop_all(self) -> None:
        for backend in self._running:
            await backend.stop()
        self._running.clear()


@pytest.fixture
async def conformance_backends() -> AsyncIterator[Backends]:
    """Start echo backends with ``await conformance_backends.start("name")``."""
    backends = Backends()
    try:
        yield backends
    finally:
        await backends.stop_all()


@pytest.fixture
async def conformance_hub(conformance_backends: Backends) -> EchoBackend:
    """The stand-in hub: an echo backend named ``hub`` (the proxy's error target and hub route)."""
    return await conformance_backends.start("hub")


@asynccontextmanager
async def _started(
    request: pytest.FixtureRequest,
    factory: ProxyFactory,
    hub: EchoBackend,
    *,
    host_routing: bool,
) -> AsyncIterator[ProxyUnderTest]:
    async with factory(host_routing=host_routing, hub_url=f"{hub.url}/hub/") as put:
        _adopt(request, put)
        try:
            yield put
        finally:
            await close_jupyterhub_http_client()


@pytest.fixture
async def conformance_proxy(
    request: pytest.FixtureRequest,
    conformance_proxy_factory: ProxyFactory,
    conformance_hub: EchoBackend,
) -> AsyncIterator[ProxyUnderTest]:
    """The implementation under test, started with path routing (``host_routing = False``)."""
    async with _started(
        request, conformance_proxy_factory, conformance_hub, host_routing=False
    ) as put:
        yield put


@pytest.fixture
async def conformance_host_proxy(
    request: pytest.FixtureRequest,
    conformance_proxy_factory: ProxyFactory,
    conformance_hub: EchoBackend,
) -> AsyncIterator[ProxyUnderTest]:
    """The implementation under test, started with host routing (``host_routing = True``)."""
    async with _started(
        request, conformance_proxy_factory, conformance_hub, host_routing=True
    ) as put:
        if not put.capabilities.host_routing:
            pytest.skip(f"{put.label} declares no host routing")
        yield put


# -- the report -------------------------------------------------------------------------------


def _outcome(report: pytest.TestReport) -> tuple[str, str]:
    wasxfail = getattr(report, "wasxfail", None)
    if report.skipped and wasxfail is not None:
        return "xfailed", str(wasxfail)
    if report.passed and wasxfail is not None:
        return "xpassed", str(wasxfail)
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        return "skipped", reason.removeprefix("Skipped: ")
    if report.failed:
        text = str(report.longrepr)
        if text.startswith("[XPASS(strict)]"):
            return "xpassed", text.removeprefix("[XPASS(strict)]").strip()
        crash = getattr(report.longrepr, "reprcrash", None)
        message = getattr(crash, "message", "") or text.strip().splitlines()[-1:]
        return "failed", str(message).splitlines()[0][:300] if message else ""
    return "passed", ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    label = item.stash.get(_label_key, None)
    if label is None:
        return report
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome, reason = _outcome(report)
        item.config.stash[_records_key].append(
            {
                "test": conformance_key(item),
                "implementation": label,
                "outcome": outcome,
                "reason": reason,
                "detail": "; ".join(
                    str(v) for k, v in report.user_properties if k == "conformance_detail"
                ),
                "doc": _summary(item),
                "nodeid": item.nodeid,
            }
        )
    return report


def _summary(item: pytest.Item) -> str:
    """The first paragraph of the test's docstring, on one line."""
    doc = (getattr(item, "function", None) and item.function.__doc__) or ""  # type: ignore[attr-defined]
    return " ".join(doc.strip().split("\n\n")[0].split())


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--conformance-report", None)
    if not path:
        return
    records = session.config.stash.get(_records_key, [])
    Path(path).write_text(json.dumps({"records": records}, indent=1, ensure_ascii=False) + "\n")
