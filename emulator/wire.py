"""Wire formats shared by the endpoints: ids, timestamps, error envelopes and
the MessageBatch object. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "conflict_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
]

STATUS_BY_ERROR: dict[ErrorType, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Real ids look like msgbatch_013Zva2CMHLNnXjNJJKqJ2EF: "01" then 22 base62 chars.
ID_BODY_LENGTH = 24


def _base62(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    for _ in range(length):
        number, rem = divmod(number, 62)
        chars.append(_BASE62[rem])
    return "".join(chars)


def derived_id(prefix: str, *parts: object) -> str:
    """A stable id: the same parts always give the same id (seeded runs repeat)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return f"{prefix}01{_base62(digest, ID_BODY_LENGTH - 2)}"


def random_id(prefix: str) -> str:
    return f"{prefix}01{_base62(secrets.token_bytes(24), ID_BODY_LENGTH - 2)}"


def new_request_id() -> str:
    return random_id("req_")


def rfc3339(epoch: float | None) -> str | None:
    """`2024-08-20T18:37:24.100435Z`, the shape the API returns."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_body(error_type: ErrorType, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def nested_error(error_type: ErrorType, message: str) -> dict[str, Any]:
    """The `result.error` of an errored result line: an error envelope without request id."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


ProcessingStatus = Literal["in_progress", "canceling", "ended"]


@dataclass(frozen=True)
class BatchRow:
    """One batch as stored; `as_wire` renders the ten-key MessageBatch object."""

    seq: int
    id: str
    created_at: float
    expires_at: float
    archives_at: float
    cancel_initiated_at: float | None
    ended_at: float | None
    request_count: int
    succeeded: int
    errored: int
    canceled: int
    expired: int

    @property
    def processing(self) -> int:
        return self.request_count - self.succeeded - self.errored - self.canceled - self.expired

    @property
    def status(self) -> ProcessingStatus:
        if self.ended_at is not None:
            return "ended"
        if self.cancel_initiated_at is not None:
            return "canceling"
        return "in_progress"

    def archived_at(self, now: float) -> float | None:
        return self.archives_at if now >= self.archives_at else None

    def as_wire(self, base_url: str, now: float) -> dict[str, Any]:
        ended = self.status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": {
                "processing": self.processing,
                "succeeded": self.succeeded,
                "errored": self.errored,
                "canceled": self.canceled,
                "expired": self.expired,
            },
            "ended_at": rfc3339(self.ended_at),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "archived_at": rfc3339(self.archived_at(now)),
            "cancel_initiated_at": rfc3339(self.cancel_initiated_at),
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }
