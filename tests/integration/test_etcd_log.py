"""What only the etcd route log has, against a real etcd (asyncio and trio): writers in separate
clients racing, a watch that survives an etcd restart, an etcd compaction and a dropped
connection, requests split under etcd's 1.5 MiB limit (10,000 routes), a wiped store detected,
credentials, and every failure naming the endpoint."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from eventproxy import (
    AppendConflictError,
    InvalidLogURLError,
    LogAccessError,
    LogResetError,
    LogUnavailableError,
    RouteAdded,
    RouteRemoved,
    open_log,
)
from eventproxy.log.etcd import EtcdRouteLog
from eventproxy_dataplane.etcd import (
    EtcdClient,
    EtcdOptions,
    EtcdOutcomeUnknownError,
    EtcdRequestTooLargeError,
    EtcdUnavailableError,
    put_op,
)
from support import free_port
from support.etcd import Etcd, require_etcd, running_etcd

pytestmark = [pytest.mark.anyio, pytest.mark.services]

_prefixes = itertools.count()


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A fresh etcd per test: these tests restart, compact and wipe it."""
    require_etcd()
    with running_etcd(tmp_path / "etcd") as e:
        yield e


def url_of(etcd: Etcd, prefix: str | None = None) -> str:
    return f"etcd://127.0.0.1:{etcd.client_port}/{prefix or f'log{next(_prefixes)}'}"


def added(i: int, **data: object) -> RouteAdded:
    return RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{10000 + i % 50000}", dict(data))


async def test_two_writers_in_separate_clients_stay_gap_free(etcd: Etcd) -> None:
    url = url_of(etcd)
    one, two = await open_log(url), await open_log(url)
    try:

        async def writer(log: object, base: int) -> None:
            assert isinstance(log, EtcdRouteLog)
            for i in range(15):
                await log.append([added(base + i), added(base + i + 500)])

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, one, 0)
            tg.start_soon(writer, two, 1000)
        records = await one.read()
        assert [r.seq for r in records] == list(range(1, 61))
        for i in range(0, 60, 2):  # each batch is contiguous: u{n} then u{n+500}
            a, b = records[i].event.routespec, records[i + 1].event.routespec
            assert int(b.strip("/").split("u")[-1]) == int(a.strip("/").split("u")[-1]) + 500
        assert [r.seq for r in await two.read()] == list(range(1, 61))
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_conflicting_plain_append_retries_and_expected_head_does_not(etcd: Etcd) -> None:
    url = url_of(etcd)
    async with await open_log(url) as one, await open_log(url) as two:
        await one.append([added(1)])
        # two writers both read head 1; with expected_head the loser raises at once ...
        assert await one.append([added(2)], expected_head=1) == [2]
        with pytest.raises(AppendConflictError, match="expected head 1"):
            await two.append([added(3)], expected_head=1)
        # ... a plain append is renumbered after the other writer's batch instead
        assert isinstance(two, EtcdRouteLog)
        real_commit = two._commit
        raced = False

        async def commit_after_a_rival(head, records):  # type: ignore[no-untyped-def]
            nonlocal raced
            if not raced:
                raced = True
                await one.append([added(4)])  # lands between two's head read and its txn
            return await real_commit(head, records)

        two._commit = commit_after_a_rival  # type: ignore[method-assign]
        assert await two.append([added(5)]) == [4]
        assert [(r.seq, r.event.routespec) for r in await one.read(3)] == [
            (3, "/user/u4/"),
            (4, "/user/u5/"),
        ]


async def test_a_writer_appends_on_the_head_it_remembers_and_notices_when_it_moved(
    etcd: Etcd,
) -> None:
    url = url_of(etcd, "remembered")
    async with await open_log(url) as one, await open_log(url) as two:
        assert isinstance(one, EtcdRouteLog)
        calls = 0
        real_call = one.client.call

        async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return await real_call(*args, **kwargs)

        one.client.call = counted  # type: ignore[method-assign]
        assert await one.append([added(1)]) == [1]
        assert await one.append([added(2)]) == [2]
        first_two = calls
        assert await one.append([added(3)]) == [3]
        assert calls == first_two + 1  # on the head it wrote: one txn, no head read
        assert one.appended([3]) == await one.read(3)
        assert one.appended([2]) is None  # only the last batch is kept
        # another writer moves the head: the stale txn fails, its failure branch returns the
        # head, and the batch is renumbered on it (no gap, nothing written twice)
        assert await two.append([added(4), added(5)]) == [4, 5]
        calls = 0
        assert await one.append([added(6)]) == [6]
        assert calls == 2
        with pytest.raises(AppendConflictError, match="expected head 5"):
            await one.append([added(7)], expected_head=5)
        assert [r.seq for r in await two.read()] == [1, 2, 3, 4, 5, 6]
        # the keys are wiped under a writer that remembers head 6: reported, nothing written
        await anyio.to_thread.run_sync(lambda: etcd.delete("remembered/", prefix=True))
        with pytest.raises(LogResetError, match="wiped or restored from an older backup"):
            await one.append([added(8)])
        assert await anyio.to_thread.run_sync(etcd.get_prefix, "remembered/") == {}


async def test_a_commit_whose_answer_was_lost_is_settled_by_fencing_the_head(etcd: Etcd) -> None:
    """The member dies with the txn sent: the batch may be in the log or may still land.
    The writer fences the head (so a queued txn can never apply) and finds out which."""
    url = url_of(etcd, "fenced")
    async with await open_log(url) as log:
        assert isinstance(log, EtcdRouteLog)
        await log.append([added(1)])
        real_txn = log.client.txn
        lose: str | None = None

        async def lossy(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal lose
            what, lose = lose, None
            if what == "after":  # applied, the answer lost
                await real_txn(*args, **kwargs)
            if what is not None:
                raise EtcdOutcomeUnknownError("etcd x: no answer (test)", endpoint="x")
            return await real_txn(*args, **kwargs)

        log.client.txn = lossy  # type: ignore[method-assign]
        lose = "after"
        assert await log.append([added(2)]) == [2]  # found in the log: not written twice
        lose = "before"  # never reached etcd: fenced, then renumbered on the same head
        assert await log.append([added(3)]) == [3]
        lose = "before"
        assert await log.append([added(4)], expected_head=3) == [4]
        assert [(r.seq, r.event.routespec) for r in await log.read()] == [
            (1, "/user/u1/"),
            (2, "/user/u2/"),
            (3, "/user/u3/"),
            (4, "/user/u4/"),
        ]


async def test_watch_survives_an_etcd_restart_and_an_etcd_compaction(etcd: Etcd) -> None:
    url = url_of(etcd)
    async with await open_log(url) as writer, await open_log(url, readonly=True) as reader:
        await writer.append([added(1)])
        seen: list[int] = []
        progress = anyio.Condition()

        async def consume() -> None:
            async for record in reader.watch(1):
                async with progress:
                    seen.append(record.seq)
                    progress.notify_all()

        async def wait_for(seq: int) -> None:
            with anyio.fail_after(30):
                async with progress:
                    while not seen or seen[-1] < seq:
                        await progress.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_for(1)
            # restart etcd while the reader watches; append while it reconnects
            await anyio.to_thread.run_sync(etcd.restart)
            await writer.append([added(2), added(3)])
            await wait_for(3)
            # compact etcd's history past the reader's revision while the reader is cut off
            await anyio.to_thread.run_sync(etcd.stop)
            await anyio.to_thread.run_sync(etcd.start)
            await writer.append([added(4)])
            await writer.append([RouteRemoved("/user/u1/")])
            async with EtcdClient(f"127.0.0.1:{etcd.client_port}") as client:
                status = await client.status()
                await client.compact(status.revision)
            await writer.append([added(6)])
            await wait_for(6)
            tg.cancel_scope.cancel()
        assert seen == [1, 2, 3, 4, 5, 6]


async def test_a_watch_whose_revision_was_compacted_reads_the_keys(etcd: Etcd) -> None:
    url = url_of(etcd)
    async with await open_log(url) as log:
        await log.append([added(1)])
        assert isinstance(log, EtcdRouteLog)
        start = (await log.client.status()).revision
        for i in range(2, 6):
            await log.append([added(i)])
        await log.client.compact((await log.client.status()).revision)
        # a watch resumed from an old revision (as after a long disconnect)
        watcher = log.watch(2)
        watcher._revision = start  # type: ignore[attr-defined]
        got = []
        with anyio.fail_after(20):
            async for record in watcher:
                got.append(record.seq)
                if record.seq == 5:
                    break
        assert got == [2, 3, 4, 5]


async def test_ten_thousand_routes_are_split_under_the_request_limit(etcd: Etcd) -> None:
    url = url_of(etcd)
    big = "x" * 200  # ~2.5 MiB per batch and per snapshot: over etcd's 1.5 MiB limit
    async with await open_log(url) as log:
        seqs = await log.append([added(i, pad=big) for i in range(10_000)])
        assert seqs == list(range(1, 10_001))
        table = await log.load_table()
        assert len(table) == 10_000 and table["/user/u9999/"].data == {"pad": big}
        result = await log.compact(retention=timedelta(0))
        assert (result.snapshot_seq, result.dropped) == (10_000, 10_000)
        await log.append([RouteRemoved("/user/u0/")])
    async with await open_log(url, readonly=True) as again:
        table = await again.load_table()
        assert len(table) == 9_999 and table.seq == 10_001
        snapshot = await again.snapshot()
        assert snapshot is not None and snapshot.seq == 10_000
        # nothing but the head, the snapshot (chunked) and the last batch are left
        assert isinstance(again, EtcdRouteLog)
        found = await again.client.range_prefix(again.prefix, keys_only=True)
        keys = [kv.key.decode().removeprefix(again.prefix.decode()) for kv in found.kvs]
        kinds = sorted(k.split("/", 1)[0] for k in keys)
        assert kinds.count("s") >= 2  # the snapshot went in several chunks
        assert [k for k in kinds if k != "s"] == ["b", "head", "snap"]


async def test_a_request_over_the_limit_is_refused_before_it_is_sent(etcd: Etcd) -> None:
    async with EtcdClient(f"127.0.0.1:{etcd.client_port}") as client:
        with pytest.raises(EtcdRequestTooLargeError, match="over the request limit") as info:
            await client.txn([], [put_op(b"k", b"v" * 2_000_000)])
        assert info.value.size > info.value.limit
        assert (await client.range(b"k")).kvs == []


async def test_a_wiped_store_is_reported_by_readers(etcd: Etcd) -> None:
    url = url_of(etcd, "wiped")
    async with await open_log(url) as writer:
        await writer.append([added(i) for i in range(5)])
    reader = await open_log(url, readonly=True)
    try:
        seen: list[int] = []
        failure: list[BaseException] = []
        got_all = anyio.Event()

        async def consume() -> None:
            try:
                async for record in reader.watch(1):
                    seen.append(record.seq)
                    if record.seq == 5:
                        got_all.set()
            except LogResetError as exc:
                failure.append(exc)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await got_all.wait()

                def wipe() -> None:
                    etcd.stop()
                    shutil.rmtree(etcd.data_dir)
                    etcd.start()

                await anyio.to_thread.run_sync(wipe)
        assert seen == [1, 2, 3, 4, 5]
        assert failure, "the watch did not report the wipe"
        message = str(failure[0])
        assert "wiped or restored from an older backup" in message
        assert "head went back from seq 5 to seq 0" in message
        # a new history written after the wipe is refused too, not silently adopted
        with pytest.raises(LogResetError):
            async for _ in reader.watch(6):
                pass  # pragma: no cover
    finally:
        await reader.aclose()


async def test_unreachable_endpoints_are_named(tmp_path: Path) -> None:
    dead = [free_port(), free_port()]
    url = f"etcd://127.0.0.1:{dead[0]},127.0.0.1:{dead[1]}/p"
    with pytest.raises(LogUnavailableError) as info:
        await open_log(url)
    message = str(info.value)
    for port in dead:
        assert f"http://127.0.0.1:{port}: unreachable" in message


async def test_failover_to_the_next_endpoint(etcd: Etcd) -> None:
    dead = free_port()
    url = f"etcd://127.0.0.1:{dead},127.0.0.1:{etcd.client_port}/failover"
    async with await open_log(url) as log:
        assert await log.append([added(1)]) == [1]
        assert await log.head() == 1


async def test_credentials_never_go_in_the_url(tmp_path: Path) -> None:
    with pytest.raises(InvalidLogURLError) as info:
        await open_log("etcd://root:hunter2@127.0.0.1:2379/p")
    assert "hunter2" not in str(info.value) and "credentials never go in the URL" in str(info.value)
    assert "hunter2" not in repr(EtcdOptions(username="root", password="hunter2"))


async def test_user_password_auth(etcd: Etcd) -> None:
    def enable_auth() -> None:
        etcd.call("/v3/auth/user/add", {"name": "root", "password": "s3cret"})
        etcd.call("/v3/auth/role/add", {"name": "root"})
        etcd.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        etcd.call("/v3/auth/enable", {})

    await anyio.to_thread.run_sync(enable_auth)
    url = url_of(etcd, "auth")
    good = EtcdOptions(username="root", password="s3cret")
    async with await open_log(url, etcd=good) as log:
        assert await log.append([added(1)]) == [1]
        assert isinstance(log, EtcdRouteLog)
        # an expired token (here: a forged one) is renewed once, transparently
        log.client._tokens = {e: "expired.1" for e in log.client.endpoints}
        assert await log.append([added(2)]) == [2]
        got = []
        with anyio.fail_after(10):
            log.client._tokens = {e: "expired.2" for e in log.client.endpoints}
            async for record in log.watch(1):
                got.append(record.seq)
                if record.seq == 2:
                    break
        assert got == [1, 2]
    with pytest.raises(LogAccessError) as info:
        await open_log(url, etcd=EtcdOptions(username="root", password="wrong"))
    assert "refused" in str(info.value) and "wrong" not in str(info.value)
    assert f"127.0.0.1:{etcd.client_port}" in str(info.value)
    with pytest.raises(LogAccessError, match="requires authentication"):
        await open_log(url, etcd=EtcdOptions())


async def test_a_stopped_cluster_fails_appends_clearly_and_nothing_is_half_applied(
    etcd: Etcd,
) -> None:
    url = url_of(etcd)
    async with await open_log(url) as log:
        await log.append([added(1)])
        await anyio.to_thread.run_sync(etcd.stop)
        with pytest.raises(LogUnavailableError, match="unreachable"):
            await log.append([added(2)])
        await anyio.to_thread.run_sync(etcd.start)
        assert await log.head() == 1
        assert await log.append([added(3)]) == [2]


def test_etcd_client_errors_are_data_plane_errors() -> None:
    from eventproxy_dataplane import DataPlaneError

    assert issubclass(EtcdUnavailableError, DataPlaneError)


def _eventproxy(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventproxy.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_credentials_from_flags_and_environment(etcd: Etcd, tmp_path: Path) -> None:
    etcd.call("/v3/auth/user/add", {"name": "root", "password": "pa55word"})
    etcd.call("/v3/auth/role/add", {"name": "root"})
    etcd.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
    etcd.call("/v3/auth/enable", {})
    url = url_of(etcd, "cli")

    async def write() -> None:
        options = EtcdOptions(username="root", password="pa55word")
        async with await open_log(url, etcd=options) as log:
            await log.append([added(1), added(2)])

    anyio.run(write)
    secret = tmp_path / "password"
    secret.write_text("pa55word\n")
    flags = _eventproxy(
        "log", "--json", "--log-url", url, "--etcd-username", "root",
        "--etcd-password-file", str(secret),
    )  # fmt: skip
    assert flags.returncode == 0, flags.stderr
    assert [e["seq"] for e in json.loads(flags.stdout)["events"]] == [1, 2]
    env = {"EVENTPROXY_ETCD_USERNAME": "root", "EVENTPROXY_ETCD_PASSWORD": "pa55word"}
    from_env = _eventproxy("replay", "--json", "--log-url", url, env=env)
    assert from_env.returncode == 0, from_env.stderr
    assert len(json.loads(from_env.stdout)["routes"]) == 2
    wrong = _eventproxy(
        "log", "--log-url", url, env={**env, "EVENTPROXY_ETCD_PASSWORD": "nope-nope"}
    )
    assert wrong.returncode == 1
    assert "refused" in wrong.stderr and "nope-nope" not in wrong.stderr
    for command in ("log", "audit", "replay", "compact", "dataplane"):
        helped = _eventproxy(command, "--help", env=env)
        assert "--etcd-password-file" in helped.stdout and "pa55word" not in helped.stdout
        assert "--etcd-password " not in helped.stdout  # no password on the command line
