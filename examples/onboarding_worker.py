"""Onboarding workers on arq (Redis): "create this customer" jobs, run through the SDK, each exactly once.

The signup service (``examples/signup_service.py``, ``POST /signups``) or any
other producer enqueues a job with :func:`enqueue_signup`; any number of worker
processes run them::

    NDAX_API_KEY=... NDAX_API_SECRET=... NDAX_PASSPHRASE=... \\
    python -m examples.onboarding_worker --redis redis://127.0.0.1:6379/0 --jobs 16

Why arq: it is asyncio-native, so one worker process runs ``--jobs`` creates at
once over one ``AsyncClient`` (one connection pool, one rate limiter) on one
event loop; and its broker is Redis, which the fleet budget uses too, so a fleet
needs one Redis for both.

How arq redelivers the job of a SIGKILLed worker: a job stays in the queue (a
sorted set) while it runs; the worker that starts it sets an in-progress key
that expires after ``job_timeout + 10`` seconds. A killed worker never deletes
it, so once it expires the next poll of any worker (every ``poll_delay``, 0.5 s)
starts the job again. A killed worker's jobs are therefore redone within
``job_timeout + 10 s + poll_delay``: 70.5 s with the default ``--job-timeout 60``
(given a worker with a free slot; they are the oldest jobs, so first in line).
A worker stopped by SIGTERM or SIGINT cancels its jobs and puts them straight
back. Each start counts as a try; ``--max-tries`` (100) is how many a job gets.

Why a redelivery is harmless: the job carries the canonical payload and the
request_id fixed when it was enqueued, so every run of it sends the same bytes
under the same id, and NDAX replays the first result instead of creating a
second customer. Errors worth another try (no answer, 5xx, 429) end the run with
``arq.Retry`` (backoff up to a minute), which is the same replay again later.
``reconcile=True`` turns a customer an older integration created under another
request_id into a success with ``existing: true``.

The job's NDAX call is bounded (``--job-timeout`` minus a second, retries and
the reconcile lookup included): arq fails a job that overruns its timeout for
good, so the SDK must give up first and leave the retry to arq.

Budget: with ``--budget URL`` (or ``NDAX_BUDGET_URL``) the workers draw from
the fleet's shared Redis budget, once the SDK has it (``AsyncClient.from_env``
reads the variable); ``--rate R`` caps each worker's own requests per second.

``WORKER_OTEL=console`` prints the SDK's OpenTelemetry spans to stdout, one
line each (needs ``opentelemetry-sdk``); ``NDAX_LOG=info`` prints its retry and
failure log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

from arq import ArqRedis, Retry
from arq.connections import RedisSettings
from arq.jobs import Job
from arq.worker import create_worker, func

from ndax_async import AsyncClient, RateLimitError, ServerError, TransportError

from .console_spans import console_telemetry

QUEUE_NAME = "ndax:onboarding"
"""The arq queue (a Redis sorted set) the onboarding jobs go through."""

JOB_PREFIX = "signup:"
"""Job ids are this plus the request_id: enqueueing the same signup twice queues it once."""

CREATE_CUSTOMER = "create_customer"

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_JOB_TIMEOUT = 60.0
DEFAULT_MAX_TRIES = 100
MAX_RETRY_DELAY = 60.0

log = logging.getLogger("onboarding_worker")


async def enqueue_signup(queue: ArqRedis, payload: Mapping[str, Any], request_id: str) -> Job | None:
    """Queue "create this customer"; ``None`` if this signup is already queued or just done.

    ``payload`` is the customer in wire form and ``request_id`` the id fixed
    for it, both as ``AsyncClient.prepare_write`` returns them (validate
    before queueing; a worker cannot ask the caller to fix a field).
    """
    return await queue.enqueue_job(
        CREATE_CUSTOMER, request_id, dict(payload), _job_id=JOB_PREFIX + request_id, _queue_name=QUEUE_NAME
    )


async def create_customer(ctx: dict[str, Any], request_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The job: create the customer under its fixed request_id (a replay when it already ran)."""
    client: AsyncClient = ctx["ndax"]
    budget: float = ctx["call_budget"]
    try:
        customer = await asyncio.wait_for(
            client.customers.create(payload, request_id=request_id, reconcile=True, deadline=budget), budget
        )
    except (asyncio.TimeoutError, TransportError, ServerError, RateLimitError) as error:
        delay = min(MAX_RETRY_DELAY, 2.0 ** ctx["job_try"])
        log.info("job %s: %s; trying again in %gs", ctx["job_id"], type(error).__name__, delay)
        raise Retry(defer=delay) from error
    return {
        "participant_code": customer.participant_code,
        "email": customer.email,
        "existing": customer.existing,
    }


async def _open_client(ctx: dict[str, Any]) -> None:
    """One client per worker process, on the worker's event loop, for its lifetime."""
    rate = ctx["rate"]
    options: dict[str, Any] = {"rate_limit": rate} if rate else {}
    ctx["ndax"] = AsyncClient.from_env(**options, **console_telemetry("WORKER_OTEL"))


async def _close_client(ctx: dict[str, Any]) -> None:
    client: AsyncClient | None = ctx.get("ndax")
    if client is not None:
        await client.aclose()


def worker_options(
    redis_url: str = DEFAULT_REDIS,
    *,
    jobs: int = 16,
    job_timeout: float = DEFAULT_JOB_TIMEOUT,
    max_tries: int = DEFAULT_MAX_TRIES,
    rate: float | None = None,
) -> dict[str, Any]:
    """The arq ``Worker`` keyword arguments for an onboarding worker."""
    return {
        "functions": [func(create_customer, name=CREATE_CUSTOMER)],
        "queue_name": QUEUE_NAME,
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "max_jobs": jobs,
        # Read past the jobs other workers hold (and a killed worker's, until they expire).
        "queue_read_limit": max(100, jobs * 20),
        "job_timeout": job_timeout,
        "max_tries": max_tries,
        "keep_result": 3600,  # for status lookups; re-enqueueing a finished signup meanwhile is a no-op
        "ctx": {"call_budget": max(1.0, job_timeout - 1.0), "rate": rate},
        "on_startup": _open_client,
        "on_shutdown": _close_client,
    }


async def run(options: dict[str, Any]) -> None:
    """Run one worker until SIGTERM or SIGINT (its running jobs go back to the queue)."""
    worker = create_worker(options)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass  # the signal handler cancelled the worker's main task: a normal stop
    finally:
        await worker.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m examples.onboarding_worker [--redis URL] [--jobs N] [--job-timeout S] ...``."""
    parser = argparse.ArgumentParser(description="Run one onboarding worker (arq on Redis).")
    parser.add_argument("--redis", default=os.environ.get("NDAX_QUEUE_URL", DEFAULT_REDIS))
    parser.add_argument("--jobs", type=int, default=16, help="jobs at once in this process (16)")
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=DEFAULT_JOB_TIMEOUT,
        help="seconds a job may run (60); a killed worker's jobs are redone within this plus 10.5 s",
    )
    parser.add_argument("--max-tries", type=int, default=DEFAULT_MAX_TRIES, help="runs a job gets (100)")
    parser.add_argument("--rate", type=float, default=None, help="this worker's own requests/s cap")
    parser.add_argument("--budget", default=None, help="the fleet budget's Redis URL (NDAX_BUDGET_URL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every job")
    args = parser.parse_args(argv)
    if args.budget:
        os.environ["NDAX_BUDGET_URL"] = args.budget  # read by AsyncClient.from_env
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    options = worker_options(
        args.redis, jobs=args.jobs, job_timeout=args.job_timeout, max_tries=args.max_tries, rate=args.rate
    )
    asyncio.run(run(options))


if __name__ == "__main__":
    main()
