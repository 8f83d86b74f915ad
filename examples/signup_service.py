"""A small signup service on FastAPI that creates customers at NDAX before answering.

What it shows:

- one ``AsyncClient`` for the app's lifetime, opened and closed by the lifespan
  (never one per request: that exhausts sockets and loses the connection pool);
- ``POST /signup`` (create a customer), ``POST /minors`` (create a minor under a
  custodian) and ``PUT /customers/{code}/address`` (a verified address change);
- ``POST /signups``: validate now, create later: the customer is queued for the
  onboarding workers (``examples/onboarding_worker.py``, arq on Redis, when
  ``NDAX_QUEUE_URL`` is set) and ``GET /signups/{job_id}`` tells how it went;
- the caller's ``Idempotency-Key`` header becomes the request_id, so a browser
  or mobile app retrying a signup gets the same customer, never a second one;
- the SDK's errors as HTTP answers: invalid input 422 with every problem by
  field, an NDAX outage 503 with ``Retry-After``, conflicts 409, an unknown
  customer 404, anything NDAX refused 400/502.

Run it against the embedded sandbox (no credentials, no network)::

    bash scripts/example.sh            # http://127.0.0.1:8000/docs

Against NDAX, set ``NDAX_API_KEY``, ``NDAX_API_SECRET``, ``NDAX_PASSPHRASE``
(and ``NDAX_BASE_URL``) and run ``uvicorn examples.signup_service:app``.

``SIGNUP_OTEL=console`` prints the SDK's OpenTelemetry spans to stdout, one
line each (needs ``opentelemetry-sdk``); ``NDAX_LOG=info`` prints its retry and
failure log lines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.jobs import Job, JobStatus
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from ndax_async import AsyncClient, key_to_request_id
from ndax_async import errors as ndax_errors

from .console_spans import console_telemetry
from .onboarding_worker import JOB_PREFIX, QUEUE_NAME, enqueue_signup

# An NDAX call inside a request handler gets this long in total, retries
# included; past it the caller gets a 503 and may retry with the same key.
CALL_DEADLINE = float(os.environ.get("SIGNUP_NDAX_DEADLINE", "10"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client for the app's lifetime, closed (with its pool) at shutdown; the job queue if configured."""
    queue_url = os.environ.get("NDAX_QUEUE_URL")
    queue: ArqRedis | None = await create_pool(RedisSettings.from_dsn(queue_url)) if queue_url else None
    app.state.queue = queue
    try:
        connections = int(os.environ.get("SIGNUP_NDAX_CONNECTIONS", "64"))
        async with AsyncClient.from_env(
            max_connections=connections, **console_telemetry("SIGNUP_OTEL")
        ) as ndax:
            app.state.ndax = ndax
            yield
    finally:
        if queue is not None:
            await queue.aclose()


app = FastAPI(title="signup service (ndax-async example)", lifespan=lifespan)


def _ndax(request: Request) -> AsyncClient:
    client: AsyncClient = request.app.state.ndax
    return client


async def _json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 422 naming the body."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ndax_errors.ValidationError("request", [ndax_errors.Problem("body", "must be a JSON object")])
    return body


def _request_id(key: str | None, endpoint: str) -> str | None:
    """The caller's Idempotency-Key as a request_id (per endpoint), else the SDK's derived id."""
    return key_to_request_id(key, namespace=endpoint) if key else None


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


@app.get("/healthz")
async def health(request: Request) -> dict[str, Any]:
    """Liveness, and the counts a soak test watches for leaks."""
    return {"ok": not _ndax(request).is_closed, "tasks": len(asyncio.all_tasks())}


@app.post("/signup", status_code=201)
async def signup(request: Request, idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """Create the customer at NDAX; answer with its participant_code."""
    payload = await _json_object(request)
    customer = await _ndax(request).customers.create(
        payload, request_id=_request_id(idempotency_key, "signup"), deadline=CALL_DEADLINE
    )
    return {"participant_code": customer.participant_code, "email": customer.email}


@app.post("/signups", status_code=202)
async def queue_signup(request: Request, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Validate the customer now and queue its creation for the onboarding workers.

    The job carries the canonical payload and its request_id (from the
    Idempotency-Key, else derived from the payload), so every run of it is the
    same operation. Queueing the same signup again while it is queued, or
    within an hour of its end, is a no-op.
    """
    queue: ArqRedis | None = request.app.state.queue
    if queue is None:
        return JSONResponse({"detail": "no job queue configured (NDAX_QUEUE_URL)"}, status_code=503)
    payload = await _json_object(request)
    prepared = _ndax(request).prepare_write(
        "create", payload, request_id=_request_id(idempotency_key, "signup")
    )  # a ValidationError here is a 422: nothing is queued
    assert prepared.request_id is not None  # the create endpoint always sends one
    job = await enqueue_signup(queue, json.loads(prepared.payload), prepared.request_id)
    job_id = JOB_PREFIX + prepared.request_id
    return JSONResponse({"job_id": job_id, "queued": job is not None}, status_code=202)


@app.get("/signups/{job_id}")
async def signup_status(job_id: str, request: Request) -> dict[str, Any]:
    """A queued signup: ``queued``, ``in_progress``, ``complete`` (with the result) or ``not_found``."""
    queue: ArqRedis | None = request.app.state.queue
    if queue is None:
        return {"job_id": job_id, "status": JobStatus.not_found.value}
    job = Job(job_id, queue, _queue_name=QUEUE_NAME)
    status = await job.status()
    answer: dict[str, Any] = {"job_id": job_id, "status": status.value}
    if status is JobStatus.complete:
        info = await job.result_info()
        if info is not None:
            answer["success"] = info.success
            answer["result"] = info.result if info.success else repr(info.result)
    return answer


@app.post("/minors", status_code=201)
async def create_minor(request: Request, idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """Create a minor under the custodian named by ``custodian_participant_code``."""
    payload = await _json_object(request)
    minor = await _ndax(request).customers.create_minor(
        payload, request_id=_request_id(idempotency_key, "minor"), deadline=CALL_DEADLINE
    )
    return {"participant_code": minor.participant_code, "email": minor.email}


@app.put("/customers/{participant_code}/address")
async def change_address(
    participant_code: str, request: Request, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Apply a verified address change (verified now, unless ``platform_updated_at`` is given)."""
    body = await _json_object(request)
    address, verified_at = body.get("address"), body.get("platform_updated_at")
    update = {
        "platform_updated_at": verified_at or dt.datetime.now(dt.timezone.utc),
        "address": address,
    }
    customer = await _ndax(request).customers.update(
        participant_code, update, request_id=_request_id(idempotency_key, "address"), deadline=CALL_DEADLINE
    )
    return {"participant_code": customer.participant_code, "city": customer.city}


# -- the SDK's errors as HTTP answers ----------------------------------------------


@app.exception_handler(ndax_errors.ValidationError)
async def invalid(request: Request, error: ndax_errors.ValidationError) -> JSONResponse:
    problems = [{"field": p.field, "problem": p.message} for p in error.problems]
    return JSONResponse({"detail": problems}, status_code=422)


@app.exception_handler(ndax_errors.TransportError)
async def unreachable(request: Request, error: ndax_errors.TransportError) -> JSONResponse:
    return _unavailable("NDAX did not answer in time; retry with the same Idempotency-Key", None)


@app.exception_handler(ndax_errors.ClientClosedError)
async def shutting_down(request: Request, error: ndax_errors.ClientClosedError) -> JSONResponse:
    return _unavailable("the service is restarting; retry with the same Idempotency-Key", None)


@app.exception_handler(ndax_errors.APIError)
async def refused(request: Request, error: ndax_errors.APIError) -> JSONResponse:
    if isinstance(error, (ndax_errors.ServerError, ndax_errors.RateLimitError)):
        return _unavailable("NDAX is unavailable; retry with the same Idempotency-Key", error.headers)
    if isinstance(error, ndax_errors.NotFoundError):
        return JSONResponse({"detail": "no such customer"}, status_code=404)
    if isinstance(
        error,
        (ndax_errors.ParticipantExistsError, ndax_errors.IdempotencyConflictError, ndax_errors.ConflictError),
    ):
        return JSONResponse({"detail": error.message}, status_code=409)
    if isinstance(error, ndax_errors.BadRequestError):
        return JSONResponse({"detail": error.message}, status_code=400)
    # 401/403 and anything else: our configuration or NDAX's fault, not the caller's.
    return JSONResponse({"detail": "NDAX refused the request"}, status_code=502)


def _unavailable(detail: str, headers: dict[str, str] | None) -> JSONResponse:
    retry_after = (headers or {}).get("retry-after", "")
    seconds = retry_after if retry_after.isdigit() else "2"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": seconds})
