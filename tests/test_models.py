"""Models: every validation rule, wire order, seeds round-trip, lenient records."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ndax_async import (
    Address,
    CustodianRelationship,
    Customer,
    CustomerUpdate,
    Identity,
    IdType,
    Minor,
    Name,
    NewCustomer,
    NewMinor,
    Participant,
    ValidationError,
)
from ndax_async._wire.canonical_json import dumps
from ndax_async._wire.convert import converter, structure_payload, to_wire

from .helpers import customer_wire, minor_wire

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"

# The seeds' "Sample Request" blocks, copied verbatim (test_seed_copies_match
# checks them against ../shared/seeds where that is present).
SEED_CUSTOMER_REQUEST = {
    "request_id": "7fbab305-2679-4279-808b-9b7a63a55c85",
    "first_name": "John",
    "last_name": "Smith",
    "email": "email-example@mail.com",
    "address_one": "1 Main St.",
    "address_two": "Suite 1000",
    "city": "Chicago",
    "state": "IL",
    "zip": "12345",
    "country": "United States",
    "date_of_birth": "1985-09-02",
    "id_number_type": "ssn",
    "id_number": "123456789",
    "signed_timestamp": 1603378501286,
    "prefunded": False,
    "metadata": {},
}
SEED_MINOR_REQUEST = {
    "first_name": "Gaurav",
    "last_name": "Mehta",
    "email": "gewgawrav@gmail.com",
    "address_one": "1 Near CS",
    "address_two": "Fort Area",
    "country": "India",
    "city": "Mumbai",
    "zip": "450001",
    "state": "MH",
    "date_of_birth": "1989-10-13",
    "id_number_type": "aadhar_acard",
    "id_number": "123456789",
    "non_us_other_type": None,
    "id_issuing_authority": None,
    "utma_signed_timestamp": 1603378501286,
    "custodian_participant_code": "CAST01",
    "custodian_relationship": "parent",
    "metadata": {},
}
# The PATCH seed's JavaScript body (its "Sample Request" is not JSON).
SEED_PATCH_BODY = {
    "first_name": "Gaurav",
    "last_name": "Mehta",
    "address_one": "Near CST",
    "address_two": "Fort Area",
    "country": "Mumbai",
    "state": "MH",
    "city": "Mumbai",
    "zip": "12345",
    "email": "gewgawarv@gmail.com",
    "id_number_type": "Passport",
    "id_number": "123456789",
    "platform_updated_at": 1603378501286,
}
SEED_PATCH_RESPONSE = {
    "first_name": "Gaurav",
    "last_name": "Mehta",
    "address_one": "Shivaji Nagar",
    "address_two": "Fort",
    "country": "India",
    "state": "CG",
    "city": "Mumbai",
    "zip": "450001",
    "email": "email-example@mail.com",
    "date_of_birth": "1994-00-13",
    "id_number_type": "aadhar_card",
    "id_number": "1731417314",
    "non_us_other_type": "",
    "id_issuing_authority": "",
    "signed_timestamp": 1603378501287,
    "risk_rating": "",
    "platform_code": "ABC123",
    "participant_code": "XYZ456",
    "platform_updated_at": 1603378501286,
}


def _problems(error: ValidationError) -> dict[str, str]:
    return {p.field: p.message for p in error.problems}


# -- seeds -------------------------------------------------------------------


def _sample_requests(name: str) -> list[dict[str, Any]]:
    text = (SEEDS / name).read_text()
    blocks = re.findall(r"Sample Request\s*(?:```)?\s*(\{.*?\n\})", text, re.S)
    return [json.loads(block) for block in blocks]


@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seeds is not beside the checkout")
def test_seed_copies_match_the_seed_files() -> None:
    assert _sample_requests("post-new-customer.txt") == [SEED_CUSTOMER_REQUEST]
    assert _sample_requests("post-minor.txt") == [SEED_MINOR_REQUEST]


def test_customer_seed_round_trips_to_the_same_bytes() -> None:
    wire = {k: v for k, v in SEED_CUSTOMER_REQUEST.items() if k != "request_id"}
    customer = structure_payload(wire, NewCustomer)
    assert to_wire(customer) == wire
    # Same order too: the body the client sends is the sample, compacted.
    assert dumps(to_wire(customer)) == dumps(wire)


def test_minor_seed_round_trips_modulo_typo_and_nulls() -> None:
    wire = dict(SEED_MINOR_REQUEST, id_number_type="aadhar_card")  # documented typo of aadhar_card
    minor = structure_payload(wire, NewMinor)
    sent = to_wire(minor)
    assert sent == {k: v for k, v in wire.items() if v is not None}  # nulls are omitted, never sent
    assert "non_us_other_type" not in sent


def test_patch_seed_body_round_trips() -> None:
    update = structure_payload(SEED_PATCH_BODY, CustomerUpdate)
    assert update.name == Name(first_name="Gaurav", last_name="Mehta")
    assert update.identity == Identity(id_number_type="Passport", id_number="123456789")
    assert to_wire(update) == SEED_PATCH_BODY
    assert list(to_wire(update))[-1] == "platform_updated_at"


def test_patch_seed_sample_request_is_refused_with_every_problem() -> None:
    # The "Sample Request" has a truncated request_id and an ID segment without id_number.
    sample = {k: v for k, v in SEED_PATCH_BODY.items() if k != "id_number"}
    with pytest.raises(ValidationError) as caught:
        structure_payload(sample, CustomerUpdate)
    assert _problems(caught.value) == {"id_number": "required"}


def test_new_customer_js_sample_sends_signed_timestamp_as_a_number() -> None:
    customer = structure_payload(customer_wire(signed_timestamp="1603378501286"), NewCustomer)
    assert to_wire(customer)["signed_timestamp"] == 1603378501286


def test_seed_responses_read_leniently() -> None:
    customer = converter.structure(SEED_PATCH_RESPONSE, Customer)
    assert customer.date_of_birth == "1994-00-13"
    assert customer.participant_code == "XYZ456"
    assert customer.raw == SEED_PATCH_RESPONSE
    minor = converter.structure(
        {"non_in_other_type": "voter card", "utma_signed_timestamp": 0, "participant_code": "M1"}, Minor
    )
    assert minor.non_us_other_type == "voter card"
    assert minor.utma_signed_timestamp == 0


def test_records_keep_unknown_fields_and_survive_wrong_types() -> None:
    data = {
        "participant_code": 123,
        "signed_timestamp": "oops",
        "prefunded": "true",
        "metadata": [1],
        "brand_new_field": {"x": 1},
    }
    customer = converter.structure(data, Customer)
    assert customer.participant_code == "123"
    assert customer.signed_timestamp is None
    assert customer.prefunded is True
    assert customer.metadata is None
    assert customer.extra == {"brand_new_field": {"x": 1}}
    assert customer.raw == data
    participant = converter.structure({"credit_limit": "1000.50", "status": "approved"}, Participant)
    assert participant.credit_limit == "1000.50"


# -- wire format ----------------------------------------------------------------


def test_wire_order_is_the_spec_order_and_absent_optionals_are_omitted() -> None:
    customer = NewCustomer(
        **customer_wire(address_two=None, metadata=None, prefunded=None, risk_rating="low")
    )
    assert list(to_wire(customer)) == [
        "first_name",
        "last_name",
        "email",
        "address_one",
        "city",
        "state",
        "zip",
        "country",
        "date_of_birth",
        "id_number_type",
        "id_number",
        "risk_rating",
        "signed_timestamp",
    ]
    assert b"null" not in dumps(to_wire(customer))


def test_datetimes_dates_and_enums_become_wire_values() -> None:
    when = dt.datetime(2020, 10, 22, 14, 55, 1, 286000, tzinfo=dt.timezone.utc)
    customer = NewCustomer(
        **customer_wire(signed_timestamp=when, date_of_birth=dt.date(1985, 9, 2), id_number_type=IdType.SSN)
    )
    wire = to_wire(customer)
    assert wire["signed_timestamp"] == 1603378501286
    assert wire["date_of_birth"] == "1985-09-02"
    assert wire["id_number_type"] == "ssn"
    assert type(wire["id_number_type"]) is str
    minor = NewMinor(**minor_wire(custodian_relationship=CustodianRelationship.LEGAL_GUARDIAN))
    assert to_wire(minor)["custodian_relationship"] == "legal_guardian"


def test_update_wire_is_flat_segments_in_spec_order() -> None:
    update = CustomerUpdate(
        platform_updated_at=1603378501286,
        identity=Identity(id_number_type="non_in_other", id_number="9", non_us_other_type="ration card"),
        email="new@example.com",
        address=Address(address_one="1 Road", city="Pune", state="MH", zip="411001", country="India"),
        name=Name(first_name="A", last_name="B"),
    )
    assert list(to_wire(update)) == [
        "first_name",
        "last_name",
        "address_one",
        "city",
        "state",
        "zip",
        "country",
        "email",
        "id_number_type",
        "id_number",
        "non_us_other_type",
        "platform_updated_at",
    ]


def test_update_from_nested_mapping() -> None:
    update = structure_payload(
        {"platform_updated_at": 1603378501286, "name": {"first_name": "A", "last_name": "B"}}, CustomerUpdate
    )
    assert update.name == Name(first_name="A", last_name="B")


# -- validation: every rule, every problem at once -------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"first_name": None}, "first_name", "required"),
        ({"last_name": "   "}, "last_name", "required (must not be blank)"),
        ({"first_name": 5}, "first_name", "must be a string, not int"),
        ({"email": "not-an-email"}, "email", "not a well-formed email address"),
        ({"email": "a@b"}, "email", "not a well-formed email address"),
        ({"address_one": "PO Box 1234"}, "address_one", "PO Box addresses are not accepted"),
        ({"address_one": "p.o. box 9"}, "address_one", "PO Box addresses are not accepted"),
        ({"address_two": "Post Office Box 5"}, "address_two", "PO Box addresses are not accepted"),
        ({"city": ""}, "city", "required (must not be blank)"),
        ({"country": None}, "country", "required"),
        ({"state": None}, "state", "required when country is United States"),
        ({"zip": None}, "zip", "required when country is United States"),
        ({"zip": "1234"}, "zip", "must be NNNNN or NNNNN-NNNN when country is United States"),
        ({"zip": "12345-67"}, "zip", "must be NNNNN or NNNNN-NNNN when country is United States"),
        ({"date_of_birth": "02/09/1985"}, "date_of_birth", "must be YYYY-MM-DD"),
        ({"date_of_birth": "1994-00-13"}, "date_of_birth", "not a real calendar date"),
        ({"date_of_birth": "2023-02-29"}, "date_of_birth", "not a real calendar date"),
        ({"id_number_type": None}, "id_number_type", "required"),
        ({"id_number": None}, "id_number", "required"),
        (
            {"id_number_type": "non_us_other"},
            "non_us_other_type",
            "required when id_number_type is non_us_other",
        ),
        (
            {"id_number_type": "non_in_other", "non_us_other_type": " "},
            "non_us_other_type",
            "required when id_number_type is non_in_other",
        ),
        ({"signed_timestamp": None}, "signed_timestamp", "required"),
        (
            {"signed_timestamp": 1603378501},
            "signed_timestamp",
            "must be unix milliseconds (this looks like seconds, or a date before 1973)",
        ),
        (
            {"signed_timestamp": dt.datetime(2020, 1, 1)},
            "signed_timestamp",
            "must be timezone-aware",
        ),
        (
            {"signed_timestamp": True},
            "signed_timestamp",
            "must be unix milliseconds (an integer or a datetime), not bool",
        ),
        ({"prefunded": "no"}, "prefunded", "must be a boolean, not str"),
        ({"metadata": []}, "metadata", "must be an object, not list"),
        ({"metadata": {"x": float("nan")}}, "metadata", "'x' must be a finite number"),
        ({"metadata": {"x": {1: 2}}}, "metadata", "'x' keys must be strings, found int"),
        ({"metadata": {"x": object()}}, "metadata", "'x' is not JSON (object)"),
    ],
)
def test_customer_rule(overrides: dict[str, Any], field: str, message: str) -> None:
    wire = customer_wire()
    wire.update(overrides)
    with pytest.raises(ValidationError) as caught:
        NewCustomer(**wire)
    assert _problems(caught.value) == {field: message}
    assert isinstance(caught.value, ValueError)


def test_india_needs_state_and_a_six_digit_pin() -> None:
    india = {"country": "India", "state": None, "zip": "12345"}
    with pytest.raises(ValidationError) as caught:
        NewCustomer(**customer_wire(**india))
    assert _problems(caught.value) == {
        "state": "required when country is India",
        "zip": "must be a six-digit PIN (NNNNNN) when country is India",
    }


def test_other_countries_and_unknown_id_types_pass_through() -> None:
    customer = NewCustomer(
        **customer_wire(country="Canada", state=None, zip=None, id_number_type="brand_new_type")
    )
    assert to_wire(customer)["country"] == "Canada"


def test_every_problem_is_reported_at_once_from_a_mapping() -> None:
    data = customer_wire(email="nope", zip="1", date_of_birth="1990-13-01", surprise="x")
    del data["first_name"]
    with pytest.raises(ValidationError) as caught:
        structure_payload(data, NewCustomer)
    assert set(caught.value.fields) == {"surprise", "first_name", "email", "zip", "date_of_birth"}
    assert "5 problems" in str(caught.value)


def test_mapping_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as caught:
        structure_payload(["not", "a", "mapping"], NewCustomer)
    assert caught.value.fields == ("$",)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"utma_signed_timestamp": None}, "utma_signed_timestamp", "required"),
        ({"custodian_participant_code": None}, "custodian_participant_code", "required"),
        (
            {"custodian_participant_code": "AB/CD"},
            "custodian_participant_code",
            "must be URL-safe: no '/', '?', '#', '%' or whitespace",
        ),
        (
            {"custodian_relationship": "uncle"},
            "custodian_relationship",
            "must be one of: parent, legal_guardian",
        ),
    ],
)
def test_minor_rule(overrides: dict[str, Any], field: str, message: str) -> None:
    wire = minor_wire()
    wire.update(overrides)
    with pytest.raises(ValidationError) as caught:
        NewMinor(**wire)
    assert _problems(caught.value) == {field: message}


def test_minor_relationship_is_optional() -> None:
    assert "custodian_relationship" not in to_wire(NewMinor(**minor_wire(custodian_relationship=None)))


def test_update_needs_a_segment_and_a_timestamp() -> None:
    with pytest.raises(ValidationError) as caught:
        CustomerUpdate(platform_updated_at=None)  # type: ignore[arg-type]
    assert _problems(caught.value) == {
        "platform_updated_at": "required",
        "segments": "platform_updated_at submitted with no data segment to update",
    }


def test_update_segments_are_all_or_nothing() -> None:
    with pytest.raises(ValidationError) as caught:
        structure_payload(
            {"platform_updated_at": 1603378501286, "first_name": "A", "zip": "1", "country": "United States"},
            CustomerUpdate,
        )
    assert _problems(caught.value) == {
        "last_name": "required",
        "address_one": "required",
        "city": "required",
        "state": "required when country is United States",
        "zip": "must be NNNNN or NNNNN-NNNN when country is United States",
    }


def test_update_refuses_fields_that_are_not_updatable() -> None:
    with pytest.raises(ValidationError) as caught:
        structure_payload(
            {"platform_updated_at": 1603378501286, "email": "a@b.co", "date_of_birth": "1990-01-01"},
            CustomerUpdate,
        )
    assert _problems(caught.value) == {
        "date_of_birth": "cannot be updated (not part of an updatable data segment)"
    }


def test_update_segment_objects_validate_themselves() -> None:
    with pytest.raises(ValidationError) as caught:
        Address(address_one="PO Box 7", city="X", country="India", state="MH", zip="411001")
    assert caught.value.fields == ("address_one",)
    with pytest.raises(ValidationError):
        CustomerUpdate(platform_updated_at=1603378501286, email="bad")
    with pytest.raises(ValidationError) as caught:
        CustomerUpdate(platform_updated_at=1603378501286, name={"first_name": "A"})  # type: ignore[arg-type]
    assert caught.value.fields == ("name",)


def test_models_are_frozen() -> None:
    customer = NewCustomer(**customer_wire())
    with pytest.raises(AttributeError):
        customer.email = "x@y.z"  # type: ignore[misc]
