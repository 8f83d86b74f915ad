"""``AsyncClient`` and its resources, ``customers`` and ``participants``.

A write goes: payload (model or mapping) → validated model → wire dict →
canonical bytes (once) → request_id (once) → signed, retried attempts →
typed record or typed error.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, TypeVar

import attrs
import httpx

from ._clock import Clock, SystemClock
from ._sending.http1 import BuiltinSender
from ._sending.limits import RateLimiter, RetryQuota
from ._sending.retry import RateLimitPause, RetryEvent, RetryPolicy
from ._sending.senders import AiohttpSender, HttpxClientSender, HttpxTransportSender, RawResponse, Sender
from ._sending.transport import CallScope, Transport
from ._version import __version__
from ._wire import canonical_json as _json
from ._wire import rules as _rules
from ._wire.convert import read_record, structure_payload, to_wire
from ._wire.request_ids import RequestIdMode, derive_request_id, normalize_request_id, random_request_id
from ._wire.signing import Credentials
from .errors import (
    ClientClosedError,
    ConfigurationError,
    MalformedResponseError,
    Problem,
    ValidationError,
    error_from_response,
)
from .models import Customer, CustomerUpdate, Minor, NewCustomer, NewMinor, Participant

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "PRODUCTION_URL",
    "AsyncClient",
    "Customers",
    "ParticipantPage",
    "Participants",
    "PreparedWrite",
]

PRODUCTION_URL = "https://api.ndax.in"
DEFAULT_MAX_CONNECTIONS = 64
"""The default pool: the API's 200 requests/s per IP at up to 320 ms each.

More connections than that only add CPU on both ends (``benchmarks/``); tasks
beyond the pool wait for a free connection.
"""
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_ENDPOINTS = ("create", "create_minor", "update")

P = TypeVar("P", NewCustomer, NewMinor, CustomerUpdate)


class AsyncClient:
    """An asynchronous client for the NDAX participants API.

    Hold one per event loop (in a web app, one for the app's lifespan) and
    close it with ``async with`` or :meth:`aclose`; it is safe to share
    between tasks. By default it sends through its own small HTTP/1.1 client
    (``http_backend="builtin"``, the fastest measured); ``"aiohttp"`` (the
    ``aiohttp`` extra) and ``"httpx"`` (httpx's transport) are there too. Pass
    ``transport=`` (any ``httpx.AsyncBaseTransport``, called directly and closed
    with the client) or ``http_client=`` (your ``httpx.AsyncClient``, which you
    close) to choose the HTTP layer yourself.

    ``request_ids`` picks how a write's request_id is chosen when you do not
    pin one: ``"derived"`` (default; from the operation itself, so retries,
    restarts and other machines agree) or ``"random"`` (per call).
    ``send_request_id`` turns sending it off for all or some endpoints
    (``{"create_minor": False}``). ``rate_limit`` (requests per second) spaces
    every attempt; ``retry_quota`` shares a retry budget across calls.
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        passphrase: str,
        base_url: str = PRODUCTION_URL,
        max_retries: int = 3,
        timeout: float | None = 30.0,
        deadline: float | None = None,
        retry_policy: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_backend: Literal["auto", "builtin", "aiohttp", "httpx"] = "auto",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        verify: ssl.SSLContext | bool = True,
        request_ids: RequestIdMode | Literal["derived", "random"] = RequestIdMode.DERIVED,
        request_id_namespace: str = "",
        send_request_id: bool | Mapping[str, bool] = True,
        on_retry: Callable[[RetryEvent], None] | None = None,
        rate_limit: float | None = None,
        retry_quota: RetryQuota | None = None,
        allow_insecure_http: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._credentials = Credentials(api_key, api_secret, passphrase)
        self.base_url = _check_base_url(base_url, allow_insecure_http)
        policy = retry_policy or RetryPolicy()
        try:
            self.retry_policy = attrs.evolve(
                policy, max_retries=max_retries, deadline=deadline or policy.deadline
            )
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        self.timeout = timeout
        try:
            self.request_ids = RequestIdMode(request_ids)
        except ValueError:
            raise ConfigurationError("request_ids must be 'derived' or 'random'") from None
        self.request_id_namespace = request_id_namespace
        self._send_request_id = _endpoint_flags(send_request_id)
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        self._sender = _sender(http_client, transport, http_backend, max_connections, verify)
        self._clock: Clock = clock or SystemClock()
        self.rate_limit_pause = RateLimitPause(self._clock)
        self._transport = Transport(
            self._sender,
            self._credentials,
            self.base_url,
            clock=self._clock,
            pause=self.rate_limit_pause,
            on_retry=on_retry,
            limiter=RateLimiter(rate_limit, burst=max(1.0, rate_limit / 10), clock=self._clock)
            if rate_limit
            else None,
            quota=retry_quota,
            user_agent=f"ndax-async/{__version__}",
            max_in_flight=max_connections,
        )
        self._closed = False
        self.customers = Customers(self)
        self.participants = Participants(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """Build a client from ``NDAX_API_KEY``, ``NDAX_API_SECRET``,
        ``NDAX_PASSPHRASE`` and (optionally) ``NDAX_BASE_URL``."""
        env = os.environ if environ is None else environ
        missing = [
            name for name in ("NDAX_API_KEY", "NDAX_API_SECRET", "NDAX_PASSPHRASE") if not env.get(name)
        ]
        if missing:
            raise ConfigurationError("missing environment variable(s): " + ", ".join(missing))
        options.setdefault("base_url", env.get("NDAX_BASE_URL") or PRODUCTION_URL)
        return cls(
            api_key=env["NDAX_API_KEY"],
            api_secret=env["NDAX_API_SECRET"],
            passphrase=env["NDAX_PASSPHRASE"],
            **options,
        )

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._closed

    async def aclose(self) -> None:
        """Close the client (and its HTTP client, if it made it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._transport.closed = True
        await self._sender.aclose()

    async def __aenter__(self) -> AsyncClient:
        self._ensure_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncClient {self.base_url} api_key={self._credentials.api_key!r} {state}>"

    def _ensure_open(self) -> None:
        if self._closed:
            raise ClientClosedError(
                "this AsyncClient is closed; create a new one (hold one client per event loop, "
                "e.g. for your web app's lifespan)"
            )

    def _policy(self, max_retries: int | None, deadline: float | None) -> RetryPolicy:
        if max_retries is None and deadline is None:
            return self.retry_policy
        return attrs.evolve(
            self.retry_policy,
            max_retries=self.retry_policy.max_retries if max_retries is None else max_retries,
            deadline=self.retry_policy.deadline if deadline is None else deadline,
        )

    def _resolve_request_id(self, method: str, route: str, payload: bytes, pinned: str | None) -> str:
        """The pinned id, else one derived from the operation (or random, if so configured)."""
        if pinned is not None:
            return pinned
        if self.request_ids is RequestIdMode.RANDOM:
            return random_request_id()
        return derive_request_id(method, route, payload, self.request_id_namespace)

    def _prepare_write(
        self, endpoint: str, payload: Any, *, participant_code: str | None = None, request_id: object = None
    ) -> PreparedWrite:
        """Validate, encode once and fix the request_id: everything before the first attempt."""
        spec = _WRITES[endpoint]
        problems = _rules.check_participant_code(participant_code) if spec.needs_code else []
        try:
            model, pinned = _prepare(payload, spec.model, request_id)
        except ValidationError as error:
            raise ValidationError(error.model, [*problems, *error.problems]) from None
        if problems:
            raise ValidationError(spec.model.__name__, problems)
        route = spec.route.format(code=participant_code)
        payload_bytes = _json.dumps(to_wire(model))
        if not self._send_request_id[endpoint]:
            return PreparedWrite(spec.method, route, payload_bytes, payload_bytes, None, spec.record)
        rid = self._resolve_request_id(spec.method, route, payload_bytes, pinned)
        body = _with_request_id(payload_bytes, rid)
        return PreparedWrite(spec.method, route, payload_bytes, body, rid, spec.record)

    async def _execute(
        self,
        prepared: PreparedWrite,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        scope: CallScope | None = None,
    ) -> Any:
        """Send a prepared write (retrying) and read its record."""
        data, attempts, raw = await self._send(
            prepared.method,
            prepared.route,
            prepared.body,
            request_id=prepared.request_id,
            timeout=timeout,
            max_retries=max_retries,
            deadline=deadline,
            scope=scope,
        )
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict):
            raise _malformed("a 'message' object", raw, data, prepared.request_id, attempts)
        record_type: Any = prepared.record_type
        return read_record(message, record_type, attempts=attempts, request_id=prepared.request_id)

    async def _send(
        self,
        method: str,
        route: str,
        body: bytes | None,
        *,
        request_id: str | None,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        not_found_ok: bool = False,
        scope: CallScope | None = None,
    ) -> tuple[Any, int, RawResponse | None]:
        """Send one logical request; return (parsed JSON, attempts, response) of a 2xx.

        With ``not_found_ok``, a 404 returns ``(None, attempts, None)``."""
        self._ensure_open()
        response, attempts = await self._transport.request(
            method,
            route,
            body,
            request_id=request_id,
            policy=self._policy(max_retries, deadline),
            timeout=self.timeout if timeout is None else timeout,
            scope=scope,
        )
        status = response.status_code
        if 200 <= status < 300:
            try:
                return json.loads(response.content), attempts, response
            except ValueError:
                raise MalformedResponseError(
                    "the response body is not JSON",
                    status_code=status,
                    raw_text=response.text,
                    request_id=request_id,
                    attempts=attempts,
                    headers=response.header_dict(),
                ) from None
        if status == 404 and not_found_ok:
            return None, attempts, None
        hint = self._transport.clock_skew_hint(response) if status in (401, 403) else ""
        raise error_from_response(
            status,
            response.text,
            request_id=request_id,
            attempts=attempts,
            headers=response.header_dict(),
            hint=hint,
        )


class Customers:
    """The write endpoints: create a customer or a minor, update a customer.

    Each takes ``request_id=`` to pin the id, and ``timeout=``, ``max_retries=``
    and ``deadline=`` for this call only.
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        customer: NewCustomer | Mapping[str, Any],
        *,
        request_id: object = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
    ) -> Customer:
        """Create a customer (``POST /participants/customers/new``).

        Safe to call again for the same customer: with the default derived
        request_id the server replays the original result.
        """
        self._client._ensure_open()
        prepared = self._client._prepare_write("create", customer, request_id=request_id)
        record: Customer = await self._client._execute(
            prepared, timeout=timeout, max_retries=max_retries, deadline=deadline
        )
        return record

    async def create_minor(
        self,
        minor: NewMinor | Mapping[str, Any],
        *,
        request_id: object = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
    ) -> Minor:
        """Create a minor under a custodian (``POST /participants/customers/minor``)."""
        self._client._ensure_open()
        prepared = self._client._prepare_write("create_minor", minor, request_id=request_id)
        record: Minor = await self._client._execute(
            prepared, timeout=timeout, max_retries=max_retries, deadline=deadline
        )
        return record

    async def update(
        self,
        participant_code: str,
        update: CustomerUpdate | Mapping[str, Any],
        *,
        request_id: object = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
    ) -> Customer:
        """Apply a verified change (``PATCH /participants/customers/{participant_code}``).

        A mapping may be the flat wire shape (``platform_updated_at`` plus the
        fields of each segment) or hold ``name``/``address``/``identity``.
        """
        self._client._ensure_open()
        prepared = self._client._prepare_write(
            "update", update, participant_code=participant_code, request_id=request_id
        )
        record: Customer = await self._client._execute(
            prepared, timeout=timeout, max_retries=max_retries, deadline=deadline
        )
        return record


@attrs.frozen
class _WriteSpec:
    method: str
    route: str
    model: type[NewCustomer] | type[NewMinor] | type[CustomerUpdate]
    record: type[Customer] | type[Minor]
    needs_code: bool = False


_WRITES = {
    "create": _WriteSpec("POST", "/participants/customers/new", NewCustomer, Customer),
    "create_minor": _WriteSpec("POST", "/participants/customers/minor", NewMinor, Minor),
    "update": _WriteSpec(
        "PATCH", "/participants/customers/{code}", CustomerUpdate, Customer, needs_code=True
    ),
}


@attrs.frozen
class PreparedWrite:
    """A write ready to send: its route, exact body bytes and request_id, fixed."""

    method: str
    route: str
    payload: bytes
    """The canonical payload without request_id."""
    body: bytes
    """The bytes sent and signed: the payload with request_id first, if one is sent."""
    request_id: str | None
    record_type: type[Customer] | type[Minor]

    @property
    def payload_hash(self) -> str:
        """sha256 of the payload without request_id: what "the same operation" means."""
        return hashlib.sha256(self.payload).hexdigest()

    def with_request_id(self, request_id: str) -> PreparedWrite:
        """The same write carrying ``request_id`` (no re-validation, no re-encoding)."""
        return attrs.evolve(self, body=_with_request_id(self.payload, request_id), request_id=request_id)


@attrs.frozen
class ParticipantPage:
    """One page of ``GET /participants``."""

    participants: tuple[Participant, ...]
    page: int
    total_pages: int
    page_size: int | None
    count: int | None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False)


class Participants:
    """The read endpoints: find participants again (for reconciliation)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get_by_email(self, email: str, *, timeout: float | None = None) -> Participant | None:
        """``GET /participants/{email}``: the participant, or ``None`` if there is none."""
        if not isinstance(email, str) or not email.strip():
            raise ValidationError("request", [Problem("email", "required (a non-empty string)")])
        route = "/participants/" + urllib.parse.quote(email, safe="@+")
        data, attempts, raw = await self._client._send(
            "GET", route, None, request_id=None, timeout=timeout, not_found_ok=True
        )
        if data is None:
            return None
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict):
            raise _malformed("a 'message' object", raw, data, None, attempts)
        return read_record(message, Participant, attempts=attempts)

    async def list_pages(
        self,
        *,
        email: str | None = None,
        participant_code: str | None = None,
        status: str | None = None,
        minors: bool | None = None,
        page: int = 1,
        timeout: float | None = None,
    ) -> AsyncIterator[ParticipantPage]:
        """``GET /participants``, page by page from ``page`` to the last."""
        while True:
            query = _query(
                email=email, participant_code=participant_code, page=page, minors=minors, status=status
            )
            data, attempts, raw = await self._client._send(
                "GET", "/participants?" + query, None, request_id=None, timeout=timeout
            )
            result = _read_page(data, attempts, page, raw)
            yield result
            if not result.participants or result.page >= result.total_pages:
                return
            page = result.page + 1

    async def list(
        self,
        *,
        email: str | None = None,
        participant_code: str | None = None,
        status: str | None = None,
        minors: bool | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Participant]:
        """Every participant matching the filters, across every page."""
        async for result in self.list_pages(
            email=email, participant_code=participant_code, status=status, minors=minors, timeout=timeout
        ):
            for participant in result.participants:
                yield participant


def _prepare(payload: P | Mapping[str, Any], cls: type[P], request_id: object) -> tuple[P, str | None]:
    """Validate the payload and a pinned request_id together, reporting every problem.

    A mapping is structured into ``cls``; a ``request_id`` key in it pins the id.
    """
    if request_id is None and type(payload) is cls:
        return payload, None  # a model validated itself when it was built
    problems: list[Problem] = []
    if isinstance(payload, Mapping) and "request_id" in payload:
        embedded = payload["request_id"]
        payload = {key: value for key, value in payload.items() if key != "request_id"}
        if request_id is not None and normalize_request_id(request_id) != normalize_request_id(embedded):
            problems.append(Problem("request_id", "differs from the request_id argument"))
        request_id = embedded if request_id is None else request_id
    pinned = None
    if request_id is not None:
        pinned = normalize_request_id(request_id)
        if pinned is None:
            problems.append(Problem("request_id", "must be a version-4 UUID (or its string)"))
    model: P | None = payload if isinstance(payload, cls) else None
    if model is None:
        try:
            model = structure_payload(payload, cls)
        except ValidationError as error:
            problems.extend(error.problems)
    if problems or model is None:
        raise ValidationError(cls.__name__, problems)
    return model, pinned


def _with_request_id(payload: bytes, request_id: str) -> bytes:
    # Payload keys are model fields (never integer-like), so putting request_id
    # first is exactly where JSON.stringify would keep it.
    head = b'{"request_id":"' + request_id.encode("ascii") + b'"'
    return head + b"}" if payload == b"{}" else head + b"," + payload[1:]


def _query(**params: object) -> str:
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        pairs.append(f"{key}={urllib.parse.quote(text, safe='')}")
    return "&".join(pairs)


def _read_page(data: Any, attempts: int, requested_page: int, raw: RawResponse | None) -> ParticipantPage:
    items = data.get("message") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise _malformed("a 'message' list", raw, data, None, attempts)
    participants = tuple(
        read_record(item, Participant, attempts=attempts) for item in items if isinstance(item, dict)
    )
    page = _int_or(data.get("page"), requested_page)
    return ParticipantPage(
        participants=participants,
        page=page,
        total_pages=_int_or(data.get("total_pages"), page),
        page_size=_int_or(data.get("page_size"), None),
        count=_int_or(data.get("count"), None),
        raw=data,
    )


def _int_or(value: Any, default: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _malformed(
    expected: str, raw: RawResponse | None, data: Any, request_id: str | None, attempts: int
) -> MalformedResponseError:
    return MalformedResponseError(
        f"the response is not the documented shape (expected {expected})",
        status_code=raw.status_code if raw is not None else 200,
        body=data,
        raw_text=raw.text if raw is not None else json.dumps(data, ensure_ascii=False),
        request_id=request_id,
        attempts=attempts,
        headers=raw.header_dict() if raw is not None else None,
    )


def _check_base_url(base_url: str, allow_insecure_http: bool) -> str:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        raise ConfigurationError(f"base_url is not a URL: {base_url!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host: {base_url!r}")
    if url.scheme == "http" and url.host not in _LOOPBACK_HOSTS and not allow_insecure_http:
        raise ConfigurationError(
            "base_url uses plain http to a non-loopback host; use https, or pass allow_insecure_http=True"
        )
    return base_url.rstrip("/")


def _sender(
    http_client: httpx.AsyncClient | None,
    transport: httpx.AsyncBaseTransport | None,
    backend: str,
    max_connections: int,
    verify: ssl.SSLContext | bool,
) -> Sender:
    """The sender for the options given: the caller's client or transport, else the backend named."""
    if backend not in ("auto", "builtin", "aiohttp", "httpx"):
        raise ConfigurationError("http_backend must be 'auto', 'builtin', 'aiohttp' or 'httpx'")
    if http_client is not None and transport is not None:
        raise ConfigurationError("pass http_client or transport, not both")
    if http_client is not None:
        return HttpxClientSender(http_client)
    if transport is not None:
        return HttpxTransportSender(transport)
    if backend == "aiohttp":
        try:
            return AiohttpSender(max_connections, verify=verify)
        except ImportError:
            raise ConfigurationError(
                "http_backend='aiohttp' needs aiohttp: pip install 'ndax-async[aiohttp]'"
            ) from None
    if backend == "httpx":
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return HttpxTransportSender(httpx.AsyncHTTPTransport(limits=limits, verify=verify))
    return BuiltinSender(max_connections, verify=verify)


def _endpoint_flags(value: bool | Mapping[str, bool]) -> dict[str, bool]:
    if isinstance(value, bool):
        return dict.fromkeys(_ENDPOINTS, value)
    unknown = set(value) - set(_ENDPOINTS)
    if unknown:
        raise ConfigurationError(f"send_request_id: unknown endpoint(s) {sorted(unknown)}; use {_ENDPOINTS}")
    return {endpoint: bool(value.get(endpoint, True)) for endpoint in _ENDPOINTS}
