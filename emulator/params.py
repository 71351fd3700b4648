"""Per-request `params` rules (checked asynchronously, after the batch is accepted)
and the token estimate used for `usage`. Pure functions.

Token estimate (the real tokenizer is not public): one token per 4 characters of
text, rounded up, counted over the system prompt, every message's text, and each
tool definition serialised as compact JSON; plus 3 tokens per message; plus the
hidden tool-use system prompt (588 tokens) whenever tools are given.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

# API version 2026-10-21 removed the sampling knobs.
SAMPLING_REMOVED_IN = "2026-10-21"
SAMPLING_KEYS = ("temperature", "top_p", "top_k")

TOOL_PROMPT_TOKENS = 588
MESSAGE_OVERHEAD_TOKENS = 3
CHARS_PER_TOKEN = 4

# Alias → snapshot the API reports in `message.model`; other known names echo.
MODEL_SNAPSHOTS = {
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
}
KNOWN_MODELS = frozenset(
    {
        *MODEL_SNAPSHOTS,
        *MODEL_SNAPSHOTS.values(),
        "claude-opus-4-6",
        "claude-opus-4-7",
        "claude-opus-4-8",
        "claude-sonnet-4-6",
        "claude-haiku-5-5",
        "claude-sonnet-5",
        "claude-sonnet-5-5",
        "claude-opus-5",
        "claude-opus-5-5",
        "claude-fable-5",
        "claude-fable-5-1",
        "claude-fable-5-2",
        "claude-mythos-5",
        "claude-mythos-5-1",
        "claude-mythos-5-2",
        "claude-mythos-preview",
        "claude-opus-4-1",
        "claude-opus-4-1-20250805",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
        "claude-opus-4-0",
        "claude-opus-4-20250514",
        "claude-3-7-sonnet-latest",
        "claude-3-7-sonnet-20250219",
        "claude-3-5-haiku-latest",
        "claude-3-5-haiku-20241022",
        "claude-3-haiku-20240307",
    }
)
# Shortest cacheable prefix per model family; shorter prefixes are silently not cached.
CACHE_MINIMUM_TOKENS = (
    ("claude-haiku-4-5", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
)
DEFAULT_CACHE_MINIMUM = 1024
MAX_OUTPUT_TOKENS = 128_000

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class InvalidParams(ValueError):
    """A request's params break a rule; the message is what the API would say."""


def cache_minimum(model: str) -> int:
    for prefix, minimum in CACHE_MINIMUM_TOKENS:
        if model.startswith(prefix):
            return minimum
    return DEFAULT_CACHE_MINIMUM


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidParams(f"{where}: Input should be a valid string or list of content blocks")
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidParams(f"{where}.{i}: Input should be a content block with a type")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise InvalidParams(f"{where}.{i}.text: Field required")


def validate_params(params: dict[str, Any], api_version: str) -> None:
    """Raise InvalidParams for the first broken rule, naming the field."""
    model = params.get("model")
    if model is None:
        raise InvalidParams("model: Field required")
    if not isinstance(model, str) or model not in KNOWN_MODELS:
        raise InvalidParams(f"model: {model}")
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        raise InvalidParams("max_tokens: Field required")
    if not _is_int(max_tokens):
        raise InvalidParams("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise InvalidParams("max_tokens: Input should be greater than or equal to 1")
    if max_tokens > MAX_OUTPUT_TOKENS:
        raise InvalidParams(
            f"max_tokens: {max_tokens} > {MAX_OUTPUT_TOKENS}, which is the maximum allowed "
            f"number of output tokens for {model}"
        )
    messages = params.get("messages")
    if messages is None:
        raise InvalidParams("messages: Field required")
    if not isinstance(messages, list):
        raise InvalidParams("messages: Input should be a valid list")
    if not messages:
        raise InvalidParams("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidParams(f"messages.{i}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise InvalidParams(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise InvalidParams(f"messages.{i}.content: Field required")
        _check_content(message["content"], f"messages.{i}.content")
    system = params.get("system")
    if system is not None:
        if isinstance(system, list):
            for i, block in enumerate(system):
                if not isinstance(block, dict) or block.get("type") != "text":
                    raise InvalidParams(f"system.{i}: Input should be a text block")
                if not isinstance(block.get("text"), str):
                    raise InvalidParams(f"system.{i}.text: Field required")
        elif not isinstance(system, str):
            raise InvalidParams("system: Input should be a valid string or list of text blocks")
    if api_version >= SAMPLING_REMOVED_IN:
        for key in SAMPLING_KEYS:
            if key in params:
                raise InvalidParams(
                    f"{key}: Extra inputs are not permitted with anthropic-version {api_version}"
                )
    else:
        temperature = params.get("temperature")
        if temperature is not None and (
            not isinstance(temperature, int | float) or not 0 <= temperature <= 1
        ):
            raise InvalidParams("temperature: Input should be less than or equal to 1")
    if params.get("stream"):
        raise InvalidParams("stream: streaming is not supported in Message Batches")
    tool_names = _check_tools(params.get("tools"))
    _check_tool_choice(params.get("tool_choice"), tool_names, "tools" in params)


def _check_tools(tools: Any) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidParams("tools: Input should be a valid list")
    names: list[str] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidParams(f"tools.{i}: Input should be a valid dictionary")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise InvalidParams(
                f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            )
        if name in names:
            raise InvalidParams(f"tools: Tool names must be unique, found {name!r} twice")
        if tool.get("type", "custom") == "custom":
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise InvalidParams(f"tools.{i}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise InvalidParams(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        names.append(name)
    return names


def _check_tool_choice(choice: Any, tool_names: list[str], tools_given: bool) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise InvalidParams("tool_choice: Input tag should be one of 'auto', 'any', 'tool', 'none'")
    if choice["type"] in ("any", "tool") and not tool_names:
        raise InvalidParams("tool_choice: tool_choice may only be specified while providing tools.")
    if choice["type"] == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise InvalidParams("tool_choice.tool.name: Field required")
        if name not in tool_names:
            raise InvalidParams(f"tool_choice.tool.name: Tool '{name}' not found in provided tools")


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        else:
            parts.append(json.dumps(block, separators=(",", ":"), sort_keys=True))
    return "\n".join(parts)


def prompt_text(params: dict[str, Any]) -> str:
    """The text of the last user message (what the classifier reads)."""
    for message in reversed(params.get("messages", [])):
        if message.get("role") == "user":
            return _content_text(message["content"])
    return ""


@dataclass(frozen=True)
class InputTokens:
    """Input tokens split the way `usage` reports them."""

    total: int
    cacheable_prefix: int
    prefix_hash: str | None
    cache_ttl: str

    def billed(self, cache_hit: bool) -> tuple[int, int, int]:
        """(input_tokens, cache_creation_input_tokens, cache_read_input_tokens)."""
        if self.prefix_hash is None:
            return self.total, 0, 0
        rest = self.total - self.cacheable_prefix
        if cache_hit:
            return rest, 0, self.cacheable_prefix
        return rest, self.cacheable_prefix, 0


def count_input_tokens(params: dict[str, Any]) -> InputTokens:
    """Count in the API's cache order (tools, system, messages); the cacheable
    prefix ends at the last block carrying `cache_control`, and counts only if it
    reaches the model's minimum."""
    running = 0
    prefix = 0
    ttl = "5m"
    digest = hashlib.sha256()
    prefix_digest: str | None = None

    def add(piece: str, cache_control: Any) -> None:
        nonlocal running, prefix, ttl, prefix_digest
        running += tokens(piece)
        digest.update(piece.encode())
        if isinstance(cache_control, dict):
            prefix, prefix_digest = running, digest.hexdigest()
            ttl = "1h" if cache_control.get("ttl") == "1h" else "5m"

    tools = params.get("tools") or []
    if tools:
        running += TOOL_PROMPT_TOKENS
        digest.update(b"tool-prompt")
    for tool in tools:
        add(json.dumps(tool, separators=(",", ":"), sort_keys=True), tool.get("cache_control"))
    system = params.get("system")
    if isinstance(system, str):
        add(system, None)
    elif isinstance(system, list):
        for block in system:
            add(block.get("text", ""), block.get("cache_control"))
    for message in params.get("messages", []):
        running += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                add(_content_text([block]), block.get("cache_control"))
        else:
            add(_content_text(content), None)
    model = str(params.get("model", ""))
    if prefix_digest is None or prefix < cache_minimum(model):
        return InputTokens(running, 0, None, ttl)
    return InputTokens(running, prefix, f"{model}:{prefix_digest}", ttl)
