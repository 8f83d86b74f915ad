"""``AsyncClient`` and its resources, ``customers`` and ``participants``.

A write goes: payload (model or mapping) → validated model → wire dict →
canonical bytes (once) → request_id (once) → signed, retried attempts →
typed record or typed error.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import httpx

from ._clock import Clock, SystemClock
from ._observe import Observer, observer_for
from ._observe.logs import configure_from_env
from ._options import PRODUCTION_URL, check_base_url, endpoint_flags, env_options, make_budget, make_sender
from ._sending.budget import Budget, BudgetLimit, Priority, check_priority
from ._sending.limits import RateLimiter, RetryQuota
from ._sending.retry import RateLimitPause, RetryEvent, RetryPolicy
from ._sending.senders import RawResponse
from ._sending.transport import CallScope, Transport
from ._version import __version__
from ._wire.convert import read_record
from ._wire.request_ids import RequestIdMode
from ._wire.signing import Credentials
from ._wire.writes import PreparedWrite, prepare_write
from .errors import (
    ClientClosedError,
    ConfigurationError,
    MalformedResponseError,
    error_from_response,
)
from .resources import Customers, ParticipantPage, Participants, malformed_response

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "PRODUCTION_URL",
    "AsyncClient",
    "CallScope",
    "Customers",
    "HTTPBackend",
    "ParticipantPage",
    "Participants",
    "PreparedWrite",
]

DEFAULT_MAX_CONNECTIONS = 64
"""The default pool: the API's 200 requests/s per IP at up to 320 ms each.

More connections than that only add CPU on both ends (``benchmarks/``); tasks
beyond the pool wait for a free connection.
"""
HTTPBackend = Literal["aiohttp", "httpx"]
"""The connection pool under the SDK's ``httpx.AsyncClient``: aiohttp's (default) or httpx's own."""


class AsyncClient:
    """An asynchronous client for the NDAX participants API.

    Hold one per event loop (in a web app, one for the app's lifespan) and
    close it with ``async with`` or :meth:`aclose`; it is safe to share
    between tasks. It sends through an ``httpx.AsyncClient`` it makes: over
    aiohttp's connection pool by default (``http_backend="aiohttp"``, through
    ``httpx-aiohttp``), or httpx's own (``"httpx"``). Either honours
    ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``; ``proxy=``
    sets one explicitly. Pass ``transport=`` (any ``httpx.AsyncBaseTransport``,
    closed with the client) or ``http_client=`` (your ``httpx.AsyncClient``,
    which you configure and close) to choose the HTTP layer yourself; ``verify=``
    and ``proxy=`` then do not apply, and are refused. At most
    ``max_connections`` attempts are in flight; the rest wait, unsigned.
    ``timeout`` bounds each phase of an attempt (connect, write, each read, a
    pooled connection), not that wait; ``deadline`` bounds the whole call.

    ``request_ids`` picks how a write's request_id is chosen when you do not
    pin one: ``"derived"`` (default; from the operation itself, so retries,
    restarts and other machines agree) or ``"random"`` (per call).
    ``send_request_id`` turns sending it off for all or some endpoints
    (``{"create_minor": False}``). ``rate_limit`` (requests per second) spaces
    every attempt; ``retry_quota`` shares a retry budget across calls.

    ``budget`` shares the platform's per-IP rate limit with every process
    behind the same IP: a :class:`~ndax_async.RedisBudget` (or its URL,
    ``redis://host:port/db``, with ``budget_limit`` such as ``"2000/10"``) or a
    :class:`~ndax_async.LocalBudget`. Every attempt takes a slot first; calls
    are ``budget_priority`` (``"interactive"`` by default; bulk runs are ``"bulk"``).
    A budget made from a URL is closed with the client; while Redis is down it
    uses ``1/budget_members`` of the limit (the processes sharing the IP).

    ``telemetry`` turns OpenTelemetry traces and metrics on (``True``; needs the
    ``otel`` extra) or off (``False``); by default (``None``) they are on when
    the application has imported ``opentelemetry`` before building the client,
    or passes ``tracer_provider`` / ``meter_provider`` (else the global ones).
    Retries and failures are logged on the ``ndax_async`` logger either way
    (``NDAX_LOG=info`` or ``debug`` prints them).
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
        http_backend: HTTPBackend = "aiohttp",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        verify: ssl.SSLContext | bool = True,
        proxy: str | None = None,
        request_ids: RequestIdMode | Literal["derived", "random"] = RequestIdMode.DERIVED,
        request_id_namespace: str = "",
        send_request_id: bool | Mapping[str, bool] = True,
        on_retry: Callable[[RetryEvent], None] | None = None,
        rate_limit: float | None = None,
        retry_quota: RetryQuota | None = None,
        allow_insecure_http: bool = False,
        clock: Clock | None = None,
        budget: Budget | str | None = None,
        budget_limit: BudgetLimit | str | None = None,
        budget_priority: Priority = "interactive",
        budget_members: int = 4,
        telemetry: bool | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self._credentials = Credentials(api_key, api_secret, passphrase)
        self.base_url = check_base_url(base_url, allow_insecure_http)
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
        self._send_request_id = endpoint_flags(send_request_id)
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        configure_from_env()  # observe: NDAX_LOG=debug|info adds a readable log handler
        try:
            self._observer = observer_for(telemetry, tracer_provider, meter_provider)  # observe
        except ImportError:
            raise ConfigurationError(
                "telemetry=True needs opentelemetry-api: pip install 'ndax-async[otel]'"
            ) from None
        self._sender = make_sender(http_client, transport, http_backend, max_connections, verify, proxy)
        self._clock: Clock = clock or SystemClock()
        self.rate_limit_pause = RateLimitPause(self._clock)
        self.budget, self._owns_budget = make_budget(budget, budget_limit, budget_members)
        try:
            budget_priority = check_priority(budget_priority)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
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
            budget=self.budget,
            budget_priority=budget_priority,
            observer=self._observer,  # observe
        )
        self._closed = False
        self.customers = Customers(self)
        self.participants = Participants(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """Build a client from ``NDAX_API_KEY``, ``NDAX_API_SECRET``,
        ``NDAX_PASSPHRASE`` and (optionally) ``NDAX_BASE_URL``, ``NDAX_PROXY``,
        ``NDAX_BUDGET_URL`` (``redis://host:port/db``), ``NDAX_BUDGET_LIMIT``
        (``2000/10``) and ``NDAX_BUDGET_MEMBERS`` (processes sharing the IP; default 4)."""
        settings = env_options(os.environ if environ is None else environ)
        if "http_client" in options or "transport" in options:
            settings.pop("proxy", None)  # the caller's HTTP layer has its own proxy settings
        return cls(**{**settings, **options})

    @property
    def observer(self) -> Observer:
        """What this client reports to (logs, and OpenTelemetry if on); the bulk engine reports to it too."""
        return self._observer

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
        try:
            await self._sender.aclose()
        finally:
            if self._owns_budget and self.budget is not None:
                await self.budget.aclose()

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

    def prepare_write(
        self, endpoint: str, payload: Any, *, participant_code: str | None = None, request_id: object = None
    ) -> PreparedWrite:
        """Validate, encode once and fix the request_id of a write, with this client's id settings.

        ``endpoint`` is ``"create"``, ``"create_minor"`` or ``"update"``. Nothing
        is sent; :meth:`send_write` sends the result. The bulk engine uses this pair.
        """
        return prepare_write(
            endpoint,
            payload,
            participant_code=participant_code,
            request_id=request_id,
            request_ids=self.request_ids,
            namespace=self.request_id_namespace,
            send_request_id=self._send_request_id[endpoint],
        )

    async def send_write(
        self,
        prepared: PreparedWrite,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        scope: CallScope | None = None,
        priority: Priority | None = None,
    ) -> Any:
        """Send a prepared write (retrying) and read its record (a ``Customer`` or ``Minor``).

        ``scope`` adds a group's limits and hooks (a bulk run's) to this call;
        ``priority`` sets its class in the shared budget.
        """
        data, attempts, raw = await self.send_json(
            prepared.method,
            prepared.route,
            prepared.body,
            request_id=prepared.request_id,
            timeout=timeout,
            max_retries=max_retries,
            deadline=deadline,
            scope=scope,
            priority=priority,
        )
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict):
            raise malformed_response("a 'message' object", raw, data, prepared.request_id, attempts)
        record_type: Any = prepared.record_type
        return read_record(message, record_type, attempts=attempts, request_id=prepared.request_id)

    async def send_json(
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
        priority: Priority | None = None,
    ) -> tuple[Any, int, RawResponse | None]:
        """Send one logical request; return (parsed JSON, attempts, response) of a 2xx.

        With ``not_found_ok``, a 404 returns ``(None, attempts, None)``."""
        self._ensure_open()
        if priority is not None:
            scope = attrs.evolve(scope or CallScope(), priority=check_priority(priority))
        run = scope.run if scope is not None else None  # observe
        observed = self._observer.operation_started(method, route, request_id, run)  # observe
        try:
            result = await self._send_json(
                method, route, body, request_id, timeout, max_retries, deadline, not_found_ok, scope
            )
        except BaseException as error:
            attempts = getattr(error, "attempts", 0)  # observe
            self._observer.operation_ended(observed, attempts=attempts, error=error)  # observe
            raise
        self._observer.operation_ended(observed, attempts=result[1], found=result[2] is not None)  # observe
        return result

    async def _send_json(
        self,
        method: str,
        route: str,
        body: bytes | None,
        request_id: str | None,
        timeout: float | None,
        max_retries: int | None,
        deadline: float | None,
        not_found_ok: bool,
        scope: CallScope | None,
    ) -> tuple[Any, int, RawResponse | None]:
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
