"""The one etcd v3 client of eventproxy: etcd's JSON gateway over httpx, on asyncio and trio.

Both packages use it: the data plane (traefik's KV layout, route-log nodes) and the control plane
(the ``etcd://`` route log). It lives here because the data plane imports nothing from
``eventproxy``. ``docs/decisions.md`` says why the JSON gateway rather than gRPC.

Theory of operation
-------------------
* An :class:`EtcdClient` holds an ordered list of endpoints (``http(s)://host:port``) and the
  one it last reached. A request goes to that endpoint; if it cannot be *sent* (connection
  refused, reset before the request went out, TLS failure) or the member answers that it has no
  leader, the next endpoint is tried, and so on once round the list. Keys and values are bytes
  (base64 on the wire, as the gateway wants).
* A write whose request went out but whose answer never came may or may not have been applied:
  it raises :class:`EtcdOutcomeUnknownError` and is never resent blindly. (The route log
  resolves such an outcome by reading what it wrote.)
* Every request but a serializable read asks for a member with a leader
  (``grpc-metadata-hasleader``): a member without one refuses at once, nothing proposed, and the
  next endpoint is tried. When every member refuses so (the cluster is electing a leader), the
  round is repeated with a short back-off until ``timeout``, then "no quorum" is raised: an
  election is ridden out, a lost quorum is reported within the timeout. A write refused with
  "leader changed" may have been applied: it raises :class:`EtcdOutcomeUnknownError`.
* A linearizable read that a member accepts but cannot serve (no quorum) times out; the client
  then asks that member's ``/v3/maintenance/status`` (served locally) whether it has a leader,
  and reports "no quorum" rather than a bare time-out.
* With a username, the client authenticates (``/v3/auth/authenticate``) per endpoint (etcd's
  simple tokens are per member) and sends the token in ``Authorization``. An "invalid auth
  token" answer (the token expired) re-authenticates once and retries; a refused password
  raises :class:`EtcdAuthError`. The password is never logged nor put in an error message.
* TLS: ``ca_file`` to verify the members, ``cert_file``/``key_file`` for a client certificate.
* Request size: a request larger than ``max_request_bytes`` (etcd's ``--max-request-bytes``,
  1.5 MiB by default) is refused before it is sent, with :class:`EtcdRequestTooLargeError`, so
  callers split their writes (:func:`request_size` measures one).
* Every failure is mapped to an :class:`EtcdError` naming the endpoint(s) and what failed
  (unreachable, no quorum, auth refused, request too large, compacted revision); callers never
  see a raw ``httpx`` or ``OSError`` exception.
* ``watch`` streams ``/v3/watch`` from one endpoint: an async iterator of :class:`WatchBatch`.
  A dropped stream raises :class:`EtcdUnavailableError`; a start revision that compaction
  removed raises :class:`EtcdCompactedError`. Resuming is the caller's decision (it knows the
  last revision it applied).
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import h11
import httpx
from anyio.streams.tls import TLSStream

from ._errors import DataPlaneError, SettingsError

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdCompactedError",
    "EtcdError",
    "EtcdNoQuorumError",
    "EtcdOptions",
    "EtcdOutcomeUnknownError",
    "EtcdRequestTooLargeError",
    "EtcdStatus",
    "EtcdUnavailableError",
    "EtcdWatch",
    "KeyValue",
    "RangeResult",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "compare_mod_revision",
    "compare_value",
    "compare_version",
    "delete_op",
    "parse_endpoints",
    "prefix_end",
    "put_op",
    "range_op",
    "request_size",
]

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's default --max-request-bytes


# -- errors ------------------------------------------------------------------------------------


class EtcdError(DataPlaneError):
    """An etcd request failed; ``endpoint`` is the member that failed (``None``: several)."""

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class EtcdUnavailableError(EtcdError):
    """No endpoint could be reached, or a stream to one broke."""


class EtcdNoQuorumError(EtcdUnavailableError):
    """Members answer but the cluster has no leader: nothing can be read linearizably or written."""


class EtcdOutcomeUnknownError(EtcdUnavailableError):
    """A write was sent but its answer was lost: it may or may not have been applied."""


class EtcdAuthError(EtcdError):
    """etcd refused the credentials (wrong password, unknown user, permission denied)."""


class EtcdRequestTooLargeError(EtcdError, ValueError):
    """A request over etcd's request size limit; it was not applied."""

    def __init__(self, message: str, *, endpoint: str | None = None, size: int, limit: int):
        super().__init__(message, endpoint=endpoint)
        self.size = size
        self.limit = limit


class EtcdCompactedError(EtcdError):
    """The revision asked for was removed by etcd compaction (``compact_revision`` is the oldest
    one kept, when etcd said)."""

    def __init__(self, message: str, *, endpoint: str | None = None, compact_revision: int = 0):
        super().__init__(message, endpoint=endpoint)
        self.compact_revision = compact_revision


# -- options and endpoints ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    """How to reach etcd. ``password`` is kept out of ``repr``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 5.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise SettingsError("etcd TLS client authentication needs both a cert and a key file")
        if self.password is not None and not self.username:
            raise SettingsError("an etcd password was given without a username")
        if self.timeout <= 0:
            raise SettingsError(f"etcd timeout must be positive, not {self.timeout}")


def parse_endpoints(spec: str | Sequence[str], *, tls: bool = False) -> tuple[str, ...]:
    """``"h1:2379,h2:2379"`` or URLs -> ``("http://h1:2379", ...)`` (``https`` with ``tls``)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        item = raw.strip().rstrip("/")
        if not item:
            continue
        if "://" not in item:
            item = ("https://" if tls else "http://") + item
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"etcd endpoint {raw!r} is not host:port or http(s)://host:port")
        if parts.path or parts.query or parts.fragment or parts.username or parts.password:
            raise SettingsError(
                f"etcd endpoint {raw!r} must be host:port only (credentials never go in a URL)"
            )
        try:
            port = parts.port
        except ValueError:
            raise SettingsError(f"etcd endpoint {raw!r} has a bad port") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        out.append(f"{parts.scheme}://{host}:{port or 2379}")
    if not out:
        raise SettingsError(f"no etcd endpoint in {spec!r}")
    return tuple(out)


# -- wire helpers ------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object) -> bytes:
    return base64.b64decode(text) if isinstance(text, str) else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix)
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


def put_op(key: bytes, value: bytes) -> dict[str, Any]:
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def delete_op(key: bytes, range_end: bytes | None = None) -> dict[str, Any]:
    body = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return {"request_delete_range": body}


def range_op(key: bytes, range_end: bytes | None = None) -> dict[str, Any]:
    body = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return {"request_range": body}


def compare_mod_revision(key: bytes, revision: int, result: str = "EQUAL") -> dict[str, Any]:
    """Compare a key's last modification revision (0: the key does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": result, "mod_revision": str(revision)}


def compare_value(key: bytes, value: bytes, result: str = "EQUAL") -> dict[str, Any]:
    """Compare a key's value with ``value`` (bytes)."""
    return {"key": _b64(key), "target": "VALUE", "result": result, "value": _b64(value)}


def compare_version(key: bytes, version: int, result: str = "EQUAL") -> dict[str, Any]:
    return {"key": _b64(key), "target": "VERSION", "result": result, "version": str(version)}


def request_size(body: Mapping[str, Any]) -> int:
    """An upper bound of the size etcd sees for a gateway request body (base64 counts 3/4)."""
    return len(json.dumps(body, separators=(",", ":"))) * 3 // 4


def _int(value: object) -> int:
    try:
        return int(cast(Any, value or 0))
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int

    @classmethod
    def from_wire(cls, kv: Mapping[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(kv.get("key")),
            value=_unb64(kv.get("value")),
            create_revision=_int(kv.get("create_revision")),
            mod_revision=_int(kv.get("mod_revision")),
            version=_int(kv.get("version")),
        )


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the store's revision when the range was served
    count: int
    more: bool
    cluster_id: str


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]
    cluster_id: str

    def range_kvs(self, index: int) -> list[KeyValue]:
        """The key-values of the ``index``-th response when it was a range."""
        response = self.responses[index].get("response_range") or {}
        return [KeyValue.from_wire(kv) for kv in response.get("kvs") or []]


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    endpoint: str
    cluster_id: str
    member_id: str
    leader: str  # "0" or "": no leader
    revision: int
    version: str

    @property
    def has_leader(self) -> bool:
        return self.leader not in ("", "0")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int  # the store's revision at this response
    events: list[WatchEvent]


def _header(doc: Mapping[str, Any]) -> tuple[int, str]:
    header = doc.get("header") or {}
    return _int(header.get("revision")), str(header.get("cluster_id", ""))


# -- failures ----------------------------------------------------------------------------------

_NO_LEADER = (
    "no leader",
    "leader changed",
    "not capable",
    "too many requests",
    "unhealthy cluster",
)
_UNKNOWN_OUTCOME = ("request timed out", "context deadline exceeded", "timed out")


class _Retry(Exception):
    """Internal: this endpoint failed before the request took effect; try the next one."""

    def __init__(
        self, endpoint: str, what: str, *, no_quorum: bool = False, leaderless: bool = False
    ) -> None:
        super().__init__(what)
        self.endpoint = endpoint
        self.what = what
        self.no_quorum = no_quorum or leaderless
        # the member refused at once, having no leader (nothing was proposed): worth asking
        # again while the cluster elects one
        self.leaderless = leaderless


class _Unavailable(Exception):
    """Internal: no endpoint served a request (each one's failure in ``failures``)."""

    def __init__(self, failures: list[_Retry]) -> None:
        super().__init__("unavailable")
        self.failures = failures
        self.leaderless = bool(failures) and all(f.leaderless for f in failures)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _mapped(endpoint: str, what: str, *, sent_write: bool) -> Iterator[None]:
    """Map httpx/OS failures of one request to ``endpoint`` (map_exceptions style)."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise _Retry(endpoint, f"unreachable ({_describe(exc)})") from None
    except ssl.SSLError as exc:
        raise _Retry(endpoint, f"TLS failed ({_describe(exc)})") from None
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        if sent_write:
            raise EtcdOutcomeUnknownError(
                f"etcd {endpoint}: {what} was sent but no answer came ({_describe(exc)}); "
                "it may or may not have been applied",
                endpoint=endpoint,
            ) from None
        raise _Retry(endpoint, f"no answer ({_describe(exc)})") from None
    except httpx.HTTPError as exc:
        raise _Retry(endpoint, f"HTTP failure ({_describe(exc)})") from None
    except OSError as exc:
        raise _Retry(endpoint, f"unreachable ({_describe(exc)})") from None


# -- the client --------------------------------------------------------------------------------


class EtcdClient:
    """An etcd v3 client over the JSON gateway, with endpoint failover; see the module doc."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        options: EtcdOptions | None = None,
        *,
        tls: bool = False,
    ) -> None:
        self.options = options or EtcdOptions()
        tls = tls or bool(self.options.ca_file or self.options.cert_file)
        self.endpoints = parse_endpoints(endpoints, tls=tls)
        self._current = 0
        self._http: httpx.AsyncClient | None = None
        self._tokens: dict[str, str] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"EtcdClient({','.join(self.endpoints)!r})"

    @property
    def where(self) -> str:
        return ",".join(self.endpoints)

    async def _client(self) -> httpx.AsyncClient:
        if self._closed:
            raise EtcdError(f"etcd client for {self.where} is closed")
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            opts = self.options
            if any(e.startswith("https:") for e in self.endpoints):
                verify = await anyio.to_thread.run_sync(self._ssl_context)
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(opts.timeout),
                verify=verify,
                limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30),
                trust_env=False,
            )
            if self._http is None:
                self._http = http
            else:  # pragma: no cover - another task won the race
                await http.aclose()
        return self._http

    def _ssl_context(self) -> ssl.SSLContext:
        opts = self.options
        try:
            context = ssl.create_default_context(cafile=opts.ca_file)
            if opts.cert_file and opts.key_file:
                context.load_cert_chain(opts.cert_file, opts.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise EtcdError(f"etcd {self.where}: cannot load TLS files: {_describe(exc)}") from None
        return context

    def _order(self) -> list[str]:
        n = len(self.endpoints)
        return [self.endpoints[(self._current + i) % n] for i in range(n)]

    async def aclose(self) -> None:
        self._closed = True
        http, self._http = self._http, None
        if http is not None:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- auth ------------------------------------------------------------------------------

    async def _headers(self, endpoint: str, *, renew: bool = False) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        opts = self.options
        if not opts.username:
            return headers
        token = None if renew else self._tokens.get(endpoint)
        if token is None:
            token = await self._authenticate(endpoint)
        headers["authorization"] = token
        return headers

    async def _authenticate(self, endpoint: str) -> str:
        http = await self._client()
        body = json.dumps({"name": self.options.username, "password": self.options.password or ""})
        with _mapped(endpoint, "authenticate", sent_write=False):
            resp = await http.post(f"{endpoint}/v3/auth/authenticate", content=body)
        doc = self._json(endpoint, resp)
        if resp.status_code != 200:
            message = str(doc.get("message") or doc.get("error") or resp.text).strip()
            if "authentication failed" in message or "user name" in message:
                raise EtcdAuthError(
                    f"etcd {endpoint}: authentication as {self.options.username!r} refused "
                    f"({message})",
                    endpoint=endpoint,
                )
            if "auth" in message and "not enabled" in message:
                raise EtcdAuthError(
                    f"etcd {endpoint}: a username was configured but authentication is not "
                    "enabled on the cluster",
                    endpoint=endpoint,
                )
            self._raise_for(endpoint, "authenticate", message, write=False)
        token = str(doc.get("token") or "")
        if not token:
            raise EtcdAuthError(
                f"etcd {endpoint}: authenticate returned no token", endpoint=endpoint
            )
        self._tokens[endpoint] = token
        return token

    # -- one request, with failover --------------------------------------------------------

    @staticmethod
    def _json(endpoint: str, resp: httpx.Response) -> dict[str, Any]:
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            if resp.status_code == 200:
                raise EtcdError(
                    f"etcd {endpoint}: answer is not a JSON object: {resp.text[:200]!r}",
                    endpoint=endpoint,
                )
            return {"message": resp.text[:200]}
        return doc

    def _raise_for(
        self, endpoint: str, what: str, message: str, *, write: bool, status: int = 0
    ) -> None:
        lowered = message.lower()
        if "request is too large" in lowered:
            raise EtcdRequestTooLargeError(
                f"etcd {endpoint}: {what} refused: request is too large "
                f"(over the cluster's --max-request-bytes)",
                endpoint=endpoint,
                size=0,
                limit=self.options.max_request_bytes,
            )
        if "too many operations in txn" in lowered:
            raise EtcdRequestTooLargeError(
                f"etcd {endpoint}: {what} refused: too many operations in one txn "
                "(over the cluster's --max-txn-ops)",
                endpoint=endpoint,
                size=0,
                limit=self.options.max_request_bytes,
            )
        if "has been compacted" in lowered:
            raise EtcdCompactedError(
                f"etcd {endpoint}: {what}: the revision asked for was compacted", endpoint=endpoint
            )
        if "permission denied" in lowered or "authentication failed" in lowered:
            raise EtcdAuthError(f"etcd {endpoint}: {what}: {message}", endpoint=endpoint)
        if "user name is empty" in lowered:
            raise EtcdAuthError(
                f"etcd {endpoint}: {what}: the cluster requires authentication and no "
                "username was configured",
                endpoint=endpoint,
            )
        if write and "leader changed" in lowered:
            raise EtcdOutcomeUnknownError(
                f"etcd {endpoint}: {what}: the leader changed while it was proposed ({message}); "
                "it may or may not have been applied",
                endpoint=endpoint,
            )
        if any(s in lowered for s in _NO_LEADER):
            raise _Retry(endpoint, f"no quorum ({message})", leaderless=True)
        if any(s in lowered for s in _UNKNOWN_OUTCOME):
            if write:
                raise EtcdOutcomeUnknownError(
                    f"etcd {endpoint}: {what} timed out in the cluster ({message}); it may or "
                    "may not have been applied",
                    endpoint=endpoint,
                )
            raise _Retry(endpoint, f"no quorum ({message})", no_quorum=True)
        if "future revision" in lowered:
            raise EtcdError(
                f"etcd {endpoint}: {what}: the revision asked for is newer than the store's "
                "(was the store wiped or restored from a backup?)",
                endpoint=endpoint,
            )
        if status in (502, 503):
            # the gateway could not reach its member's gRPC server (it is stopping, or gone):
            # gRPC's "unavailable". A read goes to the next member; a write may have got there
            if write:
                raise EtcdOutcomeUnknownError(
                    f"etcd {endpoint}: {what}: the member became unavailable ({message}); it "
                    "may or may not have been applied",
                    endpoint=endpoint,
                )
            raise _Retry(endpoint, f"unavailable (HTTP {status}: {message})")
        raise EtcdError(f"etcd {endpoint}: {what} failed: {message}", endpoint=endpoint)

    async def _diagnose_timeout(self, endpoint: str) -> bool:
        """After a read timed out: does ``endpoint`` answer without a leader (no quorum)?"""
        try:
            with anyio.fail_after(min(1.0, self.options.timeout)):
                status = await self._status_at(endpoint)
        except (EtcdError, _Retry, TimeoutError):
            return False
        return not status.has_leader

    async def call(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        write: bool,
        what: str | None = None,
        patience: float | None = None,
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` (``/v3/kv/range``...) on the first member that serves it."""
        what = what or path.rsplit("/", 1)[-1]
        size = request_size(body)
        limit = self.options.max_request_bytes
        if size > limit:
            raise EtcdRequestTooLargeError(
                f"etcd {self.where}: {what} of about {size} bytes is over the request limit of "
                f"{limit} bytes; it was not sent",
                size=size,
                limit=limit,
            )
        content = json.dumps(body, separators=(",", ":"))
        http = await self._client()
        # a member without a leader refuses at once (instead of holding the request until it
        # times out, when a write's outcome would be unknown); a serializable read needs none
        leader = not body.get("serializable")
        deadline = time.monotonic() + (self.options.timeout if patience is None else patience)
        delay = 0.05
        while True:
            try:
                return await self._call_once(http, path, content, what, write, leader)
            except _Unavailable as exc:
                # every member refused for want of a leader: the cluster is electing one (or
                # has lost its quorum); ask again until the timeout, then say so
                if not exc.leaderless or time.monotonic() + delay > deadline:
                    self._raise_unavailable(what, exc.failures)
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _call_once(
        self, http: httpx.AsyncClient, path: str, content: str, what: str, write: bool, leader: bool
    ) -> dict[str, Any]:
        """One round over the endpoints: the first answer, or :class:`_Unavailable`."""
        failures: list[_Retry] = []
        for i, endpoint in enumerate(self._order()):
            for attempt in range(2):  # the second one after renewing an expired token
                try:
                    headers = await self._headers(endpoint, renew=attempt > 0)
                    if leader:
                        headers["grpc-metadata-hasleader"] = "true"
                    with _mapped(endpoint, what, sent_write=write):
                        resp = await http.post(
                            f"{endpoint}{path}", content=content, headers=headers
                        )
                    doc = self._json(endpoint, resp)
                    if resp.status_code == 200:
                        self._current = (self._current + i) % len(self.endpoints)
                        return doc
                    message = str(doc.get("message") or doc.get("error") or "").strip()
                    if "invalid auth token" in message and self.options.username and attempt == 0:
                        continue  # expired: authenticate again and retry once
                    if resp.status_code in (502, 503) and not message:
                        raise _Retry(endpoint, f"HTTP {resp.status_code}")
                    self._raise_for(endpoint, what, message or f"HTTP {resp.status_code}",
                                    write=write, status=resp.status_code)  # fmt: skip
                except _Retry as failure:
                    if "no answer" in failure.what and await self._diagnose_timeout(endpoint):
                        failure = _Retry(
                            endpoint,
                            f"no quorum (it answers but has no leader; {failure.what})",
                            no_quorum=True,
                        )
                    failures.append(failure)
                break
        raise _Unavailable(failures)

    def _raise_unavailable(self, what: str, failures: list[_Retry]) -> None:
        detail = "; ".join(f"{f.endpoint}: {f.what}" for f in failures)
        if failures and any(f.no_quorum for f in failures):
            raise EtcdNoQuorumError(
                f"etcd {self.where}: {what} failed, the cluster has no quorum ({detail})",
                endpoint=failures[0].endpoint if len(failures) == 1 else None,
            )
        raise EtcdUnavailableError(
            f"etcd {self.where}: {what} failed, no member could be reached ({detail})",
            endpoint=failures[0].endpoint if len(failures) == 1 else None,
        )

    # -- KV --------------------------------------------------------------------------------

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
    ) -> RangeResult:
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        if serializable:
            body["serializable"] = True
        if keys_only:
            body["keys_only"] = True
        doc = await self.call("/v3/kv/range", body, write=False)
        rev, cluster = _header(doc)
        kvs = [KeyValue.from_wire(kv) for kv in doc.get("kvs") or []]
        return RangeResult(kvs, rev, _int(doc.get("count")), bool(doc.get("more")), cluster)

    async def range_prefix(self, prefix: bytes, **kwargs: Any) -> RangeResult:
        return await self.range(prefix, prefix_end(prefix), **kwargs)

    async def put(self, key: bytes, value: bytes) -> int:
        doc = await self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, write=True)
        return _header(doc)[0]

    async def delete_range(self, key: bytes, range_end: bytes | None = None) -> int:
        body = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        doc = await self.call("/v3/kv/deleterange", body, write=True)
        return _header(doc)[0]

    async def txn(
        self,
        compare: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
        *,
        patience: float | None = None,
    ) -> TxnResult:
        """``patience``: how long to keep asking while no member has a leader (default: the
        client's timeout)."""
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        write = any("request_range" not in op for op in (*success, *failure))
        doc = await self.call("/v3/kv/txn", body, write=write, patience=patience)
        rev, cluster = _header(doc)
        return TxnResult(bool(doc.get("succeeded")), rev, list(doc.get("responses") or []), cluster)

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """etcd compaction: drop the history before ``revision`` (tests and operators)."""
        body: dict[str, Any] = {"revision": str(revision)}
        if physical:
            body["physical"] = True
        await self.call("/v3/kv/compaction", body, write=True)

    async def _status_at(self, endpoint: str) -> EtcdStatus:
        http = await self._client()
        headers = await self._headers(endpoint) if self.options.username else {}
        with _mapped(endpoint, "status", sent_write=False):
            resp = await http.post(
                f"{endpoint}/v3/maintenance/status", content="{}", headers=headers
            )
        doc = self._json(endpoint, resp)
        if resp.status_code != 200:
            self._raise_for(endpoint, "status", str(doc.get("message") or ""), write=False)
        header = doc.get("header") or {}
        return EtcdStatus(
            endpoint=endpoint,
            cluster_id=str(header.get("cluster_id", "")),
            member_id=str(header.get("member_id", "")),
            leader=str(doc.get("leader", "") or ""),
            revision=_int(header.get("revision")),
            version=str(doc.get("version", "")),
        )

    async def status(self) -> EtcdStatus:
        """The status of the first member that answers (its cluster id, leader, revision)."""
        failures: list[_Retry] = []
        for endpoint in self._order():
            try:
                return await self._status_at(endpoint)
            except _Retry as failure:
                failures.append(failure)
        self._raise_unavailable("status", failures)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- watch -----------------------------------------------------------------------------

    def watch(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        start_revision: int,
        require_leader: bool = True,
    ) -> EtcdWatch:
        """A watch stream of the changes to ``[key, range_end)`` from ``start_revision`` on;
        use as ``async with client.watch(...) as stream: async for batch in stream``."""
        return EtcdWatch(self, key, range_end, start_revision, require_leader)


class _LineStream:
    """One streamed HTTP/1.1 POST over an anyio stream with h11, read as lines.

    httpx's streaming iterators are async generators; one abandoned mid-stream (a watch that is
    simply dropped) is reported by trio when garbage collected. This holds only a socket.
    """

    def __init__(self, stream: anyio.abc.ByteStream, conn: h11.Connection, endpoint: str) -> None:
        self._stream = stream
        self._conn = conn
        self._endpoint = endpoint
        self._pending = b""
        self._lines: list[bytes] = []
        self._done = False

    @classmethod
    async def open(
        cls,
        client: EtcdClient,
        endpoint: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[_LineStream, int, bytes]:
        """Connect, send the request, read the status line; (stream, status, error body)."""
        parts = urlsplit(endpoint)
        host, port = parts.hostname or "", parts.port or 2379
        timeout = client.options.timeout
        with _mapped(endpoint, "watch", sent_write=False):
            try:
                with anyio.fail_after(timeout):
                    stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
            except TimeoutError:
                raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from None
            try:
                if parts.scheme == "https":
                    context = await anyio.to_thread.run_sync(client._ssl_context)
                    with anyio.fail_after(timeout):
                        stream = await TLSStream.wrap(
                            stream, hostname=host, ssl_context=context,
                            standard_compatible=False,
                        )  # fmt: skip
                conn = h11.Connection(h11.CLIENT)
                request = h11.Request(
                    method="POST",
                    target=path,
                    headers=[
                        ("host", parts.netloc),
                        ("content-length", str(len(body))),
                        *headers.items(),
                    ],
                )
                await stream.send(
                    conn.send(request)
                    + conn.send(h11.Data(data=body))
                    + conn.send(h11.EndOfMessage())
                )
                self = cls(stream, conn, endpoint)
                with anyio.fail_after(timeout):
                    while True:
                        event = await self._event()
                        if isinstance(event, h11.Response):
                            break
                if event.status_code != 200:
                    with anyio.fail_after(timeout):
                        error = b""
                        while True:
                            data = await self._event()
                            if isinstance(data, h11.Data):
                                error += data.data
                            elif isinstance(data, h11.EndOfMessage | h11.ConnectionClosed):
                                break
                    await self.aclose()
                    return self, event.status_code, error
                return self, 200, b""
            except TimeoutError:
                await anyio.aclose_forcefully(stream)
                raise httpx.ReadTimeout("no answer to the watch request") from None
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise

    async def _event(self) -> Any:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self._stream.receive()
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                data = b""  # closed under us (the watch was closed): the stream ends
            self._conn.receive_data(data)

    async def readline(self) -> str | None:
        """The next line of the body, or ``None`` at its end (or the connection's)."""
        while not self._lines:
            if self._done:
                return None
            with _mapped(self._endpoint, "watch", sent_write=False):
                event = await self._event()
            if isinstance(event, h11.Data):
                self._pending += event.data
                *lines, self._pending = self._pending.split(b"\n")
                self._lines = [line for line in lines if line.strip()]
                self._lines.reverse()
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._done = True
        return self._lines.pop().decode("utf-8", "replace")

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self._stream)


class EtcdWatch:
    """One ``/v3/watch`` stream; see :meth:`EtcdClient.watch`."""

    def __init__(
        self,
        client: EtcdClient,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        require_leader: bool,
    ) -> None:
        self._client = client
        request: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            request["range_end"] = _b64(range_end)
        self._body = json.dumps({"create_request": request}).encode()
        self._require_leader = require_leader
        self._lines: _LineStream | None = None
        self.endpoint = ""
        self.created_revision = 0

    async def __aenter__(self) -> EtcdWatch:
        client = self._client
        failures: list[_Retry] = []
        for i, endpoint in enumerate(client._order()):
            for attempt in range(2):
                try:
                    headers = await client._headers(endpoint, renew=attempt > 0)
                    if self._require_leader:
                        # etcd cancels the watch when this member loses its leader
                        headers["grpc-metadata-hasleader"] = "true"
                    lines, status, error = await _LineStream.open(
                        client, endpoint, "/v3/watch", self._body, headers
                    )
                    if status != 200:
                        try:
                            doc = json.loads(error)
                        except ValueError:
                            doc = {}
                        if not isinstance(doc, dict):
                            doc = {}
                        message = str(doc.get("message") or doc.get("error") or "").strip()
                        if "invalid auth token" in message and attempt == 0:
                            continue
                        client._raise_for(
                            endpoint, "watch", message or f"HTTP {status}", write=False,
                            status=status,
                        )  # fmt: skip
                    self.endpoint = endpoint
                    self._lines = lines
                    # the member answers a create at once (no raft round): one that does not
                    # is not waited on for ever; the next member is asked
                    first: dict[str, Any] | None = None
                    with anyio.move_on_after(client.options.timeout):
                        first = await self._next_result()
                        if first is None:
                            raise _Retry(endpoint, "the watch stream ended before it was created")
                    if first is None:
                        raise _Retry(endpoint, "no answer (the watch was not created)")
                    if first.get("canceled"):
                        reason = str(first.get("cancel_reason") or "")
                        if (
                            "permission denied" in reason
                            and attempt == 0
                            and (client.options.username)
                        ):
                            await self._close()
                            continue  # a stale token: a watch says "permission denied"
                        await self._cancelled(first)
                    self.created_revision = _header(first)[0]
                    client._current = (client._current + i) % len(client.endpoints)
                    return self
                except _Retry as failure:
                    await self._close()
                    failures.append(failure)
                except BaseException:
                    await self._close()
                    raise
                break
        client._raise_unavailable("watch", failures)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _close(self) -> None:
        lines, self._lines = self._lines, None
        if lines is not None:
            await lines.aclose()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._close()

    async def _next_result(self) -> dict[str, Any] | None:
        endpoint = self.endpoint or "?"
        while True:
            if self._lines is None:
                return None
            try:
                line = await self._lines.readline()
            except _Retry as failure:
                raise EtcdUnavailableError(
                    f"etcd {endpoint}: the watch stream broke: {failure.what}", endpoint=endpoint
                ) from None
            if line is None:
                return None
            try:
                message = json.loads(line)
            except ValueError:
                raise EtcdError(
                    f"etcd {endpoint}: watch sent a line that is not JSON: {line[:200]!r}",
                    endpoint=endpoint,
                ) from None
            if not isinstance(message, dict):
                continue
            if "error" in message:
                error = message["error"]
                text = str(error.get("message") if isinstance(error, dict) else error)
                if "no leader" in text.lower():
                    raise EtcdNoQuorumError(
                        f"etcd {endpoint}: watch: the member lost its leader ({text})",
                        endpoint=endpoint,
                    )
                raise EtcdUnavailableError(
                    f"etcd {endpoint}: the watch stream failed: {text}", endpoint=endpoint
                )
            result = message.get("result")
            if isinstance(result, dict):
                return result

    async def _cancelled(self, result: Mapping[str, Any]) -> None:
        endpoint = self.endpoint or "?"
        compact = _int(result.get("compact_revision"))
        if compact:
            raise EtcdCompactedError(
                f"etcd {endpoint}: watch: revisions before {compact} were compacted",
                endpoint=endpoint,
                compact_revision=compact,
            )
        reason = str(result.get("cancel_reason") or "cancelled by the server")
        if "permission denied" in reason:
            raise EtcdAuthError(f"etcd {endpoint}: watch: {reason}", endpoint=endpoint)
        if "no leader" in reason.lower():
            raise EtcdNoQuorumError(
                f"etcd {endpoint}: watch: the member lost its leader ({reason})", endpoint=endpoint
            )
        raise EtcdUnavailableError(f"etcd {endpoint}: watch cancelled: {reason}", endpoint=endpoint)

    def __aiter__(self) -> AsyncIterator[WatchBatch]:
        return self

    async def __anext__(self) -> WatchBatch:
        while True:
            result = await self._next_result()
            if result is None:
                raise EtcdUnavailableError(
                    f"etcd {self.endpoint}: the watch stream ended", endpoint=self.endpoint
                )
            if result.get("canceled") or _int(result.get("compact_revision")):
                await self._cancelled(result)
            events = [
                WatchEvent(str(e.get("type") or "PUT"), KeyValue.from_wire(e.get("kv") or {}))
                for e in result.get("events") or []
            ]
            revision = _header(result)[0]
            if events:
                revision = max(revision, max(e.kv.mod_revision for e in events))
            if events or revision:
                return WatchBatch(revision, events)
