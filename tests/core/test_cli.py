"""The eventproxy CLI on a real file log: log, audit, replay, compact, with and without --json."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from eventproxy import RouteAdded, RouteRemoved
from eventproxy.cli import main
from eventproxy.log import FileRouteLog


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    path = tmp_path / "routes.log"

    async def fill() -> None:
        async with await FileRouteLog.open(path) as log:
            await log.append(
                [
                    RouteAdded(
                        "/user/alice", "http://127.0.0.1:9001", {"user": "alice", "flag": True}
                    )
                ],
                actor="hub",
            )
            await log.append([RouteAdded("/user/bob", "http://127.0.0.1:9002", {"user": "bob"})])
            await log.append([RouteRemoved("/user/alice/")], actor="hub")
            await log.append([RouteAdded("/user/alice/", "http://127.0.0.1:9003", {})])

    anyio.run(fill)
    return f"file://{path}"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_log_human_and_json(log_url: str) -> None:
    code, text = run("log", "--log-url", log_url)
    assert code == 0
    lines = text.splitlines()
    assert len(lines) == 4
    assert "added    /user/alice/ -> http://127.0.0.1:9001" in lines[0] and "hub" in lines[0]
    assert "removed  /user/alice/" in lines[2]
    code, text = run("log", "--log-url", log_url, "--json", "--routespec", "/user/alice")
    doc = json.loads(text)
    assert [e["seq"] for e in doc["events"]] == [1, 3, 4]
    assert doc["events"][0]["data"] == {"user": "alice", "flag": True}
    _, text = run("log", "--log-url", log_url, "--json", "--limit", "1")
    assert [e["seq"] for e in json.loads(text)["events"]] == [4]


def test_log_time_filter(log_url: str) -> None:
    _, text = run("log", "--log-url", log_url, "--json")
    events = json.loads(text)["events"]
    _, text = run("log", "--log-url", log_url, "--json", "--since", events[2]["ts"])
    assert [e["seq"] for e in json.loads(text)["events"]] == [3, 4]
    _, text = run("log", "--log-url", log_url, "--json", "--until", events[0]["ts"])
    assert [e["seq"] for e in json.loads(text)["events"]] == [1]


def test_audit(log_url: str) -> None:
    code, text = run("audit", "/user/alice/", "--log-url", log_url)
    assert code == 0
    assert "now (seq 4): http://127.0.0.1:9003" in text
    code, text = run("audit", "/user/alice", "--log-url", log_url, "--json")
    doc = json.loads(text)
    assert [e["type"] for e in doc["events"]] == ["route_added", "route_removed", "route_added"]
    assert doc["current"]["target"] == "http://127.0.0.1:9003"


def test_replay_at_seq_and_time(log_url: str) -> None:
    code, text = run("replay", "--at", "2", "--log-url", log_url, "--json")
    routes = json.loads(text)["routes"]
    assert {k: v["target"] for k, v in routes.items()} == {
        "/user/alice/": "http://127.0.0.1:9001",
        "/user/bob/": "http://127.0.0.1:9002",
    }
    assert routes["/user/alice/"]["data"] == {"user": "alice", "flag": True}
    code, text = run("replay", "--log-url", log_url)
    assert code == 0 and "routing table at seq 4: 2 route(s)" in text
    _, events = run("log", "--log-url", log_url, "--json")
    ts3 = json.loads(events)["events"][2]["ts"]
    _, text = run("replay", "--until", ts3, "--log-url", log_url, "--json")
    assert list(json.loads(text)["routes"]) == ["/user/bob/"]


def test_compact_then_replay_is_unchanged(log_url: str) -> None:
    _, before = run("replay", "--log-url", log_url, "--json")
    code, text = run("compact", "--retention", "0", "--log-url", log_url)
    assert code == 0 and "compacted 4 event(s) into a snapshot at seq 4" in text
    _, after = run("replay", "--log-url", log_url, "--json")
    assert json.loads(after) == json.loads(before)
    code, text = run("compact", "--retention", "7d", "--log-url", log_url)
    assert "nothing older than 7 days" in text


def test_errors_are_clear(log_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("replay", "--at", "99", "--log-url", log_url)[0] == 1
    assert "beyond the log's head (seq 4)" in capsys.readouterr().err
    assert run("log", "--log-url", f"file://{tmp_path}/missing.log")[0] == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("audit", "/user/../hub/", "--log-url", log_url)
    assert "dot segment" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("compact", "--retention", "soon", "--log-url", log_url)
    assert "is not a duration" in capsys.readouterr().err


def test_compact_while_a_writer_holds_the_log(
    log_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = log_url.removeprefix("file://")

    async def hold() -> int:
        async with await FileRouteLog.open(path):
            return await anyio.to_thread.run_sync(run, "compact", "--log-url", log_url)

    code, _ = anyio.run(hold)
    assert code == 1
    assert "already open for writing" in capsys.readouterr().err


def test_console_script_help() -> None:
    for command in ("log", "audit", "replay", "compact"):
        result = subprocess.run(
            [sys.executable, "-m", "eventproxy.cli", command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "--log-url" in result.stdout and "--json" in result.stdout


def test_durations() -> None:
    from eventproxy.cli import parse_duration

    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("90s") == timedelta(seconds=90)


# -- a closed output pipe (``eventproxy replay | head``) ----------------------------------------
def run_into_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout a pipe whose reading end is already closed: every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            argv, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "command",
    [
        ["log"], ["log", "--json"], ["audit", "/user/bob/"], ["replay"], ["replay", "--json"],
        ["compact", "--retention", "0"], ["log", "--help"],
    ],
    ids=lambda c: " ".join(c),
)  # fmt: skip
def test_a_closed_pipe_ends_every_command_quietly(log_url: str, command: list[str]) -> None:
    done = run_into_closed_pipe(
        [sys.executable, "-m", "eventproxy.cli", *command, "--log-url", log_url]
    )
    assert done.returncode in (0, 141), done.stderr
    assert done.stderr == ""  # no traceback, no "error: [Errno 32] Broken pipe"


def test_replay_into_head_stops_quietly(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"

    async def fill() -> None:
        async with await FileRouteLog.open(path) as log:
            await log.append(
                [RouteAdded(f"/user/u{i}/", "http://127.0.0.1:9") for i in range(3000)]
            )

    anyio.run(fill)
    # like `eventproxy replay | head -1`: far more output than a pipe buffer, reader goes away
    with subprocess.Popen(
        [sys.executable, "-m", "eventproxy.cli", "replay", "--log-url", f"file://{path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        first = child.stdout.readline()
        child.stdout.close()
        err = child.stderr.read()
        code = child.wait(60)
    assert first.startswith(b"routing table at seq 3000")
    assert code == 141 and err == b""


def test_a_data_plane_node_with_a_closed_stdout_exits_quietly(tmp_path: Path) -> None:
    config = tmp_path / "dynamic.toml"
    config.write_text("[http]\n")
    for argv in (
        [sys.executable, "-m", "eventproxy_dataplane", "--config", str(config)],
        [sys.executable, "-m", "eventproxy.cli", "dataplane", "--config", str(config)],
    ):
        done = run_into_closed_pipe([*argv, "--listen", "127.0.0.1:0", "--log-level", "ERROR"])
        assert (done.returncode, done.stderr) == (141, ""), argv
