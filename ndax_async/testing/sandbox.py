"""The sandbox core: a fake NDAX that behaves like the documented API.

Plain Python, no HTTP framework: :meth:`Sandbox.handle` takes a request
(method, target, headers, body bytes) and returns a :class:`Reply`. The httpx
transport (:meth:`Sandbox.transport`) and the ASGI app (:meth:`Sandbox.asgi_app`)
are thin adapters over it. It enforces authentication (signatures strict by
default, see :mod:`._gate`; the timestamp window), every field rule of the spec, the PATCH outcomes of the
release note, email uniqueness, custodians, minors under 18, idempotency by
request_id, and (when enabled) the per-IP rate limit; it injects faults and
counts everything in :attr:`Sandbox.stats` (served, also at ``GET /_sandbox/stats``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .._wire import canonical_json as _json
from .._wire import rules as _rules
from .._wire.request_ids import normalize_request_id, random_request_id
from ..errors import DUPLICATE_PAYLOAD_TEXT, IDEMPOTENCY_CONFLICT_TEXT, PARTICIPANT_EXISTS_TEXT, Problem
from ._faults import Faults
from ._gate import SIGNATURE_MODES, RateLimit, SignatureMode, check_signature

if TYPE_CHECKING:
    from ..client import AsyncClient

__all__ = ["Reply", "Sandbox"]

MAX_BODY_BYTES = 1_000_000
STATS_PATH = "/_sandbox/stats"
TIMESTAMP_WINDOW = 60
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


@attrs.frozen
class Reply:
    """The sandbox's answer; ``drop`` means the connection is cut instead."""

    status: int
    body: bytes
    headers: dict[str, str] = attrs.field(factory=dict)
    drop: bool = False
    delay: float = 0.0


def _json_reply(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status,
        json.dumps(value, ensure_ascii=False).encode(),
        {"content-type": "application/json", **(headers or {})},
    )


def _errors(status: int, *messages: str) -> Reply:
    return _json_reply(status, {"errors": list(messages)})


def _auth_error(status: int, message: str) -> Reply:
    return _json_reply(status, {"error": True, "message": message})


_NOT_FOUND = _json_reply(404, {"error": "Not Found"})
_FIELDS = {"customer": _rules.CUSTOMER_FIELDS, "minor": _rules.MINOR_FIELDS}
_FIELD_NAMES = {kind: frozenset(rule.name for rule in rules) for kind, rules in _FIELDS.items()}


@attrs.define
class _Entry:
    """What the request_id ledger remembers of one processed write."""

    route: str
    payload_hash: str
    reply: Reply


class Sandbox:
    """An in-memory NDAX participants API.

    ``faults`` (a :class:`~ndax_async.testing.Faults` or keyword mapping) turns
    fault injection on; ``rate_limit=(requests, seconds)`` turns on the per-IP
    limit (the platform's is ``(2000, 10.0)``: more than 2,000 requests in any
    rolling 10 s from one peer IP blocks it for 10 s, answered 429 without a
    body); ``signatures`` is ``"strict"`` (the default), ``"raw"`` or
    ``"either"`` (see :mod:`ndax_async.testing._gate`); ``update_allowed=False``
    makes PATCH answer the "platform not approved" 403. ``clock`` returns unix
    seconds (for the timestamp window, the rate limit and minors' ages).
    """

    def __init__(
        self,
        api_key: str = "sandbox-key",
        api_secret: str = base64.b64encode(b"ndax-async sandbox secret").decode(),
        passphrase: str = "sandbox-passphrase",  # noqa: S107 - a fake server's fake credentials
        *,
        platform_code: str = "PLAT01",
        faults: Faults | Mapping[str, Any] | None = None,
        rate_limit: tuple[int, float] | None = None,
        signatures: SignatureMode = "strict",
        update_allowed: bool = True,
        page_size: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.passphrase = passphrase
        self._key = base64.b64decode(api_secret)
        if signatures not in SIGNATURE_MODES:
            raise ValueError(f"signatures must be one of {', '.join(SIGNATURE_MODES)}, not {signatures!r}")
        self.signatures: SignatureMode = signatures
        self.platform_code = platform_code
        self.clock = clock
        self.rate_limit = rate_limit
        self.update_allowed = update_allowed
        self.page_size = page_size
        self._faults = faults if isinstance(faults, Faults) else Faults(**(faults or {}))
        self._lock = threading.RLock()
        self._codes = (f"P{n:07d}" for n in itertools.count(1))
        self.participants: dict[str, dict[str, Any]] = {}
        self._by_email: dict[tuple[str, str], str] = {}
        self._people: set[tuple[str, str, str, str]] = set()
        self._ledger: dict[str, _Entry] = {}
        self._payloads: dict[tuple[str, str], str] = {}
        self._counters: Counter[str] = Counter()
        self._by_kind: dict[str, Counter[str]] = defaultdict(Counter)

    # -- configuration -----------------------------------------------------------

    @property
    def rate_limit(self) -> tuple[int, float] | None:
        """``(requests, seconds)`` of the per-IP limit, or ``None`` (off). Settable."""
        return None if self._limit is None else (self._limit.requests, self._limit.seconds)

    @rate_limit.setter
    def rate_limit(self, value: tuple[int, float] | None) -> None:
        self._limit = None if value is None else RateLimit(value[0], value[1], lambda: self.clock())

    def faults(self, **settings: Any) -> Faults:
        """Replace the fault settings (at any time); returns them. No args: all off."""
        self._faults = Faults(**settings)
        return self._faults

    @property
    def credentials(self) -> dict[str, str]:
        """The keyword arguments an ``AsyncClient`` needs for this sandbox."""
        return {"api_key": self.api_key, "api_secret": self.api_secret, "passphrase": self.passphrase}

    def transport(self) -> Any:
        """An ``httpx.AsyncBaseTransport`` answering from this sandbox, in-process."""
        from ._transport import SandboxTransport

        return SandboxTransport(self)

    def client(self, **options: Any) -> AsyncClient:
        """An ``AsyncClient`` bound to this sandbox in-process (it owns its transport)."""
        from ..client import AsyncClient

        return AsyncClient(
            api_key=self.api_key,
            api_secret=self.api_secret,
            passphrase=self.passphrase,
            transport=self.transport(),
            **options,
        )

    def asgi_app(self) -> Any:
        """This sandbox as an ASGI application, to mount in an ASGI server or app of your own."""
        from ._asgi import SandboxApp

        return SandboxApp(self)

    def add_participant(self, record: Mapping[str, Any], *, kind: str = "customer") -> str:
        """Put a participant straight into the state (for tests); returns its code.

        ``record`` may carry ``platform_code`` (another platform's participant)
        and ``participant_code``.
        """
        with self._lock:
            stored = dict(record)
            code = stored.setdefault("participant_code", next(self._codes))
            stored.setdefault("platform_code", self.platform_code)
            stored.setdefault("status", "approved")
            stored["_kind"] = kind
            self.participants[code] = stored
            if stored.get("email"):
                self._by_email[(stored["platform_code"], stored["email"].lower())] = code
            return str(code)

    def apply(
        self,
        endpoint: str,
        payload: Any,
        *,
        request_id: object = None,
        participant_code: str | None = None,
    ) -> dict[str, Any]:
        """Apply a write as if it had come over the API under ``request_id``; return its record.

        For tests of what was applied before this SDK: a customer created by an
        older integration under an id the SDK would not derive (``request_id``
        defaults to a random one). ``endpoint`` is ``"create"``, ``"create_minor"``
        or ``"update"``; ``payload`` a model or a wire mapping, encoded as the SDK
        encodes it. No authentication, faults or rate limit; a refusal raises
        ``ValueError`` with the sandbox's answer.
        """
        from .._wire.writes import prepare_write

        prepared = prepare_write(
            endpoint,
            payload,
            participant_code=participant_code,
            request_id=random_request_id() if request_id is None else request_id,
        )
        params = {"code": participant_code} if participant_code is not None else {}
        with self._lock:
            reply = self._write(endpoint, params, json.loads(prepared.body))
        if reply.status != 200:
            raise ValueError(f"the sandbox refused it ({reply.status}): {reply.body.decode()}")
        record: dict[str, Any] = json.loads(reply.body)["message"]
        return record

    # -- counters ----------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter, as a plain mapping.

        ``requests`` (by endpoint), ``creations``, ``customers``, ``minors``,
        ``updates``, ``replays``, ``conflicts``, ``duplicate_payloads``,
        ``duplicates`` (a second participant for the same person),
        ``validation_failures``, ``rate_limited`` (requests refused 429 by the
        per-IP limit), ``rate_limit_blocks`` (blocks it started), ``auth_failures``
        (by kind; ``body_not_stringified``: signed over raw bytes that are not
        what ``JSON.stringify`` prints), ``faults`` (by kind). Served, the same
        is at ``GET /_sandbox/stats`` (JSON, no authentication, not counted).
        """
        with self._lock:
            snapshot: dict[str, Any] = {
                name: self._counters[name]
                for name in (
                    "creations",
                    "customers",
                    "minors",
                    "updates",
                    "replays",
                    "conflicts",
                    "duplicate_payloads",
                    "duplicates",
                    "validation_failures",
                    "rate_limited",
                    "rate_limit_blocks",
                )
            }
            for kind in ("requests", "auth_failures", "faults"):
                snapshot[kind] = dict(self._by_kind[kind])
            return snapshot

    def _count(self, name: str, kind: str | None = None) -> None:
        if kind is None:
            self._counters[name] += 1
        else:
            self._by_kind[name][kind] += 1

    # -- the request path --------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, client: str = "local"
    ) -> Reply:
        """Answer one request. ``target`` is the raw path and query, as sent."""
        with self._lock:
            return self._handle(
                method.upper(), target, {k.lower(): v for k, v in headers.items()}, body, client
            )

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes, client: str) -> Reply:
        if method == "GET" and target == STATS_PATH:
            return _json_reply(200, self.stats)
        endpoint, params = _route(method, target)
        self._count("requests", endpoint)
        limited = self._rate_limited(client)
        if limited is not None:
            return limited
        if len(body) > MAX_BODY_BYTES:
            return _json_reply(413, {"error": "Payload Too Large"})
        fault = self._faults.draw() if self._faults.active else None
        if fault is not None:
            self._count("faults", fault)
        early = self._early_fault(fault)
        if early is not None:
            return early
        failure = self._authenticate(method, target, headers, body)
        reply = failure or self._dispatch(endpoint, params, body)
        return self._late_fault(fault, reply)

    def _early_fault(self, fault: str | None) -> Reply | None:
        latency = self._faults.latency
        if fault == "drop_before":
            return Reply(0, b"", drop=True, delay=latency)
        if fault == "err503":
            return attrs.evolve(_json_reply(503, {"error": "Service Unavailable"}), delay=latency)
        if fault == "err429":
            retry_after = {"retry-after": f"{self._faults.retry_after:g}"}
            return attrs.evolve(_json_reply(429, {"error": "Too Many Requests"}, retry_after), delay=latency)
        if fault == "err429_bare":
            return Reply(429, b"", delay=latency)
        return None

    def _late_fault(self, fault: str | None, reply: Reply) -> Reply:
        latency = self._faults.latency
        if fault == "drop_after":
            return attrs.evolve(reply, drop=True, delay=latency)
        if fault == "err500_after":
            return attrs.evolve(_json_reply(500, {"error": "Internal Server Error"}), delay=latency)
        if fault == "slow_after":
            return attrs.evolve(reply, delay=latency + self._faults.slow_seconds)
        return attrs.evolve(reply, delay=latency) if latency else reply

    def _rate_limited(self, client: str) -> Reply | None:
        """A bare 429 if the per-IP limit refuses this request from ``client``, else ``None``."""
        outcome = "ok" if self._limit is None else self._limit.check(client)
        if outcome == "ok":
            return None
        self._count("rate_limited")
        if outcome == "overrun":
            self._count("rate_limit_blocks")
        return Reply(429, b"")

    def _authenticate(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply | None:
        key = headers.get("x-ndax-api-key")
        passphrase = headers.get("x-ndax-passphrase")
        timestamp = headers.get("x-ndax-timestamp", "")
        signature = headers.get("x-ndax-signed", "")
        if not key or passphrase is None or not timestamp or not signature:
            return self._auth_failure("missing_headers", 401, "Missing authentication headers")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return self._auth_failure("bad_key", 401, "Invalid API key")
        if not hmac.compare_digest(passphrase.encode(), self.passphrase.encode()):
            return self._auth_failure("bad_passphrase", 401, "Invalid passphrase")
        if not timestamp.isascii() or not timestamp.isdigit():
            return self._auth_failure("bad_timestamp", 401, "Invalid timestamp")
        if abs(self.clock() - int(timestamp)) > TIMESTAMP_WINDOW:
            return self._auth_failure("stale_timestamp", 401, "Timestamp is outside the allowed window")
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return self._auth_failure("bad_signature", 401, "Invalid signature")
        prefix = f"{timestamp}{method}{target}".encode()
        failure = check_signature(self._key, prefix, body, given, self.signatures)
        return None if failure is None else self._auth_failure(failure, 401, "Invalid signature")

    def _auth_failure(self, kind: str, status: int, message: str) -> Reply:
        self._count("auth_failures", kind)
        return _auth_error(status, message)

    def _dispatch(self, endpoint: str, params: dict[str, str], body: bytes) -> Reply:
        if endpoint == "get_by_email":
            return self._get_by_email(params["email"])
        if endpoint == "list":
            return self._list(params)
        if endpoint == "unknown":
            return _NOT_FOUND
        try:
            data = json.loads(body) if body else None
        except (ValueError, RecursionError):
            return self._invalid(["body is not valid JSON"])
        if not isinstance(data, dict):
            return self._invalid(["body must be a JSON object"])
        return self._write(endpoint, params, data)

    # -- writes and idempotency ------------------------------------------------------

    def _write(self, endpoint: str, params: dict[str, str], data: dict[str, Any]) -> Reply:
        request_id = data.pop("request_id", None)
        if request_id is not None and not _is_uuid4(request_id):
            return self._invalid(["request_id should match format uuid v4"])
        route = endpoint + "/" + params.get("code", "")
        payload_hash = hashlib.sha256(_json.dumps(data)).hexdigest()
        if request_id is not None:
            entry = self._ledger.get(request_id)
            if entry is not None:
                if entry.route == route and entry.payload_hash == payload_hash:
                    self._count("replays")
                    return entry.reply
                self._count("conflicts")
                return _errors(400, IDEMPOTENCY_CONFLICT_TEXT)
            previous = self._payloads.get((route, payload_hash))
            if previous is not None and previous != request_id:
                self._count("duplicate_payloads")
                return _errors(400, DUPLICATE_PAYLOAD_TEXT)
        if endpoint == "create":
            reply = self._create(data, "customer")
        elif endpoint == "create_minor":
            reply = self._create(data, "minor")
        else:
            reply = self._update(params["code"], data)
        if request_id is not None and reply.status == 200:
            self._ledger[request_id] = _Entry(route, payload_hash, reply)
            self._payloads[(route, payload_hash)] = request_id
        return reply

    def _invalid(self, messages: list[str]) -> Reply:
        self._count("validation_failures")
        return _errors(400, *messages)

    def _create(self, data: dict[str, Any], kind: str) -> Reply:
        names = _FIELD_NAMES[kind]
        problems = [Problem(key, "is not a known field") for key in data if key not in names]
        problems += _rules.check(data, _FIELDS[kind]) + self._server_rules(data)
        if kind == "minor":
            problems += self._minor_rules(data)
        if problems:
            return self._invalid([f"{p.field} {p.message}" for p in problems])
        email_key = (self.platform_code, data["email"].lower())
        if email_key in self._by_email:
            self._count("conflicts")
            return _errors(400, PARTICIPANT_EXISTS_TEXT)
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
        return _json_reply(200, {"message": record})

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
            return _auth_error(
                403, f"Participant {self.platform_code} is not allowed to submit/update customers"
            )
        record = self.participants.get(code)
        if record is None:
            return _NOT_FOUND
        if record["platform_code"] != self.platform_code:
            return _auth_error(403, f"Participant {code} is not a customer of {self.platform_code}")
        if record["_kind"] != "customer":
            return _errors(400, f"Participant {code} is not a customer")
        not_updatable = [key for key in data if key not in _rules.UPDATE_FIELDS]
        if not_updatable:
            self._count("validation_failures")
            return _errors(400, "Cannot update the requested fields: " + ", ".join(not_updatable))
        problems = _rules.check_update(data) + self._server_rules(data)
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
                return _errors(400, PARTICIPANT_EXISTS_TEXT)
            self._by_email.pop((self.platform_code, str(record.get("email", "")).lower()), None)
            self._by_email[(self.platform_code, new_email.lower())] = code
        record.update(data)
        self._count("updates")
        return _json_reply(200, {"message": _public(record)})

    # -- reads -------------------------------------------------------------------------

    def _get_by_email(self, email: str) -> Reply:
        code = self._by_email.get((self.platform_code, email.lower()))
        if code is None:
            return _NOT_FOUND
        return _json_reply(
            200, {"message": {"participant_code": code, "email": self.participants[code]["email"]}}
        )

    def _list(self, params: dict[str, str]) -> Reply:
        rows = [p for p in self.participants.values() if p["platform_code"] == self.platform_code]
        if "email" in params:
            rows = [p for p in rows if str(p.get("email", "")).lower() == params["email"].lower()]
        if "participant_code" in params:
            rows = [p for p in rows if p["participant_code"] == params["participant_code"]]
        if "status" in params:
            rows = [p for p in rows if p.get("status") == params["status"]]
        if params.get("minors") in ("true", "false"):
            want_minors = params["minors"] == "true"
            rows = [p for p in rows if (p["_kind"] == "minor") == want_minors]
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            return self._invalid(["page should match format integer"])
        total_pages = max(1, -(-len(rows) // self.page_size))
        chunk = rows[(page - 1) * self.page_size : page * self.page_size]
        return _json_reply(
            200,
            {
                "message": [_summary(p) for p in chunk],
                "page": page,
                "total_pages": total_pages,
                "page_size": self.page_size,
                "count": len(rows),
            },
        )


def _route(method: str, target: str) -> tuple[str, dict[str, str]]:
    path, _, query = target.partition("?")
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True)) if query else {}
    parts = path.split("/")
    if method == "POST" and path == "/participants/customers/new":
        return "create", params
    if method == "POST" and path == "/participants/customers/minor":
        return "create_minor", params
    if method == "PATCH" and len(parts) == 4 and parts[1:3] == ["participants", "customers"] and parts[3]:
        return "update", {**params, "code": urllib.parse.unquote(parts[3])}
    if method == "GET" and path == "/participants":
        return "list", params
    if method == "GET" and len(parts) == 3 and parts[1] == "participants" and parts[2]:
        return "get_by_email", {**params, "email": urllib.parse.unquote(parts[2])}
    return "unknown", params


def _segment_error(problem: Problem) -> str:
    if problem.message == "required" or problem.message.startswith("required"):
        return f"{problem.field} required field"
    return f"{problem.field} should match format {problem.message}"


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_") and k != "status"}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "participant_code": record["participant_code"],
        "custodian_participant_code": record.get("custodian_participant_code"),
        "participant_name": f"{record.get('first_name', '')} {record.get('last_name', '')}".strip(),
        "credit_limit": "0",
        "status": record.get("status"),
        "email": record.get("email"),
    }


def _is_uuid4(value: Any) -> bool:
    return normalize_request_id(value) is not None


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
