"""`python -m invoice_batch_emulator`: run the emulator from the command line.

Flags override `EMULATOR_*` variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from .config import ConfigError, EmulatorConfig, FaultSettings, parse_http_faults
from .server import serve

_FAULT_RATES = (
    "errored_invalid_rate",
    "errored_api_rate",
    "expire_batch_rate",
    "expire_done_fraction",
    "missing_result_rate",
    "duplicate_result_rate",
    "bad_tool_input_rate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m invoice_batch_emulator",
        description="Local emulator of the Claude Message Batches API.",
    )
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 8765)")
    parser.add_argument("--api-key", help="the only key accepted (default: any non-empty key)")
    parser.add_argument("--state-dir", help="keep state in SQLite here, across restarts")
    parser.add_argument("--processing-seconds", type=float, help="time per batch (default 3)")
    parser.add_argument("--per-request-seconds", type=float, help="extra time per request")
    parser.add_argument("--cancel-seconds", type=float, help="length of the canceling window")
    parser.add_argument(
        "--time-scale", type=float, help="emulated seconds per real second for the 24 h expiry"
    )
    parser.add_argument("--seed", type=int, help="seed for ids, outcomes and faults")
    parser.add_argument("--tick-seconds", type=float, help="background worker period")
    parser.add_argument(
        "--http-fault",
        action="append",
        default=[],
        metavar="ENDPOINT:KIND[:k=v,...]",
        help="e.g. create:rate_limit:count=2,retry_after=3 or retrieve:drop:p=0.1 (repeatable)",
    )
    for name in _FAULT_RATES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, metavar="SHARE")
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> EmulatorConfig:
    config = EmulatorConfig.from_env(environ)
    direct: dict[str, Any] = {}
    for field in dataclasses.fields(EmulatorConfig):
        value = getattr(args, field.name, None)
        if field.name != "faults" and value is not None:
            direct[field.name] = value
    fault_values: dict[str, Any] = {
        name: getattr(args, name) for name in _FAULT_RATES if getattr(args, name) is not None
    }
    if args.http_fault:
        fault_values["http"] = config.faults.http + parse_http_faults(args.http_fault)
    if fault_values:
        direct["faults"] = FaultSettings.from_mapping(fault_values, config.faults)
    return dataclasses.replace(config, **direct)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run until SIGTERM/SIGINT. 0 on a clean stop, 2 on bad configuration."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args, dict(os.environ))
    except (ConfigError, ValueError) as exc:
        print(f"invalid emulator configuration: {exc}", file=sys.stderr)
        return 2
    try:
        serve(config)
    except OSError as exc:
        print(f"emulator could not start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
