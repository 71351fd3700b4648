"""What one request turns into: a `succeeded` Message, or an `errored` result.

Pure: the outcome is a function of the seed salt, the request's position, its
params and the fault settings, so a seeded run repeats exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .classifier import CLASSIFY_TOOL, classify_invoice, input_from_schema
from .config import FaultSettings
from .params import (
    MODEL_SNAPSHOTS,
    InvalidParams,
    count_input_tokens,
    prompt_text,
    tokens,
    validate_params,
)
from .wire import derived_id, nested_error

RequestState = Literal["processing", "succeeded", "errored", "canceled", "expired"]
LineFault = Literal["missing", "duplicate"]

# A tool_use block costs a few tokens beyond its JSON input.
TOOL_USE_OVERHEAD_TOKENS = 24


def roll(salt: str, *parts: object) -> float:
    """A uniform number in [0, 1) fixed by the salt and the parts."""
    digest = hashlib.blake2b(":".join(map(str, (salt, *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Outcome:
    state: RequestState
    line: bytes
    line_fault: LineFault | None
    prefix_hash: str | None


def encode_line(custom_id: str, result: dict[str, Any]) -> bytes:
    return json.dumps(
        {"custom_id": custom_id, "result": result}, separators=(",", ":"), ensure_ascii=False
    ).encode()


def terminal_line(custom_id: str, state: Literal["canceled", "expired"]) -> bytes:
    return encode_line(custom_id, {"type": state})


def decide_outcome(
    *,
    salt: str,
    batch_seq: int,
    idx: int,
    custom_id: str,
    params_json: bytes,
    api_version: str,
    faults: FaultSettings,
    cache_seen: Callable[[str], bool],
) -> Outcome:
    """The result of one request. `cache_seen(hash)` answers whether this batch
    already wrote that cache prefix (and records it)."""
    fault_roll = roll(salt, batch_seq, idx, "line")
    line_fault: LineFault | None = None
    if fault_roll < faults.missing_result_rate:
        line_fault = "missing"
    elif fault_roll < faults.missing_result_rate + faults.duplicate_result_rate:
        line_fault = "duplicate"

    def errored(error_type: Literal["invalid_request_error", "api_error"], msg: str) -> Outcome:
        line = encode_line(custom_id, {"type": "errored", "error": nested_error(error_type, msg)})
        return Outcome("errored", line, line_fault, None)

    params = json.loads(params_json)
    try:
        validate_params(params, api_version)
    except InvalidParams as exc:
        return errored("invalid_request_error", str(exc))

    error_roll = roll(salt, batch_seq, idx, "error")
    if error_roll < faults.errored_invalid_rate:
        return errored("invalid_request_error", "messages.0.content: emulated invalid request")
    if error_roll < faults.errored_invalid_rate + faults.errored_api_rate:
        return errored("api_error", "Internal server error")

    counted = count_input_tokens(params)
    cache_hit = counted.prefix_hash is not None and cache_seen(counted.prefix_hash)
    input_tokens, cache_creation, cache_read = counted.billed(cache_hit)
    ephemeral_1h = cache_creation if counted.cache_ttl == "1h" else 0

    message_id = derived_id("msg_", salt, batch_seq, idx)
    content, stop_reason, output_tokens = _content(params, salt, batch_seq, idx, faults)
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": MODEL_SNAPSHOTS.get(params["model"], params["model"]),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache_creation - ephemeral_1h,
                "ephemeral_1h_input_tokens": ephemeral_1h,
            },
            "output_tokens": output_tokens,
            "service_tier": "batch",
        },
    }
    line = encode_line(custom_id, {"type": "succeeded", "message": message})
    return Outcome("succeeded", line, line_fault, counted.prefix_hash)


def _chosen_tool(params: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict)]
    choice = params.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next(t for t in tools if t.get("name") == choice.get("name"))
    return next((t for t in tools if t.get("name") == CLASSIFY_TOOL), tools[0])


def _content(
    params: dict[str, Any], salt: str, batch_seq: int, idx: int, faults: FaultSettings
) -> tuple[list[dict[str, Any]], str, int]:
    max_tokens: int = params["max_tokens"]
    text = prompt_text(params)
    tool = _chosen_tool(params)
    if tool is None:
        reply = f"Received {len(text)} characters. " + (text[:200] or "Hello.")
        needed = tokens(reply)
        if needed > max_tokens:
            return [{"type": "text", "text": reply[: max_tokens * 4]}], "max_tokens", max_tokens
        return [{"type": "text", "text": reply}], "end_turn", needed
    name = str(tool["name"])
    if name == CLASSIFY_TOOL:
        tool_input: dict[str, Any] = classify_invoice(text)
    else:
        generated = input_from_schema(tool.get("input_schema", {}), name)
        tool_input = generated if isinstance(generated, dict) else {"value": generated}
    if roll(salt, batch_seq, idx, "bad_input") < faults.bad_tool_input_rate:
        tool_input = _break_input(tool_input, roll(salt, batch_seq, idx, "bad_kind"))
    needed = tokens(json.dumps(tool_input)) + TOOL_USE_OVERHEAD_TOKENS
    block = {
        "type": "tool_use",
        "id": derived_id("toolu_", salt, batch_seq, idx),
        "name": name,
        "input": tool_input,
    }
    if needed > max_tokens:
        # Cut off mid-call: the block is there but its input never finished.
        return [{**block, "input": {}}], "max_tokens", max_tokens
    return [block], "tool_use", needed


def _break_input(tool_input: dict[str, Any], which: float) -> dict[str, Any]:
    """An input that no longer matches the schema: a required key gone, or a
    number turned into a string."""
    broken = dict(tool_input)
    if which < 0.5 and broken:
        broken.pop("department" if "department" in broken else next(iter(broken)))
    else:
        key = "amount" if "amount" in broken else next(iter(broken), "amount")
        broken[key] = "abc"
    return broken
