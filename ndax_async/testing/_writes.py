"""The sandbox's write endpoints: idempotency by request_id, and the rules of create and update.

Every field rule of the spec (shared with the client, ``_wire/rules.py``), plus
what only the server knows: supported countries and states, email uniqueness,
custodians, minors under 18, and the PATCH outcomes of the release note.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any

from .._wire import canonical_json, rules
from .._wire.request_ids import normalize_request_id
from ..errors import DUPLICATE_PAYLOAD_TEXT, IDEMPOTENCY_CONFLICT_TEXT, PARTICIPANT_EXISTS_TEXT, Problem
from ._state import NOT_FOUND, LedgerEntry, Reply, SandboxState, auth_error, errors, json_reply

__all__ = ["SandboxWrites"]

SUPPORTED_COUNTRIES = frozenset({"United States", "India"})
# fmt: off
US_STATES = frozenset({
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
    "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
    "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA",
    "WV", "WI", "WY", "PR", "GU", "VI", "AS", "MP"
})
INDIA_STATES = frozenset({
    "AN", "AP", "AR", "AS", "BR", "CH", "CG", "CT", "DN", "DD", "DL", "GA", "GJ", "HR", "HP", "JK",
    "JH", "KA", "KL", "LA", "LD", "MP", "MH", "MN", "ML", "MZ", "NL", "OD", "OR", "PY", "PB", "RJ",
    "SK", "TN", "TS", "TG", "TR", "UP", "UK", "UT", "WB"
})
# fmt: on
_STATES = {"united states": US_STATES, "india": INDIA_STATES}
_SEGMENT_PREFIX = (
    "Data segment validation failed. "
    "One or more segment fields either invalid or not provided. Segment error: "
)
_FIELDS = {"customer": rules.CUSTOMER_FIELDS, "minor": rules.MINOR_FIELDS}
_FIELD_NAMES = {kind: frozenset(rule.name for rule in fields) for kind, fields in _FIELDS.items()}


class SandboxWrites(SandboxState):
    """Create a customer, create a minor, update a customer: each once per request_id."""

    clock: Callable[[], float]
    update_allowed: bool

    def _write(self, endpoint: str, params: dict[str, str], data: dict[str, Any]) -> Reply:
        request_id = data.pop("request_id", None)
        if request_id is not None and normalize_request_id(request_id) is None:
            return self._invalid(["request_id should match format uuid v4"])
        route = endpoint + "/" + params.get("code", "")
        payload_hash = hashlib.sha256(canonical_json.dumps(data)).hexdigest()
        if request_id is not None:
            entry = self._ledger.get(request_id)
            if entry is not None:
                if entry.route == route and entry.payload_hash == payload_hash:
                    self._count("replays")
                    return entry.reply
                self._count("conflicts")
                return errors(400, IDEMPOTENCY_CONFLICT_TEXT)
            previous = self._payloads.get((route, payload_hash))
            if previous is not None and previous != request_id:
                self._count("duplicate_payloads")
                return errors(400, DUPLICATE_PAYLOAD_TEXT)
        if endpoint == "create":
            reply = self._create(data, "customer")
        elif endpoint == "create_minor":
            reply = self._create(data, "minor")
        else:
            reply = self._update(params["code"], data)
        if request_id is not None and reply.status == 200:
            self._ledger[request_id] = LedgerEntry(route, payload_hash, reply)
            self._payloads[(route, payload_hash)] = request_id
        return reply

    def _create(self, data: dict[str, Any], kind: str) -> Reply:
        names = _FIELD_NAMES[kind]
        problems = [Problem(key, "is not a known field") for key in data if key not in names]
        problems += rules.check(data, _FIELDS[kind]) + self._server_rules(data)
        if kind == "minor":
            problems += self._minor_rules(data)
        if problems:
            return self._invalid([f"{p.field} {p.message}" for p in problems])
        email_key = (self.platform_code, data["email"].lower())
        if email_key in self._by_email:
            self._count("conflicts")
            return errors(400, PARTICIPANT_EXISTS_TEXT)
        person = (
            data["first_name"].lower(),
            data["last_name"].lower(),
            data["date_of_birth"],
            data["id_number"],
        )
        if person in self._people:
            self._count("duplicates")
        self._people.add(person)
        code = next(self._codes)
        record = {
            **{k: v for k, v in data.items()},
            "platform_code": self.platform_code,
            "participant_code": code,
        }
        if kind == "customer":
            record.setdefault("risk_rating", None)
        self.participants[code] = {**record, "status": "approved", "_kind": kind}
        self._by_email[email_key] = code
        self._count("creations")
        self._count("customers" if kind == "customer" else "minors")
        return json_reply(200, {"message": record})

    def _server_rules(self, data: dict[str, Any]) -> list[Problem]:
        """What only the server knows: supported countries and states."""
        problems = []
        country = data.get("country")
        if isinstance(country, str) and country.strip() and country not in SUPPORTED_COUNTRIES:
            problems.append(Problem("country", "is not a supported country"))
        states = _STATES.get(str(country).strip().lower())
        state = data.get("state")
        if states is not None and isinstance(state, str) and state.strip() and state.upper() not in states:
            problems.append(Problem("state", "is not a supported state"))
        return problems

    def _minor_rules(self, data: dict[str, Any]) -> list[Problem]:
        problems = []
        custodian = self.participants.get(str(data.get("custodian_participant_code")))
        if "custodian_participant_code" in data and (
            custodian is None
            or custodian["_kind"] != "customer"
            or custodian["platform_code"] != self.platform_code
        ):
            problems.append(Problem("custodian_participant_code", "is not a customer of this platform"))
        born = _date(data.get("date_of_birth"))
        today = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc).date()
        if (
            born is not None
            and (today.year - born.year - ((today.month, today.day) < (born.month, born.day))) >= 18
        ):
            problems.append(Problem("date_of_birth", "a minor must be under 18"))
        return problems

    def _update(self, code: str, data: dict[str, Any]) -> Reply:
        if not self.update_allowed:
            return auth_error(
                403, f"Participant {self.platform_code} is not allowed to submit/update customers"
            )
        record = self.participants.get(code)
        if record is None:
            return NOT_FOUND
        if record["platform_code"] != self.platform_code:
            return auth_error(403, f"Participant {code} is not a customer of {self.platform_code}")
        if record["_kind"] != "customer":
            return errors(400, f"Participant {code} is not a customer")
        not_updatable = [key for key in data if key not in rules.UPDATE_FIELDS]
        if not_updatable:
            self._count("validation_failures")
            return errors(400, "Cannot update the requested fields: " + ", ".join(not_updatable))
        problems = rules.check_update(data) + self._server_rules(data)
        if any(p.field == "segments" for p in problems):
            return self._invalid(["platform_updated_at submitted with no data segment to update"])
        if problems:
            details = ", ".join(f'"{_segment_error(p)}"' for p in problems)
            return self._invalid([_SEGMENT_PREFIX + details])
        new_email = data.get("email")
        if new_email is not None:
            taken = self._by_email.get((self.platform_code, new_email.lower()))
            if taken is not None and taken != code:
                self._count("conflicts")
                return errors(400, PARTICIPANT_EXISTS_TEXT)
            self._by_email.pop((self.platform_code, str(record.get("email", "")).lower()), None)
            self._by_email[(self.platform_code, new_email.lower())] = code
        record.update(data)
        self._count("updates")
        return json_reply(200, {"message": _public(record)})


def _segment_error(problem: Problem) -> str:
    if problem.message == "required" or problem.message.startswith("required"):
        return f"{problem.field} required field"
    return f"{problem.field} should match format {problem.message}"


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_") and k != "status"}


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
