"""``reconcile=True``: a create applied before under a foreign request_id is the existing participant."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from ndax_async import (
    AsyncClient,
    Customer,
    DuplicatePayloadError,
    Minor,
    NewCustomer,
    ParticipantExistsError,
)
from ndax_async.testing import FakeClock, Sandbox

from .helpers import customer_wire, minor_wire


@pytest.fixture
def sandbox(clock: FakeClock) -> Sandbox:
    return Sandbox(clock=clock.time)


@pytest.fixture
async def client(sandbox: Sandbox, clock: FakeClock) -> AsyncIterator[AsyncClient]:
    async with sandbox.client(max_retries=8, clock=clock) as client:  # retries wait on the fake clock
        yield client


def _old_integration_creates(sandbox: Sandbox, payload: dict[str, object]) -> str:
    """A customer created before the SDK, under a random request_id; its participant_code."""
    record = sandbox.apply("create", payload, request_id=str(uuid.uuid4()))
    return str(record["participant_code"])


async def test_a_create_applied_under_a_foreign_id_is_returned_as_existing(
    sandbox: Sandbox, client: AsyncClient
) -> None:
    payload = customer_wire(email="old@example.com")
    code = _old_integration_creates(sandbox, payload)

    customer = await client.customers.create(payload, reconcile=True)

    assert isinstance(customer, Customer)
    assert customer.existing is True
    assert customer.participant_code == code
    assert (customer.email, customer.first_name, customer.city) == ("old@example.com", "John", "Chicago")
    assert customer.attempts == 2  # the refused create, then the lookup
    assert customer.raw == {"participant_code": code, "email": "old@example.com"}
    stats = sandbox.stats
    assert (stats["creations"], stats["duplicate_payloads"], stats["duplicates"]) == (1, 1, 0)
    assert stats["requests"]["get_by_email"] == 1


async def test_reconcile_is_off_by_default(sandbox: Sandbox, client: AsyncClient) -> None:
    payload = customer_wire(email="old@example.com")
    _old_integration_creates(sandbox, payload)
    with pytest.raises(DuplicatePayloadError):
        await client.customers.create(payload)
    assert "get_by_email" not in sandbox.stats["requests"]


async def test_a_created_or_replayed_customer_is_not_existing(sandbox: Sandbox, client: AsyncClient) -> None:
    model = NewCustomer(**customer_wire(email="new@example.com"))
    first = await client.customers.create(model, reconcile=True)
    again = await client.customers.create(model, reconcile=True)  # the server replays it
    assert (first.existing, again.existing) == (False, False)
    assert first.participant_code == again.participant_code
    assert sandbox.stats["replays"] == 1
    assert "get_by_email" not in sandbox.stats["requests"]


async def test_a_minor_under_a_reconciled_custodian_is_reconciled_too_and_updates_go_on(
    sandbox: Sandbox, client: AsyncClient
) -> None:
    custodian_payload = customer_wire(email="parent@example.com")
    custodian_code = _old_integration_creates(sandbox, custodian_payload)
    minor_payload = minor_wire(email="kid@example.com", custodian_participant_code=custodian_code)
    minor_code = sandbox.apply("create_minor", minor_payload)["participant_code"]

    custodian = await client.customers.create(custodian_payload, reconcile=True)
    minor = await client.customers.create_minor(
        {**minor_payload, "custodian_participant_code": custodian.participant_code}, reconcile=True
    )
    assert isinstance(minor, Minor)
    assert (minor.existing, minor.participant_code) == (True, minor_code)
    assert minor.custodian_participant_code == custodian_code

    assert custodian.participant_code is not None
    updated = await client.customers.update(
        custodian.participant_code,
        {"platform_updated_at": 1710000000000, "first_name": "Jo", "last_name": "S"},
    )
    assert updated.first_name == "Jo"
    assert sandbox.stats["creations"] == 2
    assert sandbox.stats["updates"] == 1


async def test_another_person_under_the_email_stays_an_error(sandbox: Sandbox, client: AsyncClient) -> None:
    _old_integration_creates(sandbox, customer_wire(email="taken@example.com", first_name="Someone"))
    with pytest.raises(ParticipantExistsError):
        await client.customers.create(customer_wire(email="taken@example.com"), reconcile=True)
    assert "get_by_email" not in sandbox.stats["requests"]


async def test_a_lookup_that_finds_nobody_raises_the_original_error(
    sandbox: Sandbox, client: AsyncClient
) -> None:
    payload = customer_wire(email="moved@example.com")
    code = _old_integration_creates(sandbox, payload)
    # The customer's email changed since: nobody is under the payload's email any more.
    sandbox.apply(
        "update",
        {"platform_updated_at": 1710000000000, "email": "elsewhere@example.com"},
        participant_code=code,
    )
    with pytest.raises(DuplicatePayloadError) as caught:
        await client.customers.create(payload, reconcile=True)
    assert caught.value.status_code == 400
    assert sandbox.stats["requests"]["get_by_email"] == 1


async def test_an_update_is_never_reconciled(sandbox: Sandbox, client: AsyncClient) -> None:
    code = _old_integration_creates(sandbox, customer_wire())
    change = {"platform_updated_at": 1710000000000, "first_name": "Jo", "last_name": "Smyth"}
    sandbox.apply("update", change, participant_code=code)
    prepared = client.prepare_write("update", change, participant_code=code)
    with pytest.raises(DuplicatePayloadError) as caught:
        await client.send_write(prepared)
    with pytest.raises(DuplicatePayloadError) as again:
        await client.customers.reconcile(prepared, caught.value)
    assert again.value is caught.value
    assert "get_by_email" not in sandbox.stats["requests"]


async def test_reconcile_survives_faults_on_the_lookup(sandbox: Sandbox, client: AsyncClient) -> None:
    payload = customer_wire(email="flaky@example.com")
    code = _old_integration_creates(sandbox, payload)
    sandbox.faults(err503=0.5, drop_before=0.2, seed=3)
    customer = await client.customers.create(payload, reconcile=True)
    assert (customer.existing, customer.participant_code) == (True, code)
    assert sandbox.stats["creations"] == 1


def test_sandbox_apply_refuses_what_the_api_would_refuse(sandbox: Sandbox) -> None:
    sandbox.apply("create", customer_wire(), request_id=str(uuid.uuid4()))
    with pytest.raises(ValueError, match="already exists with this email"):
        sandbox.apply("create", customer_wire(first_name="Other"))
