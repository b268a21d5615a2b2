"""The chart's etcd auth-setup script (``charts/eventproxy/files/etcd_auth_setup.py``, run by
its post-install/post-upgrade Job) against a real etcd on 127.0.0.1: it turns authentication
on with the Secret's users, re-runs are harmless, a changed password is applied, and a wrong
root password is refused with a message saying what to do.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.etcd import Etcd, require_etcd, running_etcd

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "charts" / "eventproxy" / "files" / "etcd_auth_setup.py"

pytestmark = pytest.mark.services


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    require_etcd()
    with running_etcd(tmp_path / "etcd") as server:
        yield server


def write_secret(directory: Path, **passwords: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for user, password in passwords.items():
        (directory / f"{user}-password").write_text(password + "\n")
    return directory


def run_setup(etcd: Etcd, auth_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCD_ENDPOINTS": etcd.url, "ETCD_AUTH_DIR": str(auth_dir)}
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def call(etcd: Etcd, path: str, body: dict[str, object], token: str | None = None) -> int:
    """POST to etcd's gateway; the HTTP status."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    request = urllib.request.Request(etcd.url + path, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def login(etcd: Etcd, user: str, password: str) -> str | None:
    request = urllib.request.Request(
        etcd.url + "/v3/auth/authenticate",
        json.dumps({"name": user, "password": password}).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return str(json.loads(reply.read())["token"])
    except urllib.error.HTTPError:
        return None


def can_write(etcd: Etcd, token: str | None) -> bool:
    put = {"key": b64("eventproxy/probe"), "value": b64("x")}
    return call(etcd, "/v3/kv/put", put, token) == 200


def can_read(etcd: Etcd, token: str | None) -> bool:
    return call(etcd, "/v3/kv/range", {"key": b64("eventproxy/probe")}, token) == 200


def test_auth_setup_turns_authentication_on_idempotently(etcd: Etcd, tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "secret", root="r00t", eventproxy="rw-pass", reader="ro-pass")
    assert can_write(etcd, None)  # before: anyone may write

    first = run_setup(etcd, secret)
    assert first.returncode == 0, first.stderr
    assert "authentication is on" in first.stdout

    assert not can_write(etcd, None) and not can_read(etcd, None)
    writer = login(etcd, "eventproxy", "rw-pass")
    reader = login(etcd, "reader", "ro-pass")
    assert writer and reader
    assert can_write(etcd, writer) and can_read(etcd, writer)
    assert can_read(etcd, reader) and not can_write(etcd, reader)

    again = run_setup(etcd, secret)
    assert again.returncode == 0, again.stderr
    assert "users and passwords are up to date" in again.stdout
    assert login(etcd, "eventproxy", "rw-pass")


def test_a_changed_password_in_the_secret_is_applied(etcd: Etcd, tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "secret", root="r00t", eventproxy="rw-pass", reader="ro-pass")
    assert run_setup(etcd, secret).returncode == 0
    write_secret(secret, reader="rotated")
    done = run_setup(etcd, secret)
    assert done.returncode == 0, done.stderr
    assert login(etcd, "reader", "rotated")
    assert login(etcd, "reader", "ro-pass") is None
    assert login(etcd, "eventproxy", "rw-pass")  # the others untouched


def test_a_replaced_root_password_is_refused_clearly(etcd: Etcd, tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "secret", root="r00t", eventproxy="rw-pass", reader="ro-pass")
    assert run_setup(etcd, secret).returncode == 0
    write_secret(secret, root="something-else", eventproxy="new")
    done = run_setup(etcd, secret)
    assert done.returncode == 1
    assert "refuses the root password of the Secret" in done.stderr
    assert "Put the old root-password back" in done.stderr
    assert login(etcd, "eventproxy", "rw-pass")  # nothing changed


@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_a_bad_secret_is_named_and_changes_nothing(
    etcd: Etcd, tmp_path: Path, problem: str
) -> None:
    secret = write_secret(tmp_path / "secret", root="r00t", eventproxy="rw-pass")
    if problem == "empty":
        write_secret(secret, reader="")
    done = run_setup(etcd, secret)
    assert done.returncode == 1
    assert "the password of 'reader'" in done.stderr
    assert can_write(etcd, None)  # authentication still off: nothing half-applied


def test_no_endpoint_answering_is_reported(tmp_path: Path) -> None:
    from support import free_port

    secret = write_secret(tmp_path / "secret", root="a", eventproxy="b", reader="c")
    env = {
        **os.environ,
        "ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()}",
        "ETCD_AUTH_DIR": str(secret),
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "no etcd endpoint answered" in done.stderr
