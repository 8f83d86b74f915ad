"""The sandbox's read endpoints: a participant by email, and the paged list with its filters."""

from __future__ import annotations

from typing import Any

from ._state import NOT_FOUND, Reply, SandboxState, json_reply

__all__ = ["SandboxReads"]


class SandboxReads(SandboxState):
    """``GET /participants/{email}`` and ``GET /participants`` (this platform's participants)."""

    page_size: int

    def _get_by_email(self, email: str) -> Reply:
        code = self._by_email.get((self.platform_code, email.lower()))
        if code is None:
            return NOT_FOUND
        return json_reply(
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
        return json_reply(
            200,
            {
                "message": [_summary(p) for p in chunk],
                "page": page,
                "total_pages": total_pages,
                "page_size": self.page_size,
                "count": len(rows),
            },
        )


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "participant_code": record["participant_code"],
        "custodian_participant_code": record.get("custodian_participant_code"),
        "participant_name": f"{record.get('first_name', '')} {record.get('last_name', '')}".strip(),
        "credit_limit": "0",
        "status": record.get("status"),
        "email": record.get("email"),
    }
