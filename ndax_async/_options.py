"""The client's options turned into its parts, refusing what cannot apply.

:class:`~ndax_async.AsyncClient` calls these once, in its constructor and in
``from_env()``: the base URL check, the HTTP sender for the options given,
the fleet budget, the per-endpoint request_id flags, and the environment's
settings.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from ._redact import redact_url
from ._sending.budget import Budget, BudgetLimit
from ._sending.senders import HttpxSender
from ._wire.writes import ENDPOINTS
from .errors import ConfigurationError

__all__ = [
    "PRODUCTION_URL",
    "check_base_url",
    "endpoint_flags",
    "env_options",
    "make_budget",
    "make_sender",
]

PRODUCTION_URL = "https://api.ndax.in"
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def env_options(env: Mapping[str, str]) -> dict[str, Any]:
    """The client's keyword options from ``NDAX_*`` environment variables.

    Credentials (``NDAX_API_KEY``, ``NDAX_API_SECRET``, ``NDAX_PASSPHRASE``) are
    required; ``NDAX_BASE_URL``, ``NDAX_PROXY``, ``NDAX_BUDGET_URL``,
    ``NDAX_BUDGET_LIMIT`` and ``NDAX_BUDGET_MEMBERS`` are optional.
    """
    names = ("NDAX_API_KEY", "NDAX_API_SECRET", "NDAX_PASSPHRASE")
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise ConfigurationError("missing environment variable(s): " + ", ".join(missing))
    options: dict[str, Any] = {
        "api_key": env["NDAX_API_KEY"],
        "api_secret": env["NDAX_API_SECRET"],
        "passphrase": env["NDAX_PASSPHRASE"],
        "base_url": env.get("NDAX_BASE_URL") or PRODUCTION_URL,
    }
    for variable, option in (
        ("NDAX_PROXY", "proxy"),
        ("NDAX_BUDGET_URL", "budget"),
        ("NDAX_BUDGET_LIMIT", "budget_limit"),
    ):
        if env.get(variable):
            options[option] = env[variable]
    members = env.get("NDAX_BUDGET_MEMBERS")
    if members:
        if not members.strip().isdigit() or int(members) < 1:
            raise ConfigurationError(f"NDAX_BUDGET_MEMBERS must be a whole number >= 1, not {members!r}")
        options["budget_members"] = int(members)
    return options


def check_base_url(base_url: str, allow_insecure_http: bool) -> str:
    """The base URL without a trailing slash; plain http only to loopback unless allowed."""
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


def make_sender(
    http_client: httpx.AsyncClient | None,
    transport: httpx.AsyncBaseTransport | None,
    backend: str,
    max_connections: int,
    verify: ssl.SSLContext | bool,
    proxy: str | None,
) -> HttpxSender:
    """The sender for the options given: the caller's client or transport, else the backend named."""
    if backend not in ("aiohttp", "httpx"):
        raise ConfigurationError("http_backend must be 'aiohttp' or 'httpx'")
    if http_client is not None and transport is not None:
        raise ConfigurationError("pass http_client or transport, not both")
    if http_client is not None or transport is not None:
        given = "http_client" if http_client is not None else "transport"
        for name, value in (("verify", verify is not True), ("proxy", proxy is not None)):
            if value:
                raise ConfigurationError(f"{name}= does not apply with {given}=: set it on your {given}")
    if http_client is not None:
        return HttpxSender(http_client, owned=False)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    # timeout=None: each attempt passes its own (``AsyncClient(timeout=...)``), None meaning none.
    if transport is not None:  # trust_env off: the environment's proxies would route around it
        own = httpx.AsyncClient(transport=transport, timeout=None, trust_env=False)  # noqa: S113
        return HttpxSender(own, owned=True)
    client_type = HttpxAiohttpClient if backend == "aiohttp" else httpx.AsyncClient
    try:
        client = client_type(limits=limits, verify=verify, proxy=proxy, timeout=None, trust_env=True)
    except (ValueError, ImportError) as error:  # a malformed proxy URL, or socks:// without socksio
        raise ConfigurationError(f"proxy: {error}") from None
    return HttpxSender(client, owned=True)


def make_budget(
    budget: Budget | str | None, limit: BudgetLimit | str | None, members: int
) -> tuple[Budget | None, bool]:
    """The client's budget, and whether the client made it (and so closes it)."""
    if budget is None or isinstance(budget, Budget):
        if limit is not None and budget is not None:
            raise ConfigurationError(
                "budget_limit applies to a budget URL; set the limit on the budget object"
            )
        return budget, False
    from ._sending.redis_budget import RedisBudget

    if not budget.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(f"budget must be a Budget or a redis:// URL, not {redact_url(budget)!r}")
    try:
        return RedisBudget(budget, limit, expected_members=members), True
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def endpoint_flags(value: bool | Mapping[str, bool]) -> dict[str, bool]:
    """``send_request_id`` as a flag per write endpoint."""
    if isinstance(value, bool):
        return dict.fromkeys(ENDPOINTS, value)
    unknown = set(value) - set(ENDPOINTS)
    if unknown:
        raise ConfigurationError(f"send_request_id: unknown endpoint(s) {sorted(unknown)}; use {ENDPOINTS}")
    return {endpoint: bool(value.get(endpoint, True)) for endpoint in ENDPOINTS}
