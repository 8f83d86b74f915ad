"""The sandbox's own rules, outcomes, faults and robustness, request by request."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from ndax_async import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    DuplicatePayloadError,
    IdempotencyConflictError,
    NotFoundError,
    ParticipantExistsError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from ndax_async._wire.canonical_json import dumps
from ndax_async._wire.signing import Credentials
from ndax_async.testing import Faults, Sandbox

from .helpers import customer_wire, minor_wire

RID = "7fbab305-2679-4279-808b-9b7a63a55c85"
RID2 = "0f3c2a1e-0000-4000-8000-000000000001"
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002)


def send(
    sandbox: Sandbox, method: str, target: str, body: bytes = b"", **header_overrides: str
) -> tuple[int, Any]:
    """One request signed with the sandbox's credentials, straight into the core."""
    credentials = Credentials(sandbox.api_key, sandbox.api_secret, sandbox.passphrase)
    timestamp = str(int(sandbox.clock()))
    headers = credentials.headers(timestamp, method, target, body or b"{}")
    headers.update(header_overrides)
    reply = sandbox.handle(method, target, headers, body)
    return reply.status, json.loads(reply.body) if reply.body else None


def create(sandbox: Sandbox, **overrides: Any) -> str:
    status, body = send(sandbox, "POST", "/participants/customers/new", dumps(customer_wire(**overrides)))
    assert status == 200, body
    return str(body["message"]["participant_code"])


# -- authentication ----------------------------------------------------------------


def test_authentication_failures_have_the_documented_shape_and_are_counted() -> None:
    sandbox = Sandbox()
    target = "/participants/customers/new"
    body = dumps(customer_wire())
    assert send(sandbox, "POST", target, body, **{"X-NDAX-API-KEY": "other"}) == (
        401,
        {"error": True, "message": "Invalid API key"},
    )
    assert send(sandbox, "POST", target, body, **{"X-NDAX-PASSPHRASE": "guess"})[0] == 401
    assert (
        send(sandbox, "POST", target, body, **{"X-NDAX-TIMESTAMP": str(int(sandbox.clock()) - 61)})[0] == 401
    )
    assert send(sandbox, "POST", target, body, **{"X-NDAX-TIMESTAMP": "abc"})[0] == 401
    assert send(sandbox, "POST", target, body, **{"X-NDAX-SIGNED": "AAAA"})[0] == 401
    assert send(sandbox, "POST", target, body, **{"X-NDAX-SIGNED": "not base64!"})[0] == 401
    assert sandbox.handle("POST", target, {}, body).status == 401
    assert sandbox.stats["auth_failures"] == {
        "bad_key": 1,
        "bad_passphrase": 1,
        "stale_timestamp": 1,
        "bad_timestamp": 1,
        "bad_signature": 2,
        "missing_headers": 1,
    }
    assert sandbox.stats["creations"] == 0


def signed_over_raw_bytes(sandbox: Sandbox, body: bytes, signed: bytes | None = None) -> int:
    """POST ``body`` signed over ``signed`` (default: the very bytes sent); the status."""
    target = "/participants/customers/new"
    credentials = Credentials(sandbox.api_key, sandbox.api_secret, sandbox.passphrase)
    headers = credentials.headers(
        str(int(sandbox.clock())), "POST", target, body if signed is None else signed
    )
    return sandbox.handle("POST", target, headers, body).status


# Bytes that are valid JSON but not what JSON.stringify prints: a raw-verifying
# server accepts them signed over themselves, a JSON.stringify-verifying one does not.
NOT_STRINGIFIED = {
    "escaped non-ASCII": json.dumps(customer_wire(first_name="Zoë"), ensure_ascii=True).encode(),
    "spaces after separators": json.dumps(customer_wire()).encode(),
}


@pytest.mark.parametrize("body", NOT_STRINGIFIED.values(), ids=NOT_STRINGIFIED.keys())
def test_by_default_a_body_that_is_not_what_json_stringify_prints_is_refused(body: bytes) -> None:
    assert b"\\u00eb" in body or b", " in body
    sandbox = Sandbox()
    assert signed_over_raw_bytes(sandbox, body) == 401
    assert sandbox.stats["auth_failures"] == {"body_not_stringified": 1}
    assert sandbox.stats["creations"] == 0


@pytest.mark.parametrize("mode", ["raw", "either"])
@pytest.mark.parametrize("body", NOT_STRINGIFIED.values(), ids=NOT_STRINGIFIED.keys())
def test_loosened_a_body_signed_over_its_raw_bytes_is_accepted(body: bytes, mode: Any) -> None:
    assert signed_over_raw_bytes(Sandbox(signatures=mode), body) == 200


def test_strict_accepts_what_the_sdk_sends_and_a_get_signed_over_braces() -> None:
    sandbox = Sandbox()
    assert signed_over_raw_bytes(sandbox, dumps(customer_wire(first_name="Zoë"))) == 200
    assert send(sandbox, "GET", "/participants")[0] == 200  # signs the literal {}


def test_a_signature_over_json_stringify_of_other_bytes_passes_either_only() -> None:
    """The vendor's own example signs JSON.stringify(body) but sends other bytes."""
    pretty = json.dumps(customer_wire(), indent=2).encode()
    compact = dumps(customer_wire())
    statuses = {
        mode: signed_over_raw_bytes(Sandbox(signatures=mode), pretty, compact)
        for mode in ("strict", "raw", "either")
    }
    assert statuses == {"strict": 401, "raw": 401, "either": 200}


def test_an_unknown_signature_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="strict, raw, either"):
        Sandbox(signatures="lenient")  # type: ignore[arg-type]


def test_query_string_is_part_of_the_signed_route() -> None:
    sandbox = Sandbox()
    credentials = Credentials(sandbox.api_key, sandbox.api_secret, sandbox.passphrase)
    timestamp = str(int(sandbox.clock()))
    headers = credentials.headers(timestamp, "GET", "/participants?page=1", b"{}")
    assert sandbox.handle("GET", "/participants?page=2", headers, b"").status == 401
    assert sandbox.handle("GET", "/participants?page=1", headers, b"").status == 200


# -- writes, validation and idempotency ---------------------------------------------------


def test_create_validates_every_rule_and_server_only_rules() -> None:
    sandbox = Sandbox()
    bad = customer_wire(email="nope", country="Narnia", zip=None, extra_field=1)
    status, body = send(sandbox, "POST", "/participants/customers/new", dumps(bad))
    assert status == 400
    assert body["errors"] == [
        "extra_field is not a known field",
        "email not a well-formed email address",
        "country is not a supported country",
    ]
    status, body = send(sandbox, "POST", "/participants/customers/new", dumps(customer_wire(state="ZZ")))
    assert body == {"errors": ["state is not a supported state"]}
    assert sandbox.stats["validation_failures"] == 2


def test_idempotency_table() -> None:
    sandbox = Sandbox()
    target = "/participants/customers/new"
    first = dumps({"request_id": RID, **customer_wire()})
    status, created = send(sandbox, "POST", target, first)
    assert status == 200
    assert send(sandbox, "POST", target, first) == (200, created)  # replay, no second customer
    other_payload = dumps({"request_id": RID, **customer_wire(first_name="Jane")})
    assert send(sandbox, "POST", target, other_payload) == (
        400,
        {"errors": ["requestID already used with different participant data"]},
    )
    other_id = dumps({"request_id": RID2, **customer_wire()})
    assert send(sandbox, "POST", target, other_id) == (
        400,
        {"errors": ["Participant data already used with different requestID"]},
    )
    assert send(sandbox, "POST", target, dumps({"request_id": "nope", **customer_wire()}))[0] == 400
    stats = sandbox.stats
    assert (stats["creations"], stats["replays"], stats["conflicts"], stats["duplicate_payloads"]) == (
        1,
        1,
        1,
        1,
    )


def test_email_is_unique_per_platform_and_duplicates_are_counted() -> None:
    sandbox = Sandbox()
    create(sandbox)
    status, body = send(sandbox, "POST", "/participants/customers/new", dumps(customer_wire(id_number="999")))
    assert status == 400
    assert body == {"errors": ["Participant already exists with this email for this platform"]}
    create(sandbox, email="second@mail.com")  # the same person under a new email
    assert sandbox.stats["duplicates"] == 1


def test_minor_needs_an_existing_custodian_and_to_be_under_18() -> None:
    sandbox = Sandbox()
    custodian = create(sandbox)
    target = "/participants/customers/minor"
    status, body = send(sandbox, "POST", target, dumps(minor_wire(custodian_participant_code=custodian)))
    assert status == 200, body
    assert body["message"]["custodian_participant_code"] == custodian
    status, body = send(sandbox, "POST", target, dumps(minor_wire(email="m2@mail.com")))
    assert body == {"errors": ["custodian_participant_code is not a customer of this platform"]}
    adult = minor_wire(email="m3@mail.com", custodian_participant_code=custodian, date_of_birth="1990-01-01")
    assert send(sandbox, "POST", target, dumps(adult))[1] == {
        "errors": ["date_of_birth a minor must be under 18"]
    }
    assert sandbox.stats["minors"] == 1


# -- the release note's PATCH outcomes ----------------------------------------------------------


def patch(sandbox: Sandbox, code: str, data: dict[str, Any]) -> tuple[int, Any]:
    return send(sandbox, "PATCH", f"/participants/customers/{code}", dumps(data))


NAME = {"first_name": "Jo", "last_name": "Smyth"}
AT = {"platform_updated_at": 1700000000000}


def test_patch_success_returns_the_updated_record() -> None:
    sandbox = Sandbox()
    code = create(sandbox)
    status, body = patch(sandbox, code, {**NAME, **AT})
    assert status == 200
    assert body["message"]["first_name"] == "Jo"
    assert body["message"]["platform_updated_at"] == 1700000000000
    assert sandbox.stats["updates"] == 1


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (
            {**AT, "date_of_birth": "1990-01-01", **NAME},
            400,
            "Cannot update the requested fields: date_of_birth",
        ),
        (
            {**AT, "first_name": "Jo", "zip": "1", "country": "United States"},
            400,
            "Data segment validation failed. One or more segment fields either invalid or not provided. "
            'Segment error: "last_name required field", "address_one required field", "city required field", '
            '"state required field", "zip should match format must be NNNNN or NNNNN-NNNN when country is '
            'United States"',
        ),
        (AT, 400, "platform_updated_at submitted with no data segment to update"),
    ],
)
def test_patch_refusals(data: dict[str, Any], status: int, message: str) -> None:
    sandbox = Sandbox()
    code = create(sandbox)
    assert patch(sandbox, code, data) == (status, {"errors": [message]})


def test_patch_participant_relationships() -> None:
    sandbox = Sandbox()
    custodian = create(sandbox)
    minor = sandbox.add_participant({"email": "kid@mail.com"}, kind="minor")
    foreign = sandbox.add_participant({"email": "x@other.com", "platform_code": "OTHER9"})
    assert patch(sandbox, minor, {**NAME, **AT}) == (
        400,
        {"errors": [f"Participant {minor} is not a customer"]},
    )
    assert patch(sandbox, foreign, {**NAME, **AT}) == (
        403,
        {"error": True, "message": f"Participant {foreign} is not a customer of PLAT01"},
    )
    assert patch(sandbox, "NOPE1", {**NAME, **AT}) == (404, {"error": "Not Found"})
    sandbox.update_allowed = False
    assert patch(sandbox, custodian, {**NAME, **AT}) == (
        403,
        {"error": True, "message": "Participant PLAT01 is not allowed to submit/update customers"},
    )


def test_patch_email_change_respects_uniqueness() -> None:
    sandbox = Sandbox()
    first = create(sandbox)
    create(sandbox, email="taken@mail.com", id_number="2")
    assert patch(sandbox, first, {**AT, "email": "taken@mail.com"})[0] == 400
    assert patch(sandbox, first, {**AT, "email": "new@mail.com"})[0] == 200
    assert send(sandbox, "GET", "/participants/new@mail.com")[1]["message"]["participant_code"] == first


# -- reads -----------------------------------------------------------------------------------


def test_reads_filter_and_paginate() -> None:
    sandbox = Sandbox(page_size=2)
    custodian = create(sandbox)
    for n in range(3):
        create(sandbox, email=f"c{n}@mail.com", id_number=str(n))
    send(
        sandbox,
        "POST",
        "/participants/customers/minor",
        dumps(minor_wire(custodian_participant_code=custodian)),
    )
    status, body = send(sandbox, "GET", "/participants?page=2&minors=false")
    assert status == 200
    assert (body["page"], body["total_pages"], body["count"], len(body["message"])) == (2, 2, 4, 2)
    status, body = send(sandbox, "GET", "/participants?minors=true")
    assert [p["custodian_participant_code"] for p in body["message"]] == [custodian]
    assert send(sandbox, "GET", "/participants/nobody@mail.com") == (404, {"error": "Not Found"})
    assert send(sandbox, "GET", "/participants?page=x")[0] == 400


# -- bad input to the sandbox itself ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "body", "status"),
    [
        ("POST", "/participants/customers/new", b"{not json", 400),
        ("POST", "/participants/customers/new", b"[1,2]", 400),
        ("POST", "/participants/customers/new", b"", 400),
        ("POST", "/participants/customers/new", b"\xff\xfe", 400),
        ("POST", "/participants/customers/new", b"[" * 100_000, 400),
        ("POST", "/participants/customers/new", b"x" * 1_000_001, 413),
        ("DELETE", "/participants/customers/new", b"", 404),
        ("GET", "/nowhere", b"", 404),
        ("PATCH", "/participants/customers/", b"{}", 404),
    ],
)
def test_bad_requests_get_an_error_never_a_crash(method: str, target: str, body: bytes, status: int) -> None:
    sandbox = Sandbox()
    assert send(sandbox, method, target, body)[0] == status
    assert send(sandbox, "GET", "/participants")[0] == 200  # still serving


# -- rate limit ------------------------------------------------------------------------------------


def test_rate_limit_blocks_the_ip_for_the_window() -> None:
    now = [1_700_000_000.0]
    sandbox = Sandbox(rate_limit=(3, 10.0), clock=lambda: now[0])
    assert [send(sandbox, "GET", "/participants")[0] for _ in range(4)] == [200, 200, 200, 429]
    now[0] += 5
    assert send(sandbox, "GET", "/participants")[0] == 429  # still blocked
    now[0] += 6
    assert send(sandbox, "GET", "/participants")[0] == 200
    assert (sandbox.stats["rate_limited"], sandbox.stats["rate_limit_blocks"]) == (2, 1)


def test_rate_limit_counts_any_rolling_window_per_peer_and_answers_a_bare_429() -> None:
    """More than N in ANY rolling W seconds (not per fixed slot) from one peer blocks that peer for W."""
    now = [1_700_000_000.0]
    sandbox = Sandbox(rate_limit=(3, 10.0), clock=lambda: now[0])

    def status(peer: str = "10.0.0.1") -> int:
        credentials = Credentials(sandbox.api_key, sandbox.api_secret, sandbox.passphrase)
        headers = credentials.headers(str(int(now[0])), "GET", "/participants", b"{}")
        reply = sandbox.handle("GET", "/participants", headers, b"", peer)
        if reply.status == 429:
            assert reply.body == b""
        return reply.status

    assert status() == 200  # t=0
    now[0] += 8
    assert [status(), status()] == [200, 200]  # t=8: three in (t-10, t]
    now[0] += 2.5
    assert status() == 200  # t=10.5: the one at t=0 has left the window
    assert status("10.0.0.2") == 200  # another peer has its own count
    now[0] += 7
    assert status() == 429  # t=17.5: the 4th since t=8 starts a 10 s block
    now[0] += 9.9
    assert status() == 429  # blocked until t=27.5, whatever the window holds
    assert status("10.0.0.2") == 200
    now[0] += 0.1
    assert status() == 200
    assert (sandbox.stats["rate_limited"], sandbox.stats["rate_limit_blocks"]) == (2, 1)


def test_stats_are_answered_without_authentication_uncounted_and_unlimited() -> None:
    sandbox = Sandbox(rate_limit=(1, 10.0))
    assert [send(sandbox, "GET", "/participants")[0] for _ in range(2)] == [200, 429]
    reply = sandbox.handle("GET", "/_sandbox/stats", {}, b"")
    assert (reply.status, json.loads(reply.body)) == (200, sandbox.stats)
    assert sandbox.stats["requests"] == {"list": 2}
    assert (sandbox.stats["rate_limited"], sandbox.stats["rate_limit_blocks"]) == (1, 1)


def test_the_sandbox_command_enforces_the_per_ip_rule_and_serves_its_stats() -> None:
    """``ndax-async sandbox --rate-limit 3/60``, served, over real HTTP."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "ndax_async.cli", "sandbox", "--port", "0", "--rate-limit", "3/60"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            _, _, _, base_url, *settings = process.stdout.readline().split()
            given = dict(setting.split("=", 1) for setting in settings)
            credentials = Credentials(given["api_key"], given["api_secret"], given["passphrase"])
            with httpx.Client(base_url=base_url, timeout=10) as http:
                responses = []
                for _ in range(5):
                    timestamp = str(int(time.time()))
                    headers = credentials.headers(timestamp, "GET", "/participants", b"{}")
                    responses.append(http.get("/participants", headers=headers))
                stats = http.get("/_sandbox/stats").json()
        finally:
            process.terminate()
            process.wait(10)
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert responses[3].content == b""
    assert (stats["rate_limited"], stats["rate_limit_blocks"], stats["requests"]) == (2, 1, {"list": 5})


def test_the_sandbox_command_refuses_a_malformed_rate_limit(capsys: pytest.CaptureFixture[str]) -> None:
    from ndax_async.cli.main import main

    with pytest.raises(SystemExit):
        main(["sandbox", "--rate-limit", "2000 per 10"])
    assert "REQUESTS/SECONDS" in capsys.readouterr().err


def test_served_over_http_the_rate_limit_goes_by_the_peer_not_a_forwarded_header() -> None:
    """Served on loopback, no proxy is trusted: an X-Forwarded-For header does not
    make a client someone else to the rate limit. Replies carry a Content-Length."""
    from ndax_async.testing import SandboxServer

    sandbox = Sandbox(rate_limit=(1, 60.0))
    credentials = Credentials(sandbox.api_key, sandbox.api_secret, sandbox.passphrase)
    with SandboxServer(sandbox) as server, httpx.Client(base_url=server.base_url) as http:
        statuses = []
        for forwarded in ("203.0.113.1", "203.0.113.2"):
            headers = credentials.headers(str(int(sandbox.clock())), "GET", "/participants", b"{}")
            response = http.get("/participants", headers={**headers, "X-Forwarded-For": forwarded})
            statuses.append(response.status_code)
            assert response.headers["content-length"] == str(len(response.content))
            assert "transfer-encoding" not in response.headers
    assert statuses == [200, 429]


# -- faults, through the SDK -------------------------------------------------------------------


async def test_drop_after_commit_is_replayed_not_duplicated() -> None:
    sandbox = Sandbox(faults=Faults(drop_after=1.0))
    async with sandbox.client(retry_policy=FAST, max_retries=2) as client:
        with pytest.raises(Exception, match="disconnected"):
            await client.customers.create(customer_wire())
        sandbox.faults()  # heal the network; the retry of a new call replays
        customer = await client.customers.create(customer_wire())
    stats = sandbox.stats
    assert (stats["creations"], stats["replays"], stats["duplicates"]) == (1, 3, 0)
    assert customer.participant_code == "P0000001"
    assert stats["faults"] == {"drop_after": 3}


@pytest.mark.parametrize("kind", ["drop_before", "err503", "err429", "err429_bare", "drop_after"])
async def test_each_retryable_fault_is_survived_exactly_once(kind: str) -> None:
    sandbox = Sandbox()
    sandbox.faults(**{kind: 0.5}, seed=3)
    policy = RetryPolicy(backoff_initial=0.001, backoff_max=0.002, rate_limit_pause=0.001)
    async with sandbox.client(retry_policy=policy, max_retries=20) as client:
        for n in range(20):
            await client.customers.create(customer_wire(email=f"u{n}@mail.com", id_number=str(n)))
    stats = sandbox.stats
    assert stats["creations"] == 20
    assert stats["duplicates"] == stats["conflicts"] == stats["duplicate_payloads"] == 0
    assert stats["faults"][kind] > 0


async def test_commit_then_500_is_not_retried_but_a_resend_replays() -> None:
    sandbox = Sandbox(faults={"err500_after": 1.0})
    async with sandbox.client() as client:
        with pytest.raises(ServerError):
            await client.customers.create(customer_wire())
        sandbox.faults()
        assert (await client.customers.create(customer_wire())).participant_code == "P0000001"
    assert (sandbox.stats["creations"], sandbox.stats["replays"]) == (1, 1)


async def test_slow_response_after_commit_times_out_then_replays() -> None:
    sandbox = Sandbox(faults={"slow_after": 1.0, "slow_seconds": 5.0})
    async with sandbox.client(timeout=0.05, max_retries=1, retry_policy=FAST) as client:
        with pytest.raises(Exception, match="no complete response within"):
            await client.customers.create(customer_wire())
        sandbox.faults()
        await client.customers.create(customer_wire())
    # Both slow attempts committed once; the retry and the later call were replays.
    assert (sandbox.stats["creations"], sandbox.stats["replays"]) == (1, 2)


async def test_faults_are_deterministic_under_a_seed() -> None:
    def run() -> list[str | None]:
        faults = Faults(drop_before=0.2, err503=0.2, seed=42)
        return [faults.draw() for _ in range(200)]

    assert run() == run()
    with pytest.raises(ValueError, match="sum"):
        Faults(drop_before=0.7, err503=0.7)


# -- the SDK's typed errors against the sandbox's answers ------------------------------------------


async def test_sdk_errors_from_sandbox_answers() -> None:
    sandbox = Sandbox()
    async with sandbox.client(request_ids="random") as client:
        customer = await client.customers.create(customer_wire())
        with pytest.raises(DuplicatePayloadError):
            await client.customers.create(customer_wire())  # a new random id for an applied payload
        with pytest.raises(IdempotencyConflictError):
            await client.customers.create(customer_wire(first_name="Other"), request_id=customer.request_id)
        with pytest.raises(ParticipantExistsError):
            await client.customers.create(customer_wire(id_number="777"))
        with pytest.raises(BadRequestError, match="supported country"):
            await client.customers.create(customer_wire(email="z@mail.com", country="Atlantis"))
        with pytest.raises(NotFoundError):
            await client.customers.update("NOPE", {**AT, **NAME})
        sandbox.update_allowed = False
        with pytest.raises(PermissionDeniedError):
            await client.customers.update(str(customer.participant_code), {**AT, **NAME})
    async with AsyncClient(
        api_key=sandbox.api_key,
        api_secret=sandbox.api_secret,
        passphrase="wrong",
        transport=sandbox.transport(),
    ) as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.participants.get_by_email("a@b.co")


async def test_rate_limit_through_the_sdk_pauses_then_succeeds() -> None:
    sandbox = Sandbox(rate_limit=(2, 0.2))
    policy = RetryPolicy(rate_limit_pause=0.25)
    async with sandbox.client(retry_policy=policy, max_retries=0) as client:
        await client.participants.get_by_email("a@b.co")
        await client.participants.get_by_email("a@b.co")
        with pytest.raises(RateLimitError):
            await client.participants.get_by_email("a@b.co")
        assert client.rate_limit_pause.remaining > 0
        assert await client.participants.get_by_email("a@b.co") is None  # waited out the block


def test_sandbox_transport_is_an_httpx_transport() -> None:
    assert isinstance(Sandbox().transport(), httpx.AsyncBaseTransport)


async def test_latency_fault_delays_every_answer() -> None:
    sandbox = Sandbox(faults={"latency": 0.05})
    async with sandbox.client() as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.participants.get_by_email("a@b.co")
        assert loop.time() - started >= 0.05
    assert sandbox.stats["faults"] == {}  # latency is not a failure
