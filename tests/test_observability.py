"""OpenTelemetry spans, events and metrics, and the structured log lines, against the sandbox."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import respx
from opentelemetry.trace import StatusCode

from ndax_async import (
    AsyncClient,
    BudgetLimit,
    BudgetWait,
    LocalBudget,
    ParticipantExistsError,
    RequestTimeout,
    TransportError,
)
from ndax_async.bulk import Bulk, Operation
from ndax_async.testing import FakeClock, Sandbox

from .helpers import API_KEY, API_SECRET, PASSPHRASE, customer_wire
from .observability import Otel


@pytest.fixture
def otel() -> Otel:
    return Otel()


@pytest.fixture
def sandbox(clock: FakeClock) -> Sandbox:
    return Sandbox(clock=clock.time)


def client_for(sandbox: Sandbox, clock: FakeClock, otel: Otel, **options: Any) -> AsyncClient:
    return sandbox.client(clock=clock, **otel.providers, **options)


def events(span: Any, name: str) -> list[dict[str, Any]]:
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


async def test_two_lost_responses_then_a_replay(sandbox: Sandbox, clock: FakeClock, otel: Otel) -> None:
    sandbox.faults(drop_after=1.0)  # every attempt is committed, then its response is lost

    def on_retry(event: Any) -> None:
        if event.attempt == 2:
            sandbox.faults()  # the third attempt gets its answer

    async with client_for(sandbox, clock, otel, on_retry=on_retry) as client:
        customer = await client.customers.create(customer_wire())
    assert sandbox.stats["creations"] == 1
    assert sandbox.stats["replays"] == 2

    [operation] = otel.spans("ndax.customers.create")
    attempts = otel.children(operation)
    assert [s.name for s in attempts] == ["POST /participants/customers/new"] * 3
    assert [s.attributes.get("http.request.resend_count", 0) for s in attempts] == [0, 1, 2]
    assert "http.request.resend_count" not in attempts[0].attributes  # only on resends, as semconv says
    assert [s.attributes.get("error.type") for s in attempts] == ["response_lost"] * 2 + [None]
    assert attempts[2].attributes["http.response.status_code"] == 200
    assert attempts[0].attributes["url.full"] == "https://api.ndax.in/participants/customers/new"
    assert attempts[0].attributes["server.address"] == "api.ndax.in"
    assert attempts[0].attributes["http.request.method"] == "POST"
    waits = events(operation, "ndax.retry_wait")
    assert [(w["ndax.retry.reason"], w["ndax.attempt"]) for w in waits] == [
        ("response lost", 1),
        ("response lost", 2),
    ]
    assert [w["ndax.wait.seconds"] for w in waits] == clock.sleeps
    assert operation.attributes["ndax.outcome"] == "replayed"
    assert operation.attributes["ndax.attempts"] == 3
    assert operation.attributes["ndax.request_id"] == customer.request_id
    assert operation.status.status_code is StatusCode.UNSET

    metrics = otel.metrics()
    assert metrics["ndax.client.replays"] == [({"ndax.endpoint": "create"}, 1)]
    assert metrics["ndax.client.retries"] == [
        ({"ndax.endpoint": "create", "ndax.retry.reason": "response lost"}, 2)
    ]
    requests = {tuple(sorted(a.items())): v for a, v in metrics["ndax.client.requests"]}
    assert requests == {
        (("error.type", "response_lost"), ("ndax.endpoint", "create")): 2,
        (("http.response.status_code", 200), ("ndax.endpoint", "create")): 1,
    }


async def test_a_first_time_success_is_created_not_replayed(
    sandbox: Sandbox, clock: FakeClock, otel: Otel
) -> None:
    sandbox.faults(err503=1.0)  # refused before processing, so the resend is no replay

    def on_retry(event: Any) -> None:
        sandbox.faults()

    async with client_for(sandbox, clock, otel, on_retry=on_retry) as client:
        await client.customers.create(customer_wire())
    [operation] = otel.spans("ndax.customers.create")
    assert len(otel.children(operation)) == 2
    assert operation.attributes["ndax.outcome"] == "created"
    assert "ndax.client.replays" not in otel.metrics()


async def test_a_success_after_a_connect_error_is_created(
    mock: respx.MockRouter, clock: FakeClock, otel: Otel
) -> None:
    replies = iter([httpx.ConnectError("refused"), httpx.Response(200, json={"message": customer_wire()})])

    def answer(request: httpx.Request) -> httpx.Response:
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    mock.post("/participants/customers/new").mock(side_effect=answer)
    options = {"api_key": API_KEY, "api_secret": API_SECRET, "passphrase": PASSPHRASE}
    async with AsyncClient(**options, clock=clock, **otel.providers) as client:
        await client.customers.create(customer_wire())
    [operation] = otel.spans("ndax.customers.create")
    assert [s.attributes.get("error.type") for s in otel.children(operation)] == ["connect_error", None]
    assert operation.attributes["ndax.outcome"] == "created"  # nothing was sent the first time


async def test_a_429_and_the_shared_pause(sandbox: Sandbox, clock: FakeClock, otel: Otel) -> None:
    sandbox.faults(err429_bare=1.0)
    async with client_for(sandbox, clock, otel) as client:
        with pytest.raises(Exception, match="429"):
            await client.customers.create(customer_wire(), max_retries=0)  # blocks the client for 10 s
        sandbox.faults()
        await client.customers.create(customer_wire(email="second@mail.com"))  # waits the pause out
    first, second = otel.spans("ndax.customers.create")
    [refused] = otel.children(first)
    assert refused.attributes["http.response.status_code"] == 429
    assert refused.attributes["error.type"] == "429"
    assert refused.status.status_code is StatusCode.ERROR
    assert first.attributes["ndax.outcome"] == "failed"
    assert first.attributes["error.type"] == "rate_limited"
    assert events(second, "ndax.rate_limit_pause") == [{"ndax.wait.seconds": 10.0}]
    assert second.attributes["ndax.outcome"] == "created"
    assert otel.metrics()["ndax.client.rate_limit.pause"] == [({}, (1, 10.0))]


async def test_a_429_retried(sandbox: Sandbox, clock: FakeClock, otel: Otel) -> None:
    sandbox.faults(err429_bare=1.0)
    async with client_for(sandbox, clock, otel, on_retry=lambda event: sandbox.faults()) as client:
        await client.customers.create(customer_wire())
    [operation] = otel.spans("ndax.customers.create")
    assert [s.attributes["http.response.status_code"] for s in otel.children(operation)] == [429, 200]
    assert events(operation, "ndax.retry_wait") == [
        {"ndax.retry.reason": "HTTP 429", "ndax.wait.seconds": 10.0, "ndax.attempt": 1}
    ]
    assert operation.attributes["ndax.outcome"] == "created"


async def test_budget_waits(sandbox: Sandbox, clock: FakeClock, otel: Otel) -> None:
    # Two requests per rolling 10 s: the third waits for the first to leave the window.
    budget = LocalBudget(BudgetLimit(requests=2, window=10.0, margin=0, reserve=0), clock=clock)
    seen: list[BudgetWait] = []
    budget.on_wait = seen.append  # the budget's own hook is still called
    async with client_for(sandbox, clock, otel, budget=budget) as client:
        await client.customers.create(customer_wire())
        clock.advance(4.0)
        await client.customers.create(customer_wire(email="second@mail.com"))
        await client.customers.create(customer_wire(email="third@mail.com"))  # waits ~6 s
        with pytest.raises(RequestTimeout):  # its wait (~4 s) would outlast the deadline
            await client.customers.create(customer_wire(email="fourth@mail.com"), deadline=1.0)
    first, second, third, fourth = otel.spans("ndax.customers.create")
    assert events(first, "ndax.budget_wait") == events(second, "ndax.budget_wait") == []
    [waited] = events(third, "ndax.budget_wait")
    assert waited["ndax.wait.seconds"] == seen[0].seconds == pytest.approx(6.0, abs=0.01)
    assert {k: v for k, v in waited.items() if k != "ndax.wait.seconds"} == {
        "ndax.budget.class": "interactive",
        "ndax.budget.reason": "window",
        "ndax.budget.granted": True,
    }
    assert third.attributes["ndax.outcome"] == "created"
    [gave_up] = events(fourth, "ndax.budget_wait")
    assert gave_up["ndax.budget.granted"] is False
    assert fourth.attributes["ndax.outcome"] == "failed"
    assert otel.children(fourth) == []  # no attempt was made
    [(labels, (count, total))] = otel.metrics()["ndax.client.budget.wait"]
    assert labels == {"ndax.budget.class": "interactive", "ndax.budget.reason": "window"}
    assert count == 2
    assert total == pytest.approx(seen[0].seconds + seen[1].seconds)


async def test_a_bulk_runs_budget_waits_are_bulk(sandbox: Sandbox, clock: FakeClock, otel: Otel) -> None:
    budget = LocalBudget(BudgetLimit(requests=2, window=10.0, margin=0, reserve=0), clock=clock)
    operations = [
        Operation(key=str(n), op="create", data=customer_wire(email=f"user{n}@mail.com")) for n in range(2)
    ]
    async with client_for(sandbox, clock, otel, budget=budget) as client:
        await client.customers.create(customer_wire())  # half the window, interactive
        clock.advance(2.0)  # past the bulk class's one-second sub-window cap
        summary = await Bulk(client, concurrency=1, clock=clock).run_all(operations)
    assert summary.succeeded == 2
    _, first, second = otel.spans("ndax.customers.create")
    assert events(first, "ndax.budget_wait") == []
    [waited] = events(second, "ndax.budget_wait")
    assert waited["ndax.budget.class"] == "bulk"
    assert waited["ndax.wait.seconds"] == pytest.approx(8.0, abs=0.01)  # until the first leaves


async def test_refused_and_failed_operations_and_their_log_lines(
    sandbox: Sandbox, clock: FakeClock, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ndax_async")
    async with client_for(sandbox, clock, otel) as client:
        await client.customers.create(customer_wire())
        with pytest.raises(ParticipantExistsError):
            await client.customers.create(customer_wire(first_name="Other"))
        sandbox.faults(drop_before=1.0)
        with pytest.raises(TransportError):
            await client.customers.create(customer_wire(email="third@mail.com"), max_retries=1)
    _, refused, failed = otel.spans("ndax.customers.create")
    assert (refused.attributes["ndax.outcome"], refused.attributes["error.type"]) == (
        "refused",
        "participant_exists",
    )
    assert refused.status.status_code is StatusCode.ERROR
    assert (failed.attributes["ndax.outcome"], failed.attributes["error.type"]) == ("failed", "response_lost")
    assert failed.attributes["ndax.attempts"] == 2
    failures = {(a["ndax.outcome"], a["error.type"]): v for a, v in otel.metrics()["ndax.client.failures"]}
    assert failures == {("refused", "participant_exists"): 1, ("failed", "response_lost"): 1}

    records = [r for r in caplog.records if r.name == "ndax_async"]
    retry = [r for r in records if r.levelno == logging.INFO]
    failures_logged = [r for r in records if r.levelno == logging.WARNING]
    assert len(retry) == 1
    assert len(failures_logged) == 2
    fields = ("request_id", "endpoint", "attempt", "reason")
    assert {f: getattr(retry[0], f) for f in fields} == {
        "request_id": failed.attributes["ndax.request_id"],
        "endpoint": "create",
        "attempt": 1,
        "reason": "response lost",
    }
    assert [(r.endpoint, r.outcome, r.reason, r.attempt) for r in failures_logged] == [  # type: ignore[attr-defined]
        ("create", "refused", "participant_exists", 1),
        ("create", "failed", "response_lost", 2),
    ]
    assert failures_logged[0].request_id == refused.attributes["ndax.request_id"]  # type: ignore[attr-defined]


async def test_reads_redact_the_email(sandbox: Sandbox, clock: FakeClock, otel: Otel) -> None:
    async with client_for(sandbox, clock, otel) as client:
        await client.customers.create(customer_wire())
        assert await client.participants.get_by_email("email-example@mail.com") is not None
        assert await client.participants.get_by_email("nobody@mail.com") is None
        assert [p async for p in client.participants.list(email="email-example@mail.com")]
    found, missing = otel.spans("ndax.participants.get_by_email")
    assert (found.attributes["ndax.outcome"], missing.attributes["ndax.outcome"]) == ("ok", "not_found")
    [listed] = otel.spans("ndax.participants.list")
    [get_attempt] = otel.children(found)
    [list_attempt] = otel.children(listed)
    assert get_attempt.attributes["url.full"] == "https://api.ndax.in/participants/REDACTED"
    assert get_attempt.name == "GET /participants/{email}"
    assert list_attempt.attributes["url.full"] == "https://api.ndax.in/participants?email=REDACTED&page=1"
    for span in otel.spans():
        assert "mail.com" not in repr(dict(span.attributes or {})), span.name


async def test_a_bulk_run_is_a_span_its_operations_linked_traces(
    sandbox: Sandbox, clock: FakeClock, otel: Otel
) -> None:
    tracer = otel.tracer_provider.get_tracer("test")
    operations = [
        Operation(key=str(n), op="create", data=customer_wire(email=f"user{n}@mail.com")) for n in range(3)
    ]
    operations.append(Operation(key="bad", op="create", data=customer_wire(email="not-an-email")))
    async with client_for(sandbox, clock, otel) as client:
        with tracer.start_as_current_span("job") as job:
            summary = await Bulk(client, rate=None).run_all(operations)
    assert (summary.succeeded, summary.failed) == (3, 1)
    [run] = otel.spans("ndax.bulk.run")
    assert run.parent is not None
    assert run.parent.span_id == job.get_span_context().span_id
    assert run.attributes["ndax.bulk.succeeded"] == 3
    assert run.attributes["ndax.bulk.failed"] == 1
    assert run.attributes["ndax.bulk.failed.validation"] == 1
    assert run.attributes["ndax.bulk.operations_per_second"] > 0
    ops = otel.spans("ndax.customers.create")
    assert len(ops) == 3  # the invalid row never became a request
    for op in ops:
        assert op.parent is None  # each operation is a trace of its own...
        assert [link.context.span_id for link in op.links] == [run.context.span_id]  # ...linked to the run
        assert op.context.trace_id != run.context.trace_id
        assert len(otel.children(op)) == 1
    bulk_ops = {a["ndax.outcome"]: v for a, v in otel.metrics()["ndax.bulk.operations"]}
    assert bulk_ops == {"succeeded": 3, "failed": 1}


async def test_journal_lag_counts_operations_sent_whose_outcome_is_not_yet_durable(
    sandbox: Sandbox, clock: FakeClock, otel: Otel, journal_url: str
) -> None:
    def pending() -> int:
        [(labels, value)] = otel.metrics()["ndax.bulk.journal.pending"]
        assert labels == {}
        return int(value)

    seen: list[int] = []

    def on_retry(event: Any) -> None:  # between the attempts of the first operation
        seen.append(pending())
        sandbox.faults()

    operations = [
        Operation(key=str(n), op="create", data=customer_wire(email=f"user{n}@mail.com")) for n in range(3)
    ]
    operations.append(Operation(key="bad", op="create", data=customer_wire(email="not-an-email")))
    sandbox.faults(err503=1.0)
    async with client_for(sandbox, clock, otel, on_retry=on_retry) as client:
        engine = Bulk(client, concurrency=1, rate=None, clock=clock, journal=journal_url)
        summary = await engine.run_all(operations)
        assert (summary.succeeded, summary.failed) == (3, 1)
        assert seen == [1]  # recorded "sending", sent, outcome not yet recorded
        assert pending() == 0  # every outcome durable
        again = await Bulk(client, rate=None, clock=clock, journal=journal_url).run_all(operations)
        assert again.skipped == 3
        assert pending() == 0


async def test_journal_pending_is_an_up_down_counter(otel: Otel) -> None:
    from ndax_async._observe.otel import OtelObserver

    observer = OtelObserver(otel.tracer_provider, otel.meter_provider)
    for _ in range(5):
        observer.journal_pending(+1)
    observer.journal_pending(-3)
    assert otel.metrics()["ndax.bulk.journal.pending"] == [({}, 2)]


async def test_api_only_without_an_sdk_still_works_and_logs(
    sandbox: Sandbox, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ndax_async")
    async with sandbox.client(clock=clock, telemetry=True) as client:  # global providers: no SDK set
        customer = await client.customers.create(customer_wire())
        with pytest.raises(ParticipantExistsError):
            await client.customers.create(customer_wire(first_name="Other"))
    assert customer.participant_code
    assert type(client.observer).__name__ == "OtelObserver"
    [line] = [r for r in caplog.records if r.name == "ndax_async"]
    assert (line.outcome, line.reason) == ("refused", "participant_exists")  # type: ignore[attr-defined]


def test_telemetry_off_uses_the_log_observer(sandbox: Sandbox, otel: Otel) -> None:
    assert type(sandbox.client(telemetry=False).observer).__name__ == "LogObserver"
    assert type(sandbox.client(**otel.providers).observer).__name__ == "OtelObserver"


NO_IMPORT_SCRIPT = r"""
import asyncio, sys

class Refuse:
    '''Stands for opentelemetry not being installed, and records every attempt to import it.'''
    attempts = []
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "opentelemetry":
            self.attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Refuse())
import ndax_async
from ndax_async.bulk import Bulk, Operation
from ndax_async.testing import FakeClock, Sandbox

async def main():
    clock = FakeClock()
    sandbox = Sandbox(clock=clock.time, faults={"drop_after": 0.5, "seed": 3})
    async with sandbox.client(clock=clock) as client:
        print(type(client.observer).__name__)
        await client.customers.create(%(customer)r)
        ops = [Operation(key=str(n), op="create", data={**%(customer)r, "email": f"u{n}@mail.com"})
               for n in range(5)]
        await Bulk(client).run_all(ops)
asyncio.run(main())
print(Refuse.attempts, sorted(m for m in sys.modules if m.startswith("opentelemetry")))
try:
    ndax_async.AsyncClient(api_key="k", api_secret="c2VjcmV0", passphrase="p", telemetry=True)
except ndax_async.ConfigurationError as error:
    print(Refuse.attempts, error)
"""


def test_without_opentelemetry_nothing_is_imported() -> None:
    import subprocess
    import sys

    script = NO_IMPORT_SCRIPT % {"customer": customer_wire()}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "LogObserver"
    assert lines[1] == "[] []"  # no import attempted, none loaded
    # ...and the hook does see an attempt: telemetry=True asks for it, and says what to install.
    assert lines[2].startswith("['opentelemetry'")
    assert "pip install 'ndax-async[otel]'" in lines[2]


def test_ndax_log_adds_a_readable_handler_once() -> None:
    from ndax_async._observe.logs import configure_from_env, logger

    handlers, level = list(logger.handlers), logger.level
    try:
        assert configure_from_env({}) is None
        assert configure_from_env({"NDAX_LOG": "verbose"}) is None
        handler = configure_from_env({"NDAX_LOG": "DEBUG"})
        assert handler is not None
        assert handler in logger.handlers
        assert logger.level == logging.DEBUG
        assert configure_from_env({"NDAX_LOG": "info"}) is handler  # not a second one
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


SDK_LATER_SCRIPT = r"""
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ndax_async.testing import FakeClock, Sandbox

async def main():
    clock = FakeClock()
    async with Sandbox(clock=clock.time).client(clock=clock) as client:  # opentelemetry imported: on
        await client.participants.get_by_email("a@b.com")  # no SDK yet: nothing recorded
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        client.observer.look_again = 0.0  # instead of waiting out the second between looks
        await client.participants.get_by_email("a@b.com")
        print(sorted(span.name for span in exporter.get_finished_spans()))
asyncio.run(main())
"""


def test_an_sdk_set_up_after_the_client_is_used() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SDK_LATER_SCRIPT], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "['GET /participants/{email}', 'ndax.participants.get_by_email']"


def test_a_refusal_is_named_by_its_type_not_its_class_name() -> None:
    from ndax_async import DuplicatePayloadError, ParticipantExistsError
    from ndax_async._observe import outcome_of

    class AppliedElsewhere(DuplicatePayloadError):  # a subclass keeps its parent's reason
        pass

    text = '{"errors": ["Participant data already used with different requestID"]}'
    error = AppliedElsewhere("duplicate", status_code=400, raw_text=text)
    assert outcome_of("create", error, found=True, resent_after_unknown=False) == (
        "refused",
        "duplicate_payload",
    )
    exists = ParticipantExistsError("taken", status_code=400, raw_text="{}")
    assert outcome_of("create", exists, found=True, resent_after_unknown=False)[1] == "participant_exists"
