"""Turn on etcd's client authentication with the users and passwords of a Secret (idempotent).

Run by the chart's auth-setup Job after every install and upgrade, with the standard library
only (the eventproxy image's Python), through etcd's v3 JSON gateway:

* users ``root`` (this script only), ``eventproxy`` (read-write: the hub, projectors) and
  ``reader`` (read-only: traefik, data-plane nodes), each with the password in
  ``$ETCD_AUTH_DIR/<user>-password``; a changed password in the Secret is set on the next run;
* roles ``eventproxy-readwrite`` and ``eventproxy-read`` over the whole keyspace (this etcd
  holds only eventproxy's log and traefik's keys);
* then ``auth enable``. Once it is on, the script logs in as root, so a re-run works.

Environment: ``ETCD_ENDPOINTS`` (comma-separated ``http(s)://host:port``), ``ETCD_AUTH_DIR``,
and with TLS ``ETCD_CA_FILE``, ``ETCD_CERT_FILE``, ``ETCD_KEY_FILE``. Exit status 0 when done,
1 with a message naming what failed (the Job retries while etcd is still starting).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

USERS = {"eventproxy": "eventproxy-readwrite", "reader": "eventproxy-read"}
ROLES = {"eventproxy-readwrite": "READWRITE", "eventproxy-read": "READ"}
ALL_KEYS = base64.b64encode(b"\0").decode()  # key "\0" with range_end "\0": every key


class SetupError(Exception):
    """A step failed; the message says which and what etcd answered."""


class Etcd:
    def __init__(self, endpoints: list[str], context: ssl.SSLContext | None) -> None:
        self.endpoints = endpoints
        self.context = context
        self.token: str | None = None

    def call(self, path: str, body: dict[str, Any], *, ok_codes: tuple[str, ...] = ()) -> Any:
        """POST to the first endpoint that answers; etcd's error ``message`` if one of
        ``ok_codes`` occurs in it is returned as ``{"error": message}`` instead of raising."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = self.token
        problems = []
        for endpoint in self.endpoints:
            request = urllib.request.Request(endpoint + path, data, headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10, context=self.context) as reply:
                    return json.loads(reply.read() or b"{}")
            except urllib.error.HTTPError as err:
                answer = _message(err)
                if any(code in answer for code in ok_codes):
                    return {"error": answer}
                raise SetupError(f"{path} on {endpoint}: {answer}") from None
            except (OSError, ValueError) as err:
                problems.append(f"{endpoint}: {err}")
        raise SetupError(f"{path}: no etcd endpoint answered ({'; '.join(problems)})")


def _message(err: urllib.error.HTTPError) -> str:
    raw = err.read()
    try:
        return str(json.loads(raw).get("message") or raw.decode(errors="replace"))
    except ValueError:
        return raw.decode(errors="replace") or str(err)


def _password(auth_dir: Path, user: str) -> str:
    path = auth_dir / f"{user}-password"
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise SetupError(f"cannot read the password of {user!r} from {path}: {err}") from None
    if not value:
        raise SetupError(f"the password of {user!r} in {path} is empty")
    return value


def _login(etcd: Etcd, root_password: str) -> bool:
    """Log in as root; False when authentication is still off."""
    answer = etcd.call(
        "/v3/auth/authenticate",
        {"name": "root", "password": root_password},
        ok_codes=("authentication is not enabled",),
    )
    if "error" in answer:
        return False
    etcd.token = answer["token"]
    return True


def _password_works(etcd: Etcd, name: str, password: str) -> bool:
    """Whether ``name`` can log in with ``password``; False while authentication is off (the
    password is then set anyway)."""
    probe = Etcd(etcd.endpoints, etcd.context)
    answer = probe.call(
        "/v3/auth/authenticate",
        {"name": name, "password": password},
        ok_codes=("authentication is not enabled", "authentication failed"),
    )
    return "error" not in answer


def _ensure_user(etcd: Etcd, name: str, password: str, role: str, root_password: str) -> None:
    added = etcd.call(
        "/v3/auth/user/add",
        {"name": name, "password": password},
        ok_codes=("user name already exists",),
    )
    if "error" in added and not _password_works(etcd, name, password):
        etcd.call("/v3/auth/user/changepw", {"name": name, "password": password})
        if etcd.token:  # a changed password revokes the session's token: log in again
            _login(etcd, root_password)
    etcd.call("/v3/auth/user/grant", {"user": name, "role": role})


def setup(etcd: Etcd, auth_dir: Path) -> str:
    root_password = _password(auth_dir, "root")
    passwords = {user: _password(auth_dir, user) for user in USERS}
    try:
        enabled = _login(etcd, root_password)
    except SetupError as err:
        if "authentication failed" in str(err):
            raise SetupError(
                "etcd refuses the root password of the Secret: authentication is on with another"
                " root password (was the Secret replaced?). Put the old root-password back."
            ) from None
        raise
    etcd.call("/v3/auth/role/add", {"name": "root"}, ok_codes=("role name already exists",))
    for role, kind in ROLES.items():
        etcd.call("/v3/auth/role/add", {"name": role}, ok_codes=("role name already exists",))
        perm = {"permType": kind, "key": ALL_KEYS, "range_end": ALL_KEYS}
        etcd.call("/v3/auth/role/grant", {"name": role, "perm": perm})
    _ensure_user(etcd, "root", root_password, "root", root_password)
    for user, role in USERS.items():
        _ensure_user(etcd, user, passwords[user], role, root_password)
    if enabled:
        return "authentication was on; users and passwords are up to date"
    etcd.call("/v3/auth/enable", {})
    return "authentication is on"


def _context() -> ssl.SSLContext | None:
    ca = os.environ.get("ETCD_CA_FILE")
    if not ca:
        return None
    context = ssl.create_default_context(cafile=ca)
    cert, key = os.environ.get("ETCD_CERT_FILE"), os.environ.get("ETCD_KEY_FILE")
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


def main() -> int:
    endpoints = [e.strip().rstrip("/") for e in os.environ.get("ETCD_ENDPOINTS", "").split(",")]
    endpoints = [e for e in endpoints if e]
    if not endpoints:
        print("etcd auth setup: ETCD_ENDPOINTS is empty", file=sys.stderr)
        return 1
    auth_dir = Path(os.environ.get("ETCD_AUTH_DIR", "/etc/eventproxy/etcd-auth"))
    started = time.monotonic()
    try:
        outcome = setup(Etcd(endpoints, _context()), auth_dir)
    except SetupError as err:
        print(f"etcd auth setup failed: {err}", file=sys.stderr)
        return 1
    print(f"etcd auth setup: {outcome} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
