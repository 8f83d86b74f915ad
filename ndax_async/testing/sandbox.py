"""The sandbox core: a fake NDAX that behaves like the documented API.

Plain Python, no HTTP framework: :meth:`Sandbox.handle` takes a request
(method, target, headers, body bytes) and returns a :class:`Reply`. The httpx
transport (:meth:`Sandbox.transport`) and the ASGI app (:meth:`Sandbox.asgi_app`)
are thin adapters over it. Here: the request path, authentication (signatures
strict by default, see :mod:`._gate`; the timestamp window), the per-IP rate
limit (when enabled) and fault injection. The write endpoints' rules and
idempotency are in :mod:`._writes`, the reads in :mod:`._reads`, the state and
the counters (:attr:`Sandbox.stats`, served also at ``GET /_sandbox/stats``) in
:mod:`._state`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._wire.request_ids import random_request_id
from ._faults import Faults
from ._gate import SIGNATURE_MODES, RateLimit, SignatureMode, check_signature
from ._reads import SandboxReads
from ._state import NOT_FOUND, Reply, auth_error, json_reply
from ._writes import SandboxWrites

if TYPE_CHECKING:
    from ..client import AsyncClient

__all__ = ["Reply", "Sandbox"]

MAX_BODY_BYTES = 1_000_000
STATS_PATH = "/_sandbox/stats"
TIMESTAMP_WINDOW = 60


class Sandbox(SandboxWrites, SandboxReads):
    """An in-memory NDAX participants API.

    ``faults`` (a :class:`~ndax_async.testing.Faults` or keyword mapping) turns
    fault injection on; ``rate_limit=(requests, seconds)`` turns on the per-IP
    limit (the platform's is ``(2000, 10.0)``: more than 2,000 requests in any
    rolling 10 s from one peer IP blocks it for 10 s, answered 429 without a
    body); ``signatures`` is ``"strict"`` (the default), ``"raw"`` or
    ``"either"`` (see :mod:`ndax_async.testing._gate`); ``update_allowed=False``
    makes PATCH answer the "platform not approved" 403. ``clock`` returns unix
    seconds (for the timestamp window, the rate limit and minors' ages).
    """

    def __init__(
        self,
        api_key: str = "sandbox-key",
        api_secret: str = base64.b64encode(b"ndax-async sandbox secret").decode(),
        passphrase: str = "sandbox-passphrase",  # noqa: S107 - a fake server's fake credentials
        *,
        platform_code: str = "PLAT01",
        faults: Faults | Mapping[str, Any] | None = None,
        rate_limit: tuple[int, float] | None = None,
        signatures: SignatureMode = "strict",
        update_allowed: bool = True,
        page_size: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.passphrase = passphrase
        self._key = base64.b64decode(api_secret)
        if signatures not in SIGNATURE_MODES:
            raise ValueError(f"signatures must be one of {', '.join(SIGNATURE_MODES)}, not {signatures!r}")
        self.signatures: SignatureMode = signatures
        super().__init__(platform_code)
        self.clock = clock
        self.rate_limit = rate_limit
        self.update_allowed = update_allowed
        self.page_size = page_size
        self._faults = faults if isinstance(faults, Faults) else Faults(**(faults or {}))

    # -- configuration -----------------------------------------------------------

    @property
    def rate_limit(self) -> tuple[int, float] | None:
        """``(requests, seconds)`` of the per-IP limit, or ``None`` (off). Settable."""
        return None if self._limit is None else (self._limit.requests, self._limit.seconds)

    @rate_limit.setter
    def rate_limit(self, value: tuple[int, float] | None) -> None:
        self._limit = None if value is None else RateLimit(value[0], value[1], lambda: self.clock())

    def faults(self, **settings: Any) -> Faults:
        """Replace the fault settings (at any time); returns them. No args: all off."""
        self._faults = Faults(**settings)
        return self._faults

    @property
    def credentials(self) -> dict[str, str]:
        """The keyword arguments an ``AsyncClient`` needs for this sandbox."""
        return {"api_key": self.api_key, "api_secret": self.api_secret, "passphrase": self.passphrase}

    def transport(self) -> Any:
        """An ``httpx.AsyncBaseTransport`` answering from this sandbox, in-process."""
        from ._transport import SandboxTransport

        return SandboxTransport(self)

    def client(self, **options: Any) -> AsyncClient:
        """An ``AsyncClient`` bound to this sandbox in-process (it owns its transport)."""
        from ..client import AsyncClient

        return AsyncClient(
            api_key=self.api_key,
            api_secret=self.api_secret,
            passphrase=self.passphrase,
            transport=self.transport(),
            **options,
        )

    def asgi_app(self) -> Any:
        """This sandbox as an ASGI application, to mount in an ASGI server or app of your own."""
        from ._asgi import SandboxApp

        return SandboxApp(self)

    def apply(
        self,
        endpoint: str,
        payload: Any,
        *,
        request_id: object = None,
        participant_code: str | None = None,
    ) -> dict[str, Any]:
        """Apply a write as if it had come over the API under ``request_id``; return its record.

        For tests of what was applied before this SDK: a customer created by an
        older integration under an id the SDK would not derive (``request_id``
        defaults to a random one). ``endpoint`` is ``"create"``, ``"create_minor"``
        or ``"update"``; ``payload`` a model or a wire mapping, encoded as the SDK
        encodes it. No authentication, faults or rate limit; a refusal raises
        ``ValueError`` with the sandbox's answer.
        """
        from .._wire.writes import prepare_write

        prepared = prepare_write(
            endpoint,
            payload,
            participant_code=participant_code,
            request_id=random_request_id() if request_id is None else request_id,
        )
        params = {"code": participant_code} if participant_code is not None else {}
        with self._lock:
            reply = self._write(endpoint, params, json.loads(prepared.body))
        if reply.status != 200:
            raise ValueError(f"the sandbox refused it ({reply.status}): {reply.body.decode()}")
        record: dict[str, Any] = json.loads(reply.body)["message"]
        return record

    # -- the request path --------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, client: str = "local"
    ) -> Reply:
        """Answer one request. ``target`` is the raw path and query, as sent."""
        with self._lock:
            return self._handle(
                method.upper(), target, {k.lower(): v for k, v in headers.items()}, body, client
            )

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> Reply:
        if method == "GET" and target == STATS_PATH:
            return json_reply(200, self.stats)
        endpoint, params = _route(method, target)
        self._count("requests", endpoint)
        limited = self._rate_limited(client)
        if limited is not None:
            return limited
        if len(body) > MAX_BODY_BYTES:
            return json_reply(413, {"error": "Payload Too Large"})
        fault = self._faults.draw() if self._faults.active else None
        if fault is not None:
            self._count("faults", fault)
        early = self._early_fault(fault)
        if early is not None:
            return early
        failure = self._authenticate(method, target, headers, body)
        reply = failure or self._dispatch(endpoint, params, body)
        return self._late_fault(fault, reply)

    def _early_fault(self, fault: str | None) -> Reply | None:
        latency = self._faults.latency
        if fault == "drop_before":
            return Reply(0, b"", drop=True, delay=latency)
        if fault == "err503":
            return attrs.evolve(json_reply(503, {"error": "Service Unavailable"}), delay=latency)
        if fault == "err429":
            retry_after = {"retry-after": f"{self._faults.retry_after:g}"}
            return attrs.evolve(json_reply(429, {"error": "Too Many Requests"}, retry_after), delay=latency)
        if fault == "err429_bare":
            return Reply(429, b"", delay=latency)
        return None

    def _late_fault(self, fault: str | None, reply: Reply) -> Reply:
        latency = self._faults.latency
        if fault == "drop_after":
            return attrs.evolve(reply, drop=True, delay=latency)
        if fault == "err500_after":
            return attrs.evolve(json_reply(500, {"error": "Internal Server Error"}), delay=latency)
        if fault == "slow_after":
            return attrs.evolve(reply, delay=latency + self._faults.slow_seconds)
        return attrs.evolve(reply, delay=latency) if latency else reply

    def _rate_limited(self, client: str) -> Reply | None:
        """A bare 429 if the per-IP limit refuses this request from ``client``, else ``None``."""
        outcome = "ok" if self._limit is None else self._limit.check(client)
        if outcome == "ok":
            return None
        self._count("rate_limited")
        if outcome == "overrun":
            self._count("rate_limit_blocks")
        return Reply(429, b"")

    def _authenticate(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply | None:
        key = headers.get("x-ndax-api-key")
        passphrase = headers.get("x-ndax-passphrase")
        timestamp = headers.get("x-ndax-timestamp", "")
        signature = headers.get("x-ndax-signed", "")
        if not key or passphrase is None or not timestamp or not signature:
            return self._auth_failure("missing_headers", 401, "Missing authentication headers")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return self._auth_failure("bad_key", 401, "Invalid API key")
        if not hmac.compare_digest(passphrase.encode(), self.passphrase.encode()):
            return self._auth_failure("bad_passphrase", 401, "Invalid passphrase")
        if not timestamp.isascii() or not timestamp.isdigit():
            return self._auth_failure("bad_timestamp", 401, "Invalid timestamp")
        if abs(self.clock() - int(timestamp)) > TIMESTAMP_WINDOW:
            return self._auth_failure("stale_timestamp", 401, "Timestamp is outside the allowed window")
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return self._auth_failure("bad_signature", 401, "Invalid signature")
        prefix = f"{timestamp}{method}{target}".encode()
        failure = check_signature(self._key, prefix, body, given, self.signatures)
        return None if failure is None else self._auth_failure(failure, 401, "Invalid signature")

    def _auth_failure(self, kind: str, status: int, message: str) -> Reply:
        self._count("auth_failures", kind)
        return auth_error(status, message)

    def _dispatch(self, endpoint: str, params: dict[str, str], body: bytes) -> Reply:
        if endpoint == "get_by_email":
            return self._get_by_email(params["email"])
        if endpoint == "list":
            return self._list(params)
        if endpoint == "unknown":
            return NOT_FOUND
        try:
            data = json.loads(body) if body else None
        except (ValueError, RecursionError):
            return self._invalid(["body is not valid JSON"])
        if not isinstance(data, dict):
            return self._invalid(["body must be a JSON object"])
        return self._write(endpoint, params, data)


def _route(method: str, target: str) -> tuple[str, dict[str, str]]:
    path, _, query = target.partition("?")
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True)) if query else {}
    parts = path.split("/")
    if method == "POST" and path == "/participants/customers/new":
        return "create", params
    if method == "POST" and path == "/participants/customers/minor":
        return "create_minor", params
    if method == "PATCH" and len(parts) == 4 and parts[1:3] == ["participants", "customers"] and parts[3]:
        return "update", {**params, "code": urllib.parse.unquote(parts[3])}
    if method == "GET" and path == "/participants":
        return "list", params
    if method == "GET" and len(parts) == 3 and parts[1] == "participants" and parts[2]:
        return "get_by_email", {**params, "email": urllib.parse.unquote(parts[2])}
    return "unknown", params
