"""Peak RSS of the emulator while it takes a 100,000-request, ~250 MB create and
streams the results back.

    .venv/bin/python -m tests.emulator.measure_rss [REQUESTS] [TEXT_CHARS]

Prints one JSON object: body size, timings and the emulator's peak RSS (VmHWM
from /proc, so Linux only).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
from invoice_batch_emulator.testing import running_emulator

CHUNK = 1 << 20


def _request_json(index: int, text_chars: int) -> bytes:
    text = (
        f"Invoice ID: INV-{index}\\nSupplier: Acme Cloud\\nDescription: Cloud hosting "
        f"for project {index}\\nAmount: {1000 + index} INR\\nText: "
    )
    text += "x" * max(0, text_chars - len(text))
    return (
        b'{"custom_id":"inv-%d","params":{"model":"claude-haiku-4-5","max_tokens":1024,'
        b'"system":[{"type":"text","text":"You classify invoices.","cache_control":'
        b'{"type":"ephemeral"}}],"tools":[{"name":"classify_invoice","input_schema":'
        b'{"type":"object","properties":{"department":{"type":"string"}},'
        b'"required":["department"]}}],"tool_choice":{"type":"tool","name":'
        b'"classify_invoice"},"messages":[{"role":"user","content":"%s"}]}}'
        % (index, text.encode())
    )


def request_body(count: int, text_chars: int) -> Iterator[bytes]:
    """The create body, generated in ~1 MB pieces (never held whole)."""
    pieces: list[bytes] = [b'{"requests":[']
    size = len(pieces[0])
    for index in range(count):
        piece = (b"," if index else b"") + _request_json(index, text_chars)
        pieces.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield b"".join(pieces)
            pieces, size = [], 0
    pieces.append(b"]}")
    yield b"".join(pieces)


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def _emulator_pid(port: int) -> int:
    """The pid listening on the port (the emulator subprocess)."""
    import os

    inode = None
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                inode = fields[9]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError("emulator process not found")


def measure_big_batch(count: int = 100_000, text_chars: int = 2200) -> dict[str, Any]:
    body_bytes = sum(len(piece) for piece in request_body(count, text_chars))
    with running_emulator(processing_seconds=5.0) as url:
        pid = _emulator_pid(int(url.rsplit(":", 1)[1]))
        headers = {"authorization": "Bearer k", "anthropic-version": "2026-10-21"}
        started = time.monotonic()
        response = httpx.post(
            f"{url}/v1/messages/batches",
            headers=headers,
            content=request_body(count, text_chars),
            timeout=600,
        )
        response.raise_for_status()
        create_seconds = time.monotonic() - started
        batch_id = response.json()["id"]
        while True:
            batch = httpx.get(f"{url}/v1/messages/batches/{batch_id}", headers=headers).json()
            if batch["processing_status"] == "ended":
                break
            time.sleep(0.5)
        processed_seconds = time.monotonic() - started
        results = 0
        result_bytes = 0
        with httpx.stream("GET", batch["results_url"], headers=headers, timeout=600) as stream:
            for line in stream.iter_lines():
                results += 1
                result_bytes += len(line) + 1
        total_seconds = time.monotonic() - started
        return {
            "requests": count,
            "body_bytes": body_bytes,
            "result_bytes": result_bytes,
            "results": results,
            "create_seconds": round(create_seconds, 1),
            "ended_after_seconds": round(processed_seconds, 1),
            "total_seconds": round(total_seconds, 1),
            "peak_rss_mb": round(_peak_rss_mb(pid), 1),
        }


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    text_chars = int(sys.argv[2]) if len(sys.argv) > 2 else 2200
    print(json.dumps(measure_big_batch(count, text_chars), indent=2))
