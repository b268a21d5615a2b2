"""A follower asked for a seq it lacks looks for it now (``EtcdRouteLog.nudge``), against a real
etcd on asyncio and trio: a watcher in a long back-off after an outage tries again at once, a
watch stream that fell silent (a member cut off: here a relay that stops forwarding) is left
for the keys, and a watch whose member accepts the request but never creates it is given up.

Found by a CI run where, after a 3-member cluster got its quorum back, the nodes did not confirm
any change for over 100 s; each of these is a way a follower could sit that long."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from eventproxy import LogUnavailableError, RouteAdded, open_log
from eventproxy.log import etcd as etcd_log
from eventproxy.log.etcd import EtcdRouteLog
from eventproxy.serve import LKG_FILE, follow_log_node
from eventproxy.table import RouteTable
from eventproxy_dataplane import DataPlane, ProxySettings, RoutingTable
from eventproxy_dataplane.etcd import EtcdClient, EtcdOptions, EtcdUnavailableError
from support.etcd import Etcd, require_etcd, running_etcd

pytestmark = [pytest.mark.anyio, pytest.mark.services]

_prefixes = itertools.count()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    require_etcd()
    with running_etcd(tmp_path / "etcd") as e:
        yield e


async def until(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Check ``condition`` every 20 ms (a state with no event of its own), at most ``seconds``."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await anyio.sleep(0.02)


def added(i: int) -> RouteAdded:
    return RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{10000 + i}")


class Follower:
    """A task consuming ``log.watch(1)``, with a way to wait for a seq."""

    def __init__(self, log: EtcdRouteLog) -> None:
        self.log = log
        self.seen: list[int] = []
        self._changed = anyio.Event()

    async def run(self) -> None:
        async for record in self.log.watch(1):
            self.seen.append(record.seq)
            self._changed.set()
            self._changed = anyio.Event()

    async def reaches(self, seq: int, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            while not self.seen or self.seen[-1] < seq:
                await self._changed.wait()
            return True
        return False


class Relay:
    """A loopback TCP relay to etcd that can freeze: connections stay open, nothing moves."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._thawed = anyio.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._thawed = anyio.Event()

    async def _pump(self, src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        try:
            while True:  # (not ``async for``: an async generator left open irks trio)
                chunk = await src.receive()
                await self._thawed.wait()
                await dst.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            await anyio.aclose_forcefully(dst)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            await self._thawed.wait()  # a frozen relay accepts, and then says nothing
            try:
                server = await anyio.connect_tcp("127.0.0.1", self.target_port)
            except OSError:
                return
            async with server, anyio.create_task_group() as tg:
                tg.start_soon(self._pump, client, server)
                tg.start_soon(self._pump, server, client)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._handle)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()


async def test_a_nudge_ends_a_watchers_back_off_once_etcd_is_back(
    etcd: Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a back-off far longer than the test: only the nudge can bring the record in time
    monkeypatch.setattr(etcd_log, "back_off", lambda failures: 600.0)
    url = f"etcd://127.0.0.1:{etcd.client_port}/nudge{next(_prefixes)}"
    options = EtcdOptions(timeout=1.0)
    async with await open_log(url, etcd=options) as writer:
        await writer.append([added(1)])
        reader = await EtcdRouteLog.open(url, readonly=True, options=options)
        cut_off = anyio.Event()
        reader.on_connection = lambda connected, reason: None if connected else cut_off.set()
        follower = Follower(reader)
        async with reader, anyio.create_task_group() as tg:
            tg.start_soon(follower.run)
            assert await follower.reaches(1, 30)
            await anyio.to_thread.run_sync(etcd.stop)
            with anyio.fail_after(30):
                await cut_off.wait()  # the stream broke: the watcher is in its back-off
            await anyio.to_thread.run_sync(etcd.start)
            await writer.append([added(2)])
            assert not await follower.reaches(2, 1.0)  # asleep for 600 s
            reader.nudge(2)
            assert await follower.reaches(2, 20)
            reader.nudge(2)  # got it: nothing to do
            await writer.append([added(3)])
            assert await follower.reaches(3, 20)  # following by the watch again
            tg.cancel_scope.cancel()
    assert follower.seen == [1, 2, 3]


async def test_a_silent_watch_stream_is_left_for_the_keys_when_a_seq_is_asked_for(
    etcd: Etcd,
) -> None:
    prefix = f"nudge{next(_prefixes)}"
    direct = f"etcd://127.0.0.1:{etcd.client_port}/{prefix}"
    async with Relay(etcd.client_port).running() as relay:
        # the reader knows the relay first, then etcd itself
        via_relay = f"etcd://127.0.0.1:{relay.port},127.0.0.1:{etcd.client_port}/{prefix}"
        options = EtcdOptions(timeout=1.0)
        async with await open_log(direct) as writer:
            await writer.append([added(1)])
            reader = await EtcdRouteLog.open(via_relay, readonly=True, options=options)
            follower = Follower(reader)
            async with reader, anyio.create_task_group() as tg:
                tg.start_soon(follower.run)
                assert await follower.reaches(1, 30)
                relay.freeze()  # the stream stays open and brings nothing
                await writer.append([added(2)])
                assert not await follower.reaches(2, 2.0)
                reader.nudge(2)
                # after RECHECK_AFTER the reader reads the keys: the relay does not answer
                # (1 s), etcd does, and the watch is opened there
                assert await follower.reaches(2, 20)
                await writer.append([added(3)])
                assert await follower.reaches(3, 20)
                tg.cancel_scope.cancel()
    assert follower.seen == [1, 2, 3]


async def test_a_watch_the_member_never_creates_is_given_up() -> None:
    """A gateway that answers the watch request's headers and then nothing: the watch open
    fails within the client's timeout, naming the member, instead of waiting for ever."""

    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        async with EtcdClient(f"127.0.0.1:{port}", EtcdOptions(timeout=0.5)) as client:
            with anyio.fail_after(10), pytest.raises(EtcdUnavailableError) as info:
                async with client.watch(b"k", start_revision=1):
                    pass
        tg.cancel_scope.cancel()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "the watch was not created" in str(info.value)


async def test_a_node_asked_for_a_seq_after_an_outage_follows_at_once(
    etcd: Etcd, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``follow_log_node`` wires ``DataPlane.on_seq_wanted`` to the log's nudge: the hub's
    ``/health?min_seq`` long-poll (here ``wait_for_seq``, which that handler calls) brings the
    change although the node's watcher would sleep for 600 s."""
    monkeypatch.setattr(etcd_log, "back_off", lambda failures: 600.0)
    url = f"etcd://127.0.0.1:{etcd.client_port}/nudge{next(_prefixes)}"
    plane = DataPlane(RoutingTable(), ProxySettings())
    async with await open_log(url) as writer, anyio.create_task_group() as tg:
        await writer.append([added(1)])
        await tg.start(follow_log_node, url, plane)
        assert await plane.wait_for_seq(1, 30)
        await anyio.to_thread.run_sync(etcd.stop)
        await until(lambda: plane.status["source"] == "last-known-good")  # the watch broke
        await anyio.to_thread.run_sync(etcd.start)
        await writer.append([added(2)])
        assert await plane.wait_for_seq(2, 20)
        assert plane.status["source"] == "live"
        tg.cancel_scope.cancel()


async def test_a_node_keeps_serving_and_retries_when_the_log_fails_after_opening(
    etcd: Etcd, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """etcd answered the open and then failed the table's read (a cluster electing, or gone
    again): the node keeps its last-known-good table and tries again, instead of exiting."""
    url = f"etcd://127.0.0.1:{etcd.client_port}/nudge{next(_prefixes)}"
    async with await open_log(url) as writer:
        await writer.append([added(1), added(2)])
    state = tmp_path / "state"
    plane = DataPlane(RoutingTable(), ProxySettings())
    async with anyio.create_task_group() as tg:  # a first run leaves its last-known-good
        await tg.start(partial(follow_log_node, url, plane, state_dir=state))
        assert await plane.wait_for_seq(2, 30)
        await until((state / LKG_FILE).exists)
        tg.cancel_scope.cancel()
    real = EtcdRouteLog.load_table
    failures = []

    async def flaky(self: EtcdRouteLog, **kwargs: Any) -> RouteTable:
        if len(failures) < 2:
            failures.append(1)
            raise LogUnavailableError(f"route log {self.url}: read: etcd has no quorum (test)")
        return await real(self, **kwargs)

    monkeypatch.setattr(EtcdRouteLog, "load_table", flaky)
    plane = DataPlane(RoutingTable(), ProxySettings())
    async with anyio.create_task_group() as tg:
        await tg.start(partial(follow_log_node, url, plane, state_dir=state))
        assert plane.status["source"] == "last-known-good"
        assert plane.status["applied_seq"] == 2  # served while the reads fail
        await until(lambda: plane.status["source"] == "live")
        tg.cancel_scope.cancel()
    assert len(failures) == 2
